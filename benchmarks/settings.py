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
# step 1 is the warm-up, steps 2..8 are timed (8 x 8 PPO episodes: the 64 prompts); a smoke run
# of the harness may shorten it (BENCH_ONLINE_STEPS, at least 2), never a reported one
ONLINE_STEPS = max(2, int(os.environ.get("BENCH_ONLINE_STEPS", "8")))
N_PAIRS = OFFLINE_STEPS * BATCH
MAX_PROMPT_LENGTH = 128
MAX_NEW_TOKENS = 48
GROUP = 4  # completions per prompt for GRPO and RLOO
DPO_BETA = 0.1
RM_CENTER = 0.01  # the centring term c (r_c + r_r)^2 on both sides (prefopt's rm recipe value)
TOLERANCE = 1e-4
SUM_RTOL = 1e-6  # per-sequence summed log-probs and rewards: TOLERANCE + SUM_RTOL x |value|

ALGORITHMS = ("dpo", "rm", "ppo", "grpo", "rloo")
ONLINE = ("ppo", "grpo", "rloo")
SETTINGS = ("fp32", "fastest", "vllm")
#: settings of the rollout engine: run by the online algorithms only
ENGINE_SETTINGS = ("vllm",)


def settings_for(algo: str) -> tuple[str, ...]:
    """The settings ``algo`` runs in: the engine settings only online."""
    return tuple(s for s in SETTINGS if algo in ONLINE or s not in ENGINE_SETTINGS)


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

# "vllm": rollouts sampled by a vLLM engine colocated in the training process, on each side its
# own (prefopt's rollout.engine.name=vllm; TRL's use_vllm=True, vllm_mode="colocate"), on top
# of that side's fastest setting. The KV cache on vLLM's CPU backend: prefopt's
# rollout.engine.cpu_memory_utilization, a share of host memory, set to VLLM_KV_MB (a rollout
# here is 8 sequences of at most 128 + 48 tokens, about 35 MB of keys and values for this
# model; 256 MB holds about 7,500 tokens); TRL passes vLLM no KV-cache size of its own, so its
# process gets vLLM's CPU setting VLLM_CPU_KVCACHE_SPACE, which takes whole GiB: 1, the least.
# On GPUs both sides use their gpu_memory_utilization default (0.3).
VLLM_KV_MB = 256
TRL_VLLM_KV_GIB = 1
# TRL's run with its colocated vLLM is stopped (and reported as not run) after this long
ENGINE_TIMEOUT_S = 1200.0


def _host_share(mb: float) -> float:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min(1.0, mb * 2**20 / total)


PREFOPT_VLLM: dict[str, list[str]] = {
    algo: [
        *PREFOPT_FAST[algo],
        "rollout.engine.name=vllm",
        f"rollout.engine.cpu_memory_utilization={_host_share(VLLM_KV_MB):.6f}",
    ]
    for algo in ONLINE
}

TRL_FAST: dict[str, dict[str, object]] = {
    "dpo": {"bf16": True, "precompute_ref_log_probs": True},
    "rm": {"bf16": True},
    "ppo": {"bf16": True},
    "grpo": {"bf16": True},
    "rloo": {"bf16": True},
}

TRL_VLLM: dict[str, dict[str, object]] = {
    algo: {**TRL_FAST[algo], "use_vllm": True, "vllm_mode": "colocate"} for algo in ("grpo", "rloo")
}
#: online algorithms whose TRL trainer has no vLLM mode: the reason, printed in the vllm row
TRL_NO_VLLM: dict[str, str] = {
    "ppo": "TRL 0.29.1's PPOTrainer (the last TRL with PPO) has no vLLM mode: it samples with "
    "transformers' generate, so its fp32 and fastest rows are its only settings",
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
    "vLLM's compiled model on its CPU backend (`rollout.engine.enforce_eager=false`): 0.52-0.65 s "
    "per GRPO rollout against 0.49-0.60 s eager (fp32), and 20-35 s more to start",
    "PPO's rollouts packed without padding (several sequences per row under a block mask, as "
    "GRPO's groups; the same losses to 1e-5): 16.3 s against 16.1 s padded over 7 timed steps "
    "(rows of at most 352 tokens; 16.3 s at 176): a completion keeps its 48 columns, so only "
    "prompt padding goes, and the longer rows' attention costs what it saves",
    "sampling the next rollout in a second thread during the update (one step off-policy, as "
    "asynchronous trainers do): 1.29-1.31 s a step against 1.28-1.30 s one after the other; "
    "both halves are compute bound on 2 cores",
]
