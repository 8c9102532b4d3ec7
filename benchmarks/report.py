"""results.json entries and docs/benchmarks.md from the measured figures."""

from __future__ import annotations

import datetime
import platform
import subprocess
from typing import Any

from benchmarks import settings as S
from benchmarks.assets import ModelShape
from benchmarks.measure import FLOPS_PER_TOKEN

UNITS = {"dpo": "pairs", "rm": "pairs", "ppo": "episodes", "grpo": "episodes", "rloo": "episodes"}
AGAINST = {
    "dpo": "TRL 1.16 DPOTrainer",
    "rm": "TRL 1.16 RewardTrainer",
    "ppo": "TRL 0.29.1 trl.experimental.ppo.PPOTrainer",
    "grpo": "TRL 1.16 GRPOTrainer",
    "rloo": "TRL 1.16 RLOOTrainer",
}
NOTES = {
    "dpo": "sigmoid loss, beta 0.1, reference = a differently seeded GPT-2 folder",
    "rm": "Bradley-Terry with centring 0.01 on both sides, one GPT2ForSequenceClassification "
    "folder",
    "ppo": "8 prompts x 1 completion per step, 1 PPO epoch, 1 minibatch of 8, KL 0.05 (k1), "
    "separate reward model and critic (both from the RM folder); both stop at EOS",
    "grpo": "2 prompts x 4 completions per step, beta 0 (no reference), Python reward "
    "(distinct words / 10); neither side keeps or runs a reference",
    "rloo": "2 prompts x 4 completions per step, beta 0, Python reward (distinct words / 10)",
}


NOT_COMPARABLE = """\
- PPO runs against TRL 0.29.1 (the last release with a PPOTrainer), installed by `make bench`
  with `--no-deps` into `.bench/trl029` and put first on `PYTHONPATH` of that one process only:
  it imports and trains with the venv's transformers 5 and torch, so no second transformers is
  needed. TRL 1.16 stays the one in the venv.
- Online losses are each library's own: prefopt's PPO/GRPO/RLOO recipes (its token aggregation,
  advantage whitening, GRPO's group std) against TRL's defaults for GRPOTrainer/RLOOTrainer
  (their `loss_type` and `scale_rewards` defaults); the comparison is of speed at the same
  rollout shape (prompts, group, new tokens, one pass over each rollout), not of identical
  updates. No first-batch agreement check is made online: sampling differs between the two
  codebases even with the same seed.
- Completions end at EOS on both sides (prefopt has no option to force a length; TRL 0.29 PPO is
  given `stop_token="eos"`, GRPO/RLOO stop at EOS by default); with a random-init model of
  8,192 tokens EOS is rare, so nearly every completion has 48 new tokens. The episodes and
  tokens each side really generated are counted and reported (`timed_tokens`).
- At `regulariser.coef=0` (GRPO/RLOO here) prefopt keeps and runs no reference, as TRL at
  `beta=0`; prefopt then logs no `objective/kl`.
- Data order online: TRL 0.29 PPO shuffles its prompts itself (its dataloader has
  `shuffle=True`), so its 8 prompts per step are other prompts of the same 64 than prefopt's.
"""


#: what TRL runs in an engine setting, where it has the mode
AGAINST_ENGINE = {
    "vllm": {
        "grpo": 'TRL 1.16 GRPOTrainer, use_vllm=True, vllm_mode="colocate"',
        "rloo": 'TRL 1.16 RLOOTrainer, use_vllm=True, vllm_mode="colocate"',
    }
}


