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
ONLINE_STEPS = 8  # step 1 is the warm-up, steps 2..8 are timed (8 x 8 PPO episodes: the 64 prompts)
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
    # eager attention in the updates: faster for PPO's padded rows (not for the packed rows of
    # DPO, RM, GRPO and RLOO, where it is slower and takes more memory; docs/benchmarks.md)
    "ppo": [
        "trainer.precision=bf16",
        "rollout.logps_from_generation=true",
        "model.train_attention=eager",
    ],
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

# what was measured on this machine and not taken into the "fastest" settings (one-off runs of
# the "fastest" jobs with one change; docs/benchmarks.md prints these)
NOT_TAKEN: list[str] = [
    "TRL 0.29 PPO with eager attention in its four models (its PPO takes the models it is "
    "given; TRL cannot switch attention for its updates only): 17.2 s against 16.9 s with "
    "SDPA over 4 timed steps, not faster",
    "prefopt `model.train_attention=eager` for DPO, RM and GRPO (packed rows of up to 512 "
    "tokens with a custom mask): DPO 5.66 s against 4.25 s, RM 3.45 s against 3.19 s, GRPO "
    "3.25 s against 3.19 s timed (GRPO: 4 timed steps), and 0.4-0.6 GB more memory for DPO and RM",
    "`torch.compile` of the policy's forward for generation (dynamic shapes, KV cache): 33 s "
    "to compile, then 0.73 s per rollout against 0.55 s uncompiled; transformers' static "
    "cache without compiling: 0.52-0.60 s against 0.55-0.57 s",
]
