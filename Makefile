# prefopt: make train RECIPE=dpo | make test
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= dpo
ARGS ?=
ABLATION ?=
SIZE ?= tiny
STAMP := $(VENV)/.installed

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
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/prefopt train $(RECIPE) $(ARGS)

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
	@test -n "$(ABLATION)" || { echo "usage: make ablate ABLATION=<name> SIZE=tiny|full (ablations: $$(ls prefopt/recipes/ablations | sed 's/.yaml//' | tr '\n' ' '))"; exit 2; }
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(VENV)/bin/prefopt ablate $(ABLATION) SIZE=$(SIZE) $(ARGS)

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