def entry(
    algo: str,
    ours: dict[str, float],
    theirs: dict[str, float] | None,
    setting: str = "",
    trl_missing: str | None = None,
) -> dict[str, Any]:
    """One row of results.json. ``theirs`` None: TRL did not run in this setting
    (``trl_missing`` says why); its figures and the ratio are None."""

    def trl(key: str) -> float | None:
        return theirs[key] if theirs is not None else None

    per_s = trl("per_s")
    out = {
        "unit": UNITS[algo],
        "against": AGAINST_ENGINE.get(setting, {}).get(algo, AGAINST[algo]),
        "prefopt_per_s": ours["per_s"],
        "trl_per_s": per_s,
        "ratio": None if per_s is None else ours["per_s"] / per_s if per_s else float("nan"),
        "prefopt_tokens_per_s": ours["tokens_per_s"],
        "trl_tokens_per_s": trl("tokens_per_s"),
        "prefopt_gflops": ours["gflops"],
        "trl_gflops": trl("gflops"),
        "prefopt_peak_mb": ours["peak_mb"],
        "trl_peak_mb": trl("peak_mb"),
        "timed_items": {"prefopt": ours["items"], "trl": trl("items")},
        "timed_tokens": {"prefopt": ours["tokens"], "trl": trl("tokens")},
    }
    if theirs is None:
        out["trl_missing"] = trl_missing or "not run"
    return out


def _f(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def line(algo: str, setting: str, e: dict[str, Any]) -> str:
    trl = (
        f"TRL {e['trl_per_s']:.2f} {e['unit']}/s, ratio {e['ratio']:.2f}"
        if e.get("trl_per_s") is not None
        else "TRL not run"
    )
    return (
        f"{algo} {setting}: prefopt {e['prefopt_per_s']:.2f} {e['unit']}/s, {trl}; peak "
        f"{e['prefopt_peak_mb']:.0f} / {_f(e.get('trl_peak_mb'), '.0f')} MB"
    )


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for row in out.splitlines():
            if row.startswith("Model name:"):
                return row.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def kept_results(stored: dict[str, Any], cpu: str) -> tuple[dict[str, Any], str]:
    """What a partial rerun keeps of the stored results: every entry when they were measured on
    this CPU, nothing otherwise (then the second value says why: rates of two machines would
    share a table and its ratios)."""
    entries = {k: v for k, v in stored.items() if k != "machine"}
    measured_on = (stored.get("machine") or {}).get("cpu")
    if measured_on == cpu:
        return entries, ""
    return {}, (
        f"the stored results were measured on {measured_on!r}, this machine is {cpu!r}: they are "
        "left out (run the whole `make bench` for a complete table)"
    )


def machine(peak: dict[str, float], assets: dict[str, Any], seconds: float) -> dict[str, Any]:
    import os

    import torch
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = "not installed"
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": int(os.environ.get("OMP_NUM_THREADS", "2")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl_version,
        "trl_ppo": "0.29.1 (.bench/trl029)",
        "matmul_peak_gflops": peak,
        "data": assets["source"],
        "total_s": seconds,
    }


#: The speed-ups issue 13 asks for, best setting against best setting.
TARGETS = {"dpo": 3.0, "rm": 2.0, "ppo": 3.0, "grpo": 2.0}


def best(by_setting: dict[str, Any]) -> dict[str, Any]:
    """Each side's fastest measured setting against the other's (a side's "fastest" setting can
    measure slower than its fp32 one), with the issue's target where there is one."""
    settings = [s for s in by_setting if s != "best"]
    ours = max(settings, key=lambda s: by_setting[s]["prefopt_per_s"])
    ran = [s for s in settings if by_setting[s].get("trl_per_s") is not None]
    theirs = max(ran, key=lambda s: by_setting[s]["trl_per_s"])
    a, b = by_setting[ours], by_setting[theirs]
    return {
        "prefopt_setting": ours,
        "trl_setting": theirs,
        "prefopt_per_s": a["prefopt_per_s"],
        "trl_per_s": b["trl_per_s"],
        "ratio": a["prefopt_per_s"] / b["trl_per_s"] if b["trl_per_s"] else float("nan"),
        "prefopt_peak_mb": a["prefopt_peak_mb"],
        "trl_peak_mb": b["trl_peak_mb"],
    }


