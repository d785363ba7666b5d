# `make demo` and `make test` set up .venv on first use (torch 2.13.0 CPU first, then the package
# with its test and d4rl extras).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The second numerics pass (CI): the rounding-dependent tests under CPU code paths that no machine
# takes by default (ATen's scalar kernels, MKL's conditional-reproducibility mode), so that a bound
# tuned to one CPU's rounding fails here rather than on a machine of another kind.
NUMERICS_ENV ?= ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE

.PHONY: demo test test-numerics lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test,d4rl]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/flowarena demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4 --ignore=tests/slurm
	$(BIN)/python -m pytest -q tests/slurm

test-numerics: $(STAMP)
	env $(NUMERICS_ENV) $(BIN)/python -m pytest -q -n auto --maxprocesses=4 -m numerics --ignore=tests/slurm

clean:
	rm -rf $(VENV) results data/demo
