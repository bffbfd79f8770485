# `make demo` and `make test` each set up the virtual environment first if needed.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: setup demo test test-all lint format

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# The main job: train ResNet-20 on the bundled digits, then evaluate it.
demo: setup
	$(BIN)/resnets train --name demo-$$(date +%Y%m%d-%H%M%S)
	$(BIN)/resnets evaluate $$(ls -td runs/demo-* | head -n 1)

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -q

test-all: lint
	$(BIN)/pytest -q -m ''

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
