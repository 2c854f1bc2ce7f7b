# `make demo` and `make test` are all a fresh machine needs: each creates .venv and installs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One stamp per set of extras, each redone when pyproject.toml changes: `make demo` installs
# only what running needs; `make test` adds the test tools, `make bench` and `make soak` the
# benchmarks' clients too. So `make demo` then `make test` installs the test extras.
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test lint typecheck bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

lint: $(TEST_STAMP)
	$(BIN)/ruff check bulksync tests bench scripts
	$(BIN)/ruff format --check bulksync tests bench scripts

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

demo: $(RUN_STAMP)
	$(BIN)/python scripts/demo.py

bench: $(BENCH_STAMP)
	$(BIN)/python bench/run.py --out docs/benchmarks.md

# Minutes, not part of `make test`: faults, 429 storms, a changing limit, kill -9 and resume.
soak: $(BENCH_STAMP)
	$(BIN)/python bench/soak.py --out docs/reliability.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
