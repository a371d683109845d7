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

.PHONY: install serve test system-deps clean

install: $(BIN)/miemss-node

$(BIN)/miemss-node: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls a CUDA build of several GB.
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

serve: install
	$(BIN)/miemss-node serve --config config.toml

test: install $(VIEWER_MODULES)
	$(BIN)/python -m pytest -q

$(VIEWER_MODULES): $(VIEWERS)/package-lock.json $(VIEWERS)/package.json
	cd $(VIEWERS) && npm ci --no-audit --no-fund --ignore-scripts

# Debian tools the tests use: dciodvfy (dicom3tools), storescu/storescp/dsr2html/dcmp2pgm (dcmtk), Orthanc
# (orthanc), headless Chromium for the dashboard screenshot (chromium), pdftotext for the PDF report
# (poppler-utils), and Node.js with npm for the viewer checks (Debian's, unless a Node.js is installed).
system-deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk dicom3tools orthanc chromium poppler-utils
	command -v node >/dev/null && command -v npm >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm

clean:
	rm -rf $(VENV) var build *.egg-info $(VIEWERS)/node_modules
