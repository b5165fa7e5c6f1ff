# `make train` and `make test` set up .venv (pip + venv) on first use.
SHELL := /bin/bash
VENV ?= .venv
PY ?= $(VENV)/bin/python
STAMP := $(VENV)/.imgcls-installed
# set up .venv only when PY is its python (`make gpu-check PY=python3` uses an existing install)
NEEDS_VENV := $(if $(filter $(VENV)/bin/python,$(PY)),$(STAMP))
ARGS ?=
# gpu-check: which tests (a pytest -m expression), and where the figures are also written
GPU_TESTS ?= gpu
GPU_REPORT ?= logs/gpu-check.md
WHEELS ?= .whl

.PHONY: help install train test test-fast format lint clean-logs gpu-check gpu-wheels

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
	$(PY) -m pytest -n auto --maxprocesses 4 --dist worksteal $(ARGS)

test-fast: $(STAMP)  ## the suite without tests marked slow
	$(PY) -m pytest -n auto --maxprocesses 4 --dist worksteal -m "not slow" $(ARGS)

format: $(STAMP)  ## format and auto-fix with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

lint: $(STAMP)  ## every pre-commit hook (ruff lint + format, whitespace, yaml, large files)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/pre-commit run --all-files

gpu-check: $(NEEDS_VENV)  ## on a GPU: the gpu tests, then time to accuracy, parity, throughput (figures also in logs/gpu-check.md)
	@$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: no CUDA GPU here')"
	@mkdir -p $(dir $(GPU_REPORT)) && : > $(GPU_REPORT)
	set -o pipefail; export PYTHONPATH="$(CURDIR)/src$${PYTHONPATH:+:$$PYTHONPATH}" PYTHONUNBUFFERED=1; \
	$(PY) -m pytest -p no:xdist -p no:cacheprovider -q -m "$(GPU_TESTS)" -rs $(ARGS) 2>&1 | tee -a $(GPU_REPORT) && \
	$(PY) benchmarks/time_to_accuracy.py --device cuda --experiments mnist_speedrun_gpu \
		--eval-every-steps 10 --targets 0.99 -o trainer.max_epochs=1 | tee -a $(GPU_REPORT) && \
	$(PY) benchmarks/time_to_accuracy.py --device cuda --experiments mnist_speedrun_gpu \
		--eval-every-steps 20 | tee -a $(GPU_REPORT) && \
	$(PY) benchmarks/parity.py --device cuda --precision bf16-mixed --channels-last | tee -a $(GPU_REPORT) && \
	$(PY) benchmarks/parity.py --device cuda --precision bf16-mixed --channels-last --models tinynet \
		--compile reduce-overhead | tee -a $(GPU_REPORT) && \
	$(PY) benchmarks/throughput.py --devices cuda --models tinynet convnet --batch-sizes 128 512 \
		--data-paths in-memory --channels-last on --dropout 0 --no-data-table | tee -a $(GPU_REPORT)
	@echo "gpu-check: figures in $(GPU_REPORT)"

gpu-wheels: $(NEEDS_VENV)  ## wheels of what a GPU machine with torch + Lightning may lack (hydra-core, omegaconf, antlr4) into .whl/
	$(PY) -m pip wheel -q --no-deps -w $(WHEELS) \
		$$($(PY) -m pip freeze | grep -iE '^(hydra-core|omegaconf|antlr4-python3-runtime)==')

clean-logs:  ## delete every run under logs/
	rm -rf logs/
