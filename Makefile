# Two commands for a fresh machine (Python 3.11+, no GPU needed):
#   make model   -> .venv with the export extras, then model.onnx (512x512, 21 classes, verified)
#   make test    -> .venv with everything, then the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: model test install-export install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install-export: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[export,cpu]"

install-test: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[export,cpu,test]"

model: install-export
	$(BIN)/export-unet --out model.onnx --report model.report.json

test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache model.onnx model.report.json
