# `make demo` and `make test` are all a fresh machine needs: each creates .venv and installs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check bulksync tests bench
	$(BIN)/ruff format --check bulksync tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/python -m bulksync sync samples/customers.csv --dry-run --results samples/customers.csv.results.jsonl; \
	  echo "(exit code $$? : 1 means some rows are invalid, as the samples mean them to be)"
	$(BIN)/python -m bulksync sync samples/customers.jsonl --dry-run --results samples/customers.jsonl.results.jsonl; \
	  echo "(exit code $$?)"

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
