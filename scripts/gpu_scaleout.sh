#!/usr/bin/env bash
# The GPU checks of docs/scaling.md, in one script (NOT RUN YET: no GPU where it was written).
#   scripts/gpu_scaleout.sh [OUT]        (from the repository root, after `make install` with
#                                         a CUDA build of torch; ZeRO-2 needs
#                                         pip install 'prefopt[deepspeed]')
# 1. DPO on 1 GPU (bf16), 2. PPO on 1 GPU (bf16), both on the world with the shipped recipes
# shortened; 3. a ZeRO-2 smoke run (fp32, every GPU, checkpoint every 10 steps) whose last
# checkpoint then resumes in ONE process. Writes OUT/figures.md (run.* keys, run times, gold
# reward, losses) to copy into docs/scaling.md with the date.
set -euo pipefail
OUT=${1:-${OUT:-runs/gpu-scaleout}}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PREFOPT_CACHE=${PREFOPT_CACHE:-$OUT/cache}
PY=.venv/bin/python
ACCELERATE=.venv/bin/accelerate
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
SHORT=(trainer.progress_bar=false eval.n_prompts=128 eval.samples_per_prompt=2)

timed() {  # timed NAME command...: run, keep its output, record the wall time
  local name=$1; shift
  local start=$SECONDS
  "$@" >"$OUT/$name.log" 2>&1 || { echo "$name failed; see $OUT/$name.log"; tail -20 "$OUT/$name.log"; exit 1; }
  echo "$name $((SECONDS - start))" >>"$OUT/times.txt"
  tail -2 "$OUT/$name.log"
}
: >"$OUT/times.txt"

# 1-2. one GPU
timed dpo-1gpu "$PY" -m prefopt.cli train dpo trainer.device=cuda trainer.precision=bf16 \
  trainer.max_steps=100 "${SHORT[@]}" output_dir="$OUT/dpo-1gpu"
timed ppo-1gpu "$PY" -m prefopt.cli train ppo trainer.device=cuda trainer.precision=bf16 \
  trainer.max_steps=20 "${SHORT[@]}" output_dir="$OUT/ppo-1gpu"

# 3. ZeRO-2 smoke, then its checkpoint in one process
if "$PY" -c "import deepspeed" 2>/dev/null; then
  timed dpo-zero2 "$ACCELERATE" launch --config_file prefopt/recipes/accelerate/zero2.yaml \
    --num_processes "$GPUS" -m prefopt.cli train dpo trainer.device=cuda trainer.precision=fp32 \
    trainer.max_steps=20 trainer.save_every=10 "${SHORT[@]}" output_dir="$OUT/dpo-zero2"
  rm -rf "$OUT/dpo-zero2-alone" && mkdir -p "$OUT/dpo-zero2-alone"
  cp -r "$OUT/dpo-zero2/checkpoint-10" "$OUT/dpo-zero2-alone/"
  timed dpo-zero2-alone "$PY" -m prefopt.cli train dpo trainer.device=cuda \
    trainer.precision=fp32 trainer.max_steps=20 "trainer.batch_size=$((8 * GPUS))" \
    "${SHORT[@]}" resume=auto output_dir="$OUT/dpo-zero2-alone"
else
  echo "ZeRO-2 skipped: deepspeed is not installed (pip install 'prefopt[deepspeed]')" \
    | tee "$OUT/zero2-skipped.txt"
fi

"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
times = dict(line.split() for line in (out / "times.txt").read_text().splitlines())
rows = ["| run | run.* | wall s | eval.gold_reward | losses (first, last) |", "|---|---|---|---|---|"]
for name, seconds in times.items():
    summary = json.loads((out / name / "summary.json").read_text())
    records = [json.loads(l) for l in (out / name / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    run = {k: v for k, v in summary["run"].items()}
    gold = summary.get("eval", {}).get("gold_reward")
    rows.append(f"| {name} | {run} | {seconds} | {gold} | {losses[0]:.4f}, {losses[-1]:.4f} |")
(out / "figures.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PYEOF
