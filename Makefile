# amp: `make demo` runs the main job on the embedded defaults; `make test` sets up and
# runs every test, starting the PostgreSQL and Redis the tests talk to; `make lint` runs
# ruff and mypy (its settings, and the files it checks, are in pyproject.toml).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint services bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m amp.demo

services:
	@scripts/start-services.sh

test: $(STAMP) services
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: $(STAMP) services
	$(BIN)/python bench/devserver_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
