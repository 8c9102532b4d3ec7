#!/usr/bin/env bash
# The same comparison on CUDA: bf16, batch 32, a ~0.5B GPT-2-style model built from config
# (24 layers, hidden 1280, 20 heads: about 0.5B parameters with the 8,192-token vocabulary).
# UNTESTED: written on a CPU-only machine; run it on a CUDA machine whenever one is available.
# The CPU suite (`make bench`) stays the one CI runs.
#
#   benchmarks/gpu.sh            # from the project root, after `make install` with a CUDA torch
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: no CUDA device')"
$PY -m pip install --quiet -c constraints.txt -e '.[bench]'
test -d .bench/trl029/trl || $PY -m pip install --quiet --no-deps --target .bench/trl029 'trl==0.29.1'
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 BENCH_DEVICE=cuda
# settings for the GPU run: read by benchmarks/settings.py through these variables
export BENCH_BATCH=${BENCH_BATCH:-32} BENCH_LAYERS=${BENCH_LAYERS:-24} \
       BENCH_HIDDEN=${BENCH_HIDDEN:-1280} BENCH_HEADS=${BENCH_HEADS:-20}
export BENCH_RESULTS=benchmarks/results_gpu.json BENCH_DOC=docs/benchmarks_gpu.md
# the vLLM engine rows (PPO, GRPO, RLOO with rollout.engine.name=vllm; TRL's GRPO and RLOO with
# use_vllm=True, vllm_mode="colocate", each side's engine at gpu_memory_utilization 0.3) need
# vLLM's CUDA build, installed by hand (docs/engines.md, "GPUs"): `pip install vllm`, with
# --no-deps after `pip install -c constraints.txt -e '.[vllm]'` if its transformers range
# excludes the lock's. Without it, only the hf engine's rows run.
SETTINGS=fastest
if $PY -c "import vllm" 2>/dev/null; then
  SETTINGS=fastest,vllm
else
  echo "gpu.sh: vLLM is not installed: the vllm engine rows are left out (docs/engines.md)" >&2
fi
$PY -m benchmarks.run --settings "$SETTINGS" "$@"
