# Two commands for a fresh machine (Python 3.11+, no GPU needed):
#   make model   -> .venv with the export extras, then model.onnx (512x512, 21 classes, verified)
#   make test    -> .venv with everything, then the test suite (what CI runs)
# While editing: make test-fast (under a minute: no full-size export, no server, no soak) and make lint.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=
# Test processes: the suite is mostly single-threaded Python (tf2onnx, tracing), so two workers
# on two cores take ~40% less wall time; WORKERS=0 runs it in this process (for pdb).
WORKERS ?= 2

# The edit loop: the export matrix and the slow fixtures left out, one export test per path kept.
FAST := (core or not exports) and not fullsize and not soak and not server and not slow

.PHONY: model test test-fast lint install-export install-test install-lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install-export: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[export,cpu]"

install-test: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[export,cpu,test]"

install-lint: $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[lint]"

model: install-export
	$(BIN)/export-unet --out model.onnx --report model.report.json

test: install-test
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: install-test
	$(BIN)/python -m pytest -m "$(FAST)" $(PYTEST_ARGS)

# Formatting, lint rules (pyproject.toml [tool.ruff]), the library packages' annotations (they ship
# py.typed), pyflakes over every Python file, and the results index matching its files.
lint: install-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy --cache-dir .mypy_cache runtime export
	$(BIN)/python -m pyflakes export runtime benchmarks tests
	$(BIN)/bench-unet lab index --check
	$(BIN)/python tests/doclinks.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache model.onnx model.report.json
