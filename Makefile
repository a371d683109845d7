# `make install` builds .venv with everything (torch pinned to the CPU build); `make serve` runs the
# node on config.toml; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
# OHIF's parsing code (dcmjs, Cornerstone3D adapters) that tests/integration/test_viewers.py runs
# under Node.js: exactly the versions of tests/viewers/package-lock.json.
VIEWERS := tests/viewers
VIEWER_MODULES := $(VIEWERS)/node_modules/.package-lock.json

.PHONY: install serve test system-deps viewer-modules clean

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
test: install system-deps viewer-modules
	$(BIN)/python -m pytest -q

# Debian tools the tests use: dciodvfy (dicom3tools), storescu/storescp/dsr2html/dcmp2pgm (dcmtk), Orthanc
# (orthanc), headless Chromium for the dashboard screenshot (chromium), pdftotext for the PDF report
# (poppler-utils), Node.js and npm for the viewer checks. Installs only the missing ones (as root or with
# sudo -n); without either it says what is missing.
system-deps:
	@.ci/system-deps

# The viewer checks' npm packages, when npm is there (without it those checks skip, or fail in CI).
viewer-modules:
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory $(VIEWER_MODULES); \
	else echo "viewer-modules: npm not found; the viewer checks skip (apt-get install nodejs npm)"; fi

$(VIEWER_MODULES): $(VIEWERS)/package-lock.json $(VIEWERS)/package.json
	cd $(VIEWERS) && npm ci --no-audit --no-fund --ignore-scripts

clean:
	rm -rf $(VENV) var build *.egg-info $(VIEWERS)/node_modules
