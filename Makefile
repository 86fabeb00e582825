# alarmsieve: `make demo` runs the embedded demo, `make test` the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED := $(abspath ../shared)
# Tests and the demo find the detector here when ../shared is beside the project.
export ALARMSIEVE_MODEL_DIR ?= $(if $(wildcard $(SHARED)/models/yolox_nano.onnx),$(SHARED)/models,)
export ALARMSIEVE_SHARED ?= $(if $(wildcard $(SHARED)),$(SHARED),)

.PHONY: venv demo test lint format bench clean

$(BIN)/alarmsieve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/alarmsieve

demo: venv
	rm -rf .alarmsieve-demo
	ALARMSIEVE_HOME=.alarmsieve-demo $(BIN)/alarmsieve demo --report report.html

test: venv
	$(BIN)/ruff check alarmsieve tests benchmarks
	$(BIN)/ruff format --check alarmsieve tests benchmarks
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check alarmsieve tests benchmarks

format: venv
	$(BIN)/ruff format alarmsieve tests benchmarks
	$(BIN)/ruff check --fix alarmsieve tests benchmarks

bench: venv
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .alarmsieve .alarmsieve-demo report.html .pytest_cache
