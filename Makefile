# Set-up and the two everyday commands. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml constraints/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints/dev.txt -e ".[cpu,torch,peers,predict,search,ray,demo,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/graphopt demo

lint: $(STAMP)
	$(BIN)/ruff check graphopt tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/optimize_vs_peers.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
