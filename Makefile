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

test: install
	$(BIN)/python -m pytest -q

# Debian tools the tests use: dciodvfy (dicom3tools), storescu/storescp/dsr2html (dcmtk), Orthanc (orthanc),
# headless Chromium for the dashboard screenshot (chromium), pdftotext for the PDF report (poppler-utils).
system-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk dicom3tools orthanc chromium poppler-utils

clean:
	rm -rf $(VENV) var build *.egg-info
