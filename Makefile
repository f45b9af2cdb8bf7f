# Two commands for a fresh machine: `make run` (the demo) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/remit serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

COVERAGE_FLOOR := 90
DOMAIN_COVERAGE_FLOOR := 97

test: $(STAMP) lint
	$(BIN)/pytest -q --cov --cov-report= --cov-fail-under=$(COVERAGE_FLOOR) $(PYTEST_ARGS)
	$(BIN)/coverage report --include='*/remit/domain/*' --fail-under=$(DOMAIN_COVERAGE_FLOOR)

bench: $(STAMP)
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
