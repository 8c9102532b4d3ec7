# prefopt: make train RECIPE=dpo | make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= dpo
ARGS ?=
ABLATION ?=
STAMP := $(VENV)/.installed
# LAUNCH=ddp | fsdp | zero2 | zero3 (recipes/accelerate/<LAUNCH>.yaml) trains through
# `accelerate launch` with NPROC processes, on the recipe's trainer.device (GPUs when there are
# any, else CPU with gloo). Without LAUNCH: one process.
LAUNCH ?=
NPROC ?= 2
ACCELERATE_DIR := prefopt/recipes/accelerate
LAUNCH_CONFIG := $(ACCELERATE_DIR)/$(LAUNCH).yaml

.PHONY: install train test test-slow lint typecheck bench ablate clean

# torch is pinned to the CPU build that installs quickly; an unpinned torch would pull the
# CUDA packages. On a GPU machine install the torch build you need first, then `make install`.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
ifeq ($(LAUNCH),)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/prefopt train $(RECIPE) $(ARGS)
else
	@test -f $(LAUNCH_CONFIG) || { echo "LAUNCH=$(LAUNCH): no $(LAUNCH_CONFIG); choose ddp, fsdp, zero2 or zero3 (files in $(ACCELERATE_DIR))"; exit 2; }
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/accelerate launch \
		--config_file $(LAUNCH_CONFIG) --num_processes $(NPROC) \
		-m prefopt.cli train $(RECIPE) $(ARGS)
endif

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -n 2 --durations=10

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m slow --durations=10

lint: $(STAMP)
	$(VENV)/bin/ruff check prefopt tests examples
	$(VENV)/bin/ruff format --check prefopt tests examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy prefopt

bench: $(STAMP)
	@echo "benchmarks against TRL arrive with the performance issue (see shared ROADMAP)"; exit 1

ablate: $(STAMP)
	@echo "the ablation runner arrives with the evaluation-suite issue (see shared ROADMAP)"; exit 1

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
