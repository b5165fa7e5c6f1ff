# `make train` and `make test` set up .venv (pip + venv) on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.imgcls-installed
ARGS ?=

.PHONY: help install train test test-fast format lint clean-logs

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install imgcls with every extra (.[all]: dev, sweep, timm)

train: $(STAMP)  ## train with the default config (MNIST + tinynet); extra overrides in ARGS="..."
	$(PY) train.py $(ARGS)

test: $(STAMP)  ## run the whole test suite (in parallel: one worker per core, at most 4)
	$(PY) -m pytest -n auto --maxprocesses 4 $(ARGS)

test-fast: $(STAMP)  ## the suite without tests marked slow
	$(PY) -m pytest -n auto --maxprocesses 4 -m "not slow" $(ARGS)

format: $(STAMP)  ## format and auto-fix with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

lint: $(STAMP)  ## every pre-commit hook (ruff lint + format, whitespace, yaml, large files)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/pre-commit run --all-files

clean-logs:  ## delete every run under logs/
	rm -rf logs/
