# Cellar: `make run` sets up and starts the app on the default model; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cellar-installed

.PHONY: setup run test native models clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

native: setup
	$(BIN)/python -m native.build

models: setup
	$(BIN)/cellar pull smollm2
	$(BIN)/cellar pull gemma3

run: setup
	$(BIN)/cellar pull default >/dev/null
	$(BIN)/cellar

test: setup models
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info native/*.so

# Self-contained Linux bundle in dist/cellar/ (PyInstaller, installed into the venv as a build tool);
# see packaging/README.md. Not part of `make test`: tests/test_bundle.py tests it once built.
.PHONY: bundle
bundle: native
	$(BIN)/python packaging/build.py
