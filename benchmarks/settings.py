"""What each run uses: the shared settings, and each side's "fastest" options in ONE place.

`PREFOPT_FAST` is edited by whoever adds speed options to prefopt: recipe overrides, per
algorithm, added to the fp32 run's overrides for the "fastest" setting. `TRL_FAST` holds the TRL
config fields chosen as TRL's fastest on this machine (see docs/benchmarks.md for what was tried).
"""

from __future__ import annotations

import os

# benchmarks/gpu.sh overrides these through the environment (CUDA, bf16, larger batch and model)
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")

# pairs per step (offline) or completions per step (online)
BATCH = int(os.environ.get("BENCH_BATCH", "8"))
MAX_LENGTH = 256
LR = 1e-5
SEED = 0
OFFLINE_STEPS = 8  # 8 x 8 = the 64 pairs; step 1 is the warm-up, steps 2..8 are timed
ONLINE_STEPS = 5  # step 1 is the warm-up, steps 2..5 are timed (kept short: make bench < 20 min)
N_PAIRS = OFFLINE_STEPS * BATCH
MAX_PROMPT_LENGTH = 128
MAX_NEW_TOKENS = 48
GROUP = 4  # completions per prompt for GRPO and RLOO
DPO_BETA = 0.1
RM_CENTER = 0.01  # the centring term c (r_c + r_r)^2 on both sides (prefopt's rm recipe value)
TOLERANCE = 1e-4
SUM_RTOL = 1e-6  # per-sequence summed log-probs and rewards: TOLERANCE + SUM_RTOL x |value|

ALGORITHMS = ("dpo", "rm", "ppo", "grpo", "rloo")
SETTINGS = ("fp32", "fastest")

PREFOPT_FAST: dict[str, list[str]] = {
    "dpo": ["trainer.precision=bf16"],
    "rm": ["trainer.precision=bf16"],
    "ppo": ["trainer.precision=bf16", "rollout.logps_from_generation=true"],
    "grpo": ["trainer.precision=bf16", "rollout.logps_from_generation=true"],
    "rloo": ["trainer.precision=bf16", "rollout.logps_from_generation=true"],
}

TRL_FAST: dict[str, dict[str, object]] = {
    "dpo": {"bf16": True, "precompute_ref_log_probs": True},
    "rm": {"bf16": True},
    "ppo": {"bf16": True},
    "grpo": {"bf16": True},
    "rloo": {"bf16": True},
}