#: issue 22's targets for the online algorithms with prefopt's vLLM engine, against TRL's best
ENGINE_TARGETS = {"ppo": 3.0, "grpo": 3.0, "rloo": 3.0}


def engine_section(results: dict[str, Any]) -> str:
    """The "vllm" rows side by side: prefopt with the vLLM engine, prefopt's hf engine at its
    fastest, TRL with its own colocated vLLM (or why not), TRL's best setting, and issue 22's
    target (the vLLM engine's speed at least that many times TRL's best, peak memory no more).
    Empty when no result has the setting."""
    rows, missing = [], []
    for algo, by_setting in results.items():
        e, hf = by_setting.get("vllm"), by_setting.get("fastest")
        settings = {k: v for k, v in by_setting.items() if k != "best"}
        if e is None or hf is None:
            continue
        top = by_setting.get("best") or best(settings)  # gpu.sh runs no fp32 rows: no "best"
        trl_best, trl_peak = top["trl_per_s"], top["trl_peak_mb"]
        ratio = e["prefopt_per_s"] / trl_best if trl_best else float("nan")
        target = ENGINE_TARGETS.get(algo)
        reached = target is not None and ratio >= target and e["prefopt_peak_mb"] <= trl_peak
        met = "-" if target is None else "met" if reached else "not met"
        if e.get("trl_missing"):
            missing.append(f"- {algo}: {e['trl_missing']}")
        rows.append(
            f"| {algo} | {e['prefopt_per_s']:.2f} | {hf['prefopt_per_s']:.2f} | "
            f"{_f(e.get('trl_per_s'), '.2f')} | {trl_best:.2f} ({top['trl_setting']}) | "
            f"{ratio:.2f} | {'-' if target is None else f'{target:g}x'} | "
            f"{e['prefopt_peak_mb']:.0f} / {_f(e.get('trl_peak_mb'), '.0f')} / {trl_peak:.0f} | "
            f"{met} |"
        )
    if not rows:
        return ""
    why = "\n".join(missing) if missing else "- TRL's colocated vLLM ran for every algorithm."
    return f"""## The vLLM engine (issue 22)

The `vllm` setting: each side's fastest setting with rollouts sampled by a vLLM engine in the
training process (prefopt: `rollout.engine.name=vllm`; TRL: `use_vllm=True,
vllm_mode="colocate"`); on vLLM's CPU backend prefopt's KV cache is {S.VLLM_KV_MB} MB, TRL's
{S.TRL_VLLM_KV_GIB} GiB (`VLLM_CPU_KVCACHE_SPACE`, whole GiB; TRL passes no size of its own),
on GPUs both take `gpu_memory_utilization` 0.3. Each engine's start falls in step 1, outside the
timed window. Issue 22's target: prefopt with the engine at least the target times TRL's best
setting, with no more peak memory. Where TRL has no vLLM mode or its engine did not run, the
row compares with TRL's best setting and the reason is listed below (docs/engines.md, "Speed").

| algorithm | prefopt vLLM /s | prefopt hf (fastest) /s | TRL vLLM /s | TRL best /s (setting) \
| ratio vLLM / TRL best | target | peak MB (prefopt vLLM / TRL vLLM / TRL best) | target met |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Where TRL did not run with vLLM:
{why}

"""


def gpt2_parameters(shape: ModelShape) -> int:
    """GPT-2's parameter count (tied output layer): token and position embeddings, per layer
    the attention (qkv, projection) and MLP weights and biases and two layer norms, the final
    layer norm."""
    h = shape.hidden
    return (shape.vocab + shape.positions) * h + shape.layers * (12 * h * h + 13 * h) + 2 * h


