# `make install` builds .venv with everything (torch pinned to the CPU build); `make serve` runs the
# node on config.toml; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0

.PHONY: install serve test system-deps clean

install: $(BIN)/miemss-node

$(BIN)/miemss-node: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls a CUDA build of several GB.
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

serve: install
	$(BIN)/miemss-node serve --config config.toml

# One command on a fresh clone: the venv, the Debian tools that are missing (when it may install
# them), then the tests. A test whose tool is still missing skips, or fails when CI=true.
test: install system-deps
	$(BIN)/python -m pytest -q

# Debian tools the tests use: dciodvfy (dicom3tools), storescu/storescp/dsr2html (dcmtk), Orthanc (orthanc),
# headless Chromium for the dashboard screenshot (chromium), pdftotext for the PDF report (poppler-utils).
# Installs only the missing ones (as root or with sudo -n); without either it says what is missing.
system-deps:
	@.ci/system-deps

clean:
	rm -rf $(VENV) var build *.egg-info
