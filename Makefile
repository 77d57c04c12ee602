# Two commands on a fresh machine: `make run` (set up + run the embedded default) and
# `make test` (set up + run the tests). Both create .venv if missing and install the project.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: install run test clean-data

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a CPU wheel of this exact version is what every later step reuses.
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/kedro run

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

clean-data:
	rm -rf data/01_raw/* data/02_intermediate/* data/06_models/* reports/*.json