def best_table(best_rows: list[str]) -> str:
    """The best-against-best table, or why there is none (a run of some settings only)."""
    if not best_rows:
        return (
            "Not computed: this run left out some of the fp32 and fastest settings "
            "(`--settings`),\nso no algorithm has every setting to pick each side's best from."
        )
    return f"""Each side's fastest measured setting (TRL's bf16 was sometimes slower than its fp32
here), the ratio, issue 13's target (speed at least that ratio, peak memory no more than TRL's),
and whether this run met it.

| algorithm | prefopt /s (setting) | TRL /s (setting) | ratio | target | peak MB (prefopt / TRL) \
| target met |
|---|---|---|---|---|---|---|
{chr(10).join(best_rows)}"""


def markdown(meta: dict[str, Any], results: dict[str, Any]) -> str:
    shape = ModelShape()  # BENCH_LAYERS, BENCH_HIDDEN, BENCH_HEADS of this run
    rows, best_rows = [], []
    for algo, by_setting in results.items():
        if "best" in by_setting:
            e = by_setting["best"]
            target = TARGETS.get(algo)
            verdict = (
                "no target"
                if target is None
                else ("met" if e["ratio"] >= target and e["prefopt_peak_mb"] <= e["trl_peak_mb"]
                      else "not met")
            )  # fmt: skip
            best_rows.append(
                f"| {algo} | {e['prefopt_per_s']:.2f} ({e['prefopt_setting']}) | "
                f"{e['trl_per_s']:.2f} ({e['trl_setting']}) | {e['ratio']:.2f} | "
                f"{'-' if target is None else f'{target:g}x'} | "
                f"{e['prefopt_peak_mb']:.0f} / {e['trl_peak_mb']:.0f} | {verdict} |"
            )
        for setting, e in by_setting.items():
            if setting == "best":
                continue
            rows.append(
                f"| {algo} | {setting} | {e['prefopt_per_s']:.2f} | "
                f"{_f(e.get('trl_per_s'), '.2f')} | {_f(e.get('ratio'), '.2f')} | "
                f"{e['prefopt_tokens_per_s']:.0f} / {_f(e.get('trl_tokens_per_s'), '.0f')} | "
                f"{e['prefopt_gflops']:.1f} / {_f(e.get('trl_gflops'), '.1f')} | "
                f"{e['prefopt_peak_mb']:.0f} / {_f(e.get('trl_peak_mb'), '.0f')} |"
            )
    checks = [
        f"| {algo} | {e['fp32']['agreement']['prefopt_loss']:.6f} | "
        f"{e['fp32']['agreement']['trl_loss']:.6f} | {e['fp32']['agreement']['max_abs_diff']:.2e} |"
        for algo, e in results.items()
        if "agreement" in e.get("fp32", {})
    ]
    engine = engine_section(results)
    peak = meta["matmul_peak_gflops"]
    fast_prefopt = "\n".join(f"  - {a}: `{' '.join(v)}`" for a, v in S.PREFOPT_FAST.items())
    fast_trl = "\n".join(f"  - {a}: `{v}`" for a, v in S.TRL_FAST.items())
    return f"""# Benchmarks: prefopt against TRL

Written by `make bench` (`python -m benchmarks.run`) on {meta["date"]}; do not edit by hand.

## Machine

- CPU: {meta["cpu"]}, {meta["cores"]} cores, {meta["threads"]} threads per run
  (`OMP_NUM_THREADS`); shared with other jobs, so absolute speeds are noisy and the ratios,
  measured in the same invocation, are the figures to read.
- Python {meta["python"]}, torch {meta["torch"]}, transformers {meta["transformers"]},
  TRL {meta["trl"]} (PPO: TRL {meta["trl_ppo"]}).
- `torch.matmul` peak measured in this run (2048 x 2048): fp32 {peak["fp32"]:.0f} GFLOP/s,
  bf16 {peak["bf16"]:.0f} GFLOP/s.
- Whole run: {meta["total_s"] / 60:.1f} minutes.

## Set-up

- Model: GPT-2, {shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads, vocabulary
  {shape.vocab:,} from a byte-level BPE tokenizer trained on the data by the benchmark, random
  init ({gpt2_parameters(shape) / 1e6:.1f}M parameters); the DPO
  reference is the same architecture with another seed (so the first-batch loss is not log 2);
  the reward model (and PPO's critic start) a `GPT2ForSequenceClassification` folder.
- Data: {meta["data"]}: the first {S.N_PAIRS} pairs whose chosen and rejected sequences fit in
  {S.MAX_LENGTH} tokens and tokenize the same whole (TRL) or in pieces (prefopt); online: the
  first {S.N_PAIRS} distinct prompts of at most {S.MAX_PROMPT_LENGTH} tokens,
  {S.MAX_NEW_TOKENS} new tokens at temperature 1.
- Batch {S.BATCH} (pairs, or completions online), lr {S.LR:g}, AdamW, grad-norm clip 1.0,
  {S.OFFLINE_STEPS} steps offline, {S.ONLINE_STEPS} online; both sides see the same batches
  (TRL gets the data in prefopt's order and reads it sequentially).
- Timing (both sides): wall time from the end of optimiser step 1 (warm-up) to the end of the
  last step, plus any one-time precomputation those steps use (prefopt's cached reference
  log-probs, TRL's `precompute_ref_log_probs`). Each side runs in its own process; peak memory is
  that process's `ru_maxrss`.
- GFLOP/s on useful (non-padding) tokens, N = parameters without position embeddings, per
  token: {", ".join(f"{a} {k} N" for a, k in FLOPS_PER_TOKEN.items())} (forward 2 N, forward
  and backward 6 N; dpo = policy 6 N + reference 2 N; ppo = sampling, reward, reference and
  critic forwards 2 N each + policy and critic training 6 N each; grpo/rloo = sampling 2 N +
  policy training 6 N). Attention's T^2 term is left out. The tokens are counted as if each
  sequence (prompt + completion) were computed whole, as the padded layout does: prefopt's
  packed layout computes a pair's or a group's prompt once, so its figure is work delivered per
  second, which can exceed the work the hardware did (and the matmul peak).
- "fastest": each side's fastest setting found on this machine.
  prefopt (`benchmarks/settings.py`, `PREFOPT_FAST`):
{fast_prefopt}
  TRL (`TRL_FAST`):
{fast_trl}
  Measured and not taken:
{chr(10).join(f"  - {x}" for x in S.NOT_TAKEN)}

## Best against best

{best_table(best_rows)}

## Results

| algorithm | setting | prefopt /s | TRL /s | ratio | tokens/s (prefopt / TRL) \
| GFLOP/s (prefopt / TRL) | peak MB (prefopt / TRL) |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Units: pairs per second (dpo, rm), episodes (completions generated and trained on) per second
(ppo, grpo, rloo). Per algorithm: {"; ".join(f"{a}: {n}" for a, n in NOTES.items())}.

{engine}## Agreement (fp32, first batch)

Both sides see the same token ids, and compute the same loss (within {S.TOLERANCE:g}) and
per-sequence numbers (log-probabilities of chosen and rejected summed over completion tokens,
policy and reference; reward-model scores: within {S.TOLERANCE:g} + {S.SUM_RTOL:g} x |value|,
because a sum of about -700 nats computed in another order in fp32 -- prefopt's packed layout --
differs by about 1e-4), or the run stops before any speed is reported. prefopt's numbers come
from its default (packed) layout, the one that is timed.

| algorithm | prefopt loss | TRL loss | largest difference |
|---|---|---|---|
{chr(10).join(checks)}

## What is not the same on both sides

{NOT_COMPARABLE}

## How to rerun

    make bench                                          # everything (under 20 minutes)
    .venv/bin/python -m benchmarks.run --only dpo --settings fp32
    benchmarks/gpu.sh                                   # the CUDA variant (untested here)
"""
