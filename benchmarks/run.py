"""`make bench`: prefopt against TRL, every algorithm, fp32, each side's fastest setting, vLLM.

    python -m benchmarks.run [--only dpo,rm] [--settings fp32,fastest,vllm]

Builds the assets (benchmarks/assets.py) under .bench/, measures this machine's matmul peak,
runs each side in its own process (peak RSS is that process's own), checks in fp32 that both
sides compute the same first-batch loss and per-sequence numbers (AgreementError otherwise, and
nothing is reported), then writes benchmarks/results.json and docs/benchmarks.md.

Timing, the same on both sides: the wall time from the end of optimiser step 1 (the warm-up) to
the end of the last step, plus any one-time precomputation those steps rely on (prefopt's cached
reference log-probs, TRL's precompute_ref_log_probs). Items per second are the pairs (offline)
or episodes, i.e. completions generated and trained on (online), of steps 2..N.

The ``vllm`` setting (online algorithms only): each side's fastest setting with rollouts from
its own vLLM engine colocated in the training process. Where TRL has no vLLM mode (TRL 0.29's
PPO) or its engine does not run on this machine, the row reports prefopt's figures and the
reason instead of TRL's, and the bench goes on.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import settings as S
from benchmarks.measure import AgreementError, check_agreement, check_same_ids, rates

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".bench"
TRL029 = WORK / "trl029"
RESULTS = ROOT / os.environ.get("BENCH_RESULTS", "benchmarks/results.json")
DOC = ROOT / os.environ.get("BENCH_DOC", "docs/benchmarks.md")


def data_order(n: int, seed: int = S.SEED) -> list[int]:
    """prefopt's epoch-0 order (Trainer.epoch_permutation); TRL gets its data in this order."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003)
    return torch.randperm(n, generator=generator).tolist()


class SideFailed(SystemExit):
    """One side's process failed (or ran past its time); ``reason``: the line that says why."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def failure_reason(log: str) -> str:
    """The line of a failed side's log that says why: the last exception line of a traceback
    (``SomeError: ...``, without the ``[rank0]: `` prefix of a distributed launch), else the
    last line."""
    lines = [re.sub(r"^\[rank\d+\]:\s*", "", x.strip()) for x in log.splitlines()]
    lines = [x for x in lines if x]
    for row in reversed(lines):
        head = row.split(":", 1)[0]
        if ":" in row and " " not in head and head.endswith(("Error", "Exception", "Exit")):
            return row[:400]
    return lines[-1][:400] if lines else "no output"


def child(side: str, job: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run one side in its own process; its result, or SideFailed naming its log."""
    name = f"{job['algo']}-{job['setting']}-{side}"
    job_path, out_path, log = (WORK / "jobs" / f"{name}.{x}" for x in ("json", "out.json", "log"))
    job_path.parent.mkdir(parents=True, exist_ok=True)
    job = {**job, "run_dir": str(WORK / "runs" / name)}
    subprocess.run(["rm", "-rf", job["run_dir"]], check=True)
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}  # fmt: skip
    module = {"prefopt": "benchmarks.prefopt_side", "trl": "benchmarks.trl_side"}[side]
    if side == "trl" and job["algo"] == "ppo":
        module = "benchmarks.trl029_ppo"
        env["PYTHONPATH"] = f"{TRL029}:{ROOT}"
    if side == "trl" and job["setting"] in S.ENGINE_SETTINGS and S.DEVICE == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(S.TRL_VLLM_KV_GIB)  # TRL passes no KV-cache size
    start = time.time()
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", module, str(job_path), str(out_path)],
            stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise SideFailed(f"{name} ran past {timeout:.0f} s; log {log}",
                             f"did not finish in {timeout:.0f} s") from None  # fmt: skip
    if code != 0:
        text = log.read_text()
        tail = "".join(text.splitlines(keepends=True)[-25:])
        raise SideFailed(f"{name} failed (exit {code}); log {log}:\n{tail}", failure_reason(text))
    result = json.loads(out_path.read_text())
    result["wall_s"] = time.time() - start
    print(f"  {name}: {result['timed_s']:.1f} s timed, peak {result['peak_mb']:.0f} MB", flush=True)
    return result


def trl_side(job: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """TRL's result, or (None, why) in an engine setting that TRL has no mode for or that
    does not run here (the bench goes on and reports the reason); elsewhere a failure stops the
    bench."""
    if job["setting"] not in S.ENGINE_SETTINGS:
        return child("trl", job), None
    if job["algo"] in S.TRL_NO_VLLM:
        print(f"  TRL: {S.TRL_NO_VLLM[job['algo']]}", flush=True)
        return None, S.TRL_NO_VLLM[job["algo"]]
    try:
        return child("trl", job, timeout=S.ENGINE_TIMEOUT_S), None
    except SideFailed as failed:
        reason = f"TRL's colocated vLLM did not run here: {failed.reason}"
        print(f"  {reason}", flush=True)
        return None, reason


def check(algo: str, ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    """The fp32 agreement of the first batch; AgreementError (with the numbers) otherwise."""
    check_same_ids(f"{algo} token ids", ours["ids"], theirs["ids"])
    keys = ["loss"] + [k for k in ours if k.endswith(("logps", "rewards"))]
    # the loss within TOLERANCE; a summed log-prob (hundreds of nats over ~100 tokens) also
    # within SUM_RTOL of its size: fp32 sums in another order (prefopt's packed layout) differ
    # by about 1e-7 relative, which at -741 nats is already 1.2e-4
    found = {
        k: check_agreement(f"{algo} {k}", _list(ours[k]), _list(theirs[k]), S.TOLERANCE,
                           rtol=0.0 if k == "loss" else S.SUM_RTOL)
        for k in keys
    }  # fmt: skip
    if algo == "dpo" and abs(ours["loss"] - 0.6931471805599453) < 1e-3:
        raise AgreementError(f"dpo first-batch loss {ours['loss']} is log 2: the check is trivial")
    return {
        "max_abs_diff": max(found.values()),
        "prefopt_loss": ours["loss"],
        "trl_loss": theirs["loss"],
        **{f"max_abs_diff/{k}": v for k, v in found.items()},
    }


def _list(value: Any) -> list[float]:
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]


def offline_counts(assets: dict[str, Any], order: list[int]) -> tuple[int, int]:
    """(pairs, useful tokens) of steps 2..N, the timed ones: both sides see the same batches."""
    from transformers import AutoTokenizer

    from benchmarks.assets import split_ids

    tokenizer = AutoTokenizer.from_pretrained(assets["policy"])
    pairs = [json.loads(x) for x in Path(assets["pairs_file"]).read_text().splitlines() if x]
    timed = [pairs[i] for i in order[S.BATCH : S.OFFLINE_STEPS * S.BATCH]]
    tokens = sum(
        len(split_ids(tokenizer, p["prompt"], p[k])) for p in timed for k in ("chosen", "rejected")
    )
    return len(timed), tokens


def figures(algo: str, result: dict[str, Any], offline: tuple[int, int]) -> dict[str, float]:
    if algo in ("dpo", "rm"):
        items, tokens = offline
    else:  # the episodes and tokens each side actually generated in steps 2..N
        timed = result["episodes"][1:]
        items, tokens = sum(e["episodes"] for e in timed), sum(e["tokens"] for e in timed)
        result["new_tokens_per_episode"] = sum(e["new_tokens"] for e in timed) / max(items, 1)
    out = rates(algo, items, tokens, result["timed_s"], result["params"])
    return {**out, "items": items, "tokens": tokens, "peak_mb": result["peak_mb"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(S.ALGORITHMS))
    parser.add_argument("--settings", default=",".join(S.SETTINGS))
    opts = parser.parse_args(argv)
    algos, settings = opts.only.split(","), opts.settings.split(",")
    began = time.time()
    from benchmarks import report
    from benchmarks.assets import build_assets
    from benchmarks.measure import matmul_peak_gflops

    assets = build_assets(WORK / "assets", S.N_PAIRS, S.MAX_LENGTH, S.N_PAIRS, S.MAX_PROMPT_LENGTH)
    print(
        f"assets: {assets['n_pairs']} pairs, {assets['n_prompts']} prompts from {assets['source']}"
    )
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    peak = {d: matmul_peak_gflops(d) for d in ("fp32", "bf16")}
    print(f"matmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    order = data_order(S.N_PAIRS)
    offline = offline_counts(assets, order)
    # a partial rerun (--only / --settings) replaces its own entries and keeps the others,
    # when they were measured on this machine (speeds of two CPUs are never compared)
    results: dict[str, Any] = {}
    if RESULTS.exists() and (set(algos) != set(S.ALGORITHMS) or set(settings) != set(S.SETTINGS)):
        results, dropped = report.kept_results(json.loads(RESULTS.read_text()), report.cpu_name())
        if dropped:
            print(dropped, flush=True)
    raw: dict[str, Any] = {}
    for setting in settings:
        if setting in S.ENGINE_SETTINGS and importlib.util.find_spec(setting) is None:
            print(f"{setting}: not installed (`make install`; docs/engines.md): its rows are "
                  "left out", flush=True)  # fmt: skip
            continue
        for algo in algos:
            if setting not in S.settings_for(algo):
                continue
            job = {"algo": algo, "setting": setting, "assets": assets, "order": order,
                   "check": setting == "fp32"}  # fmt: skip
            print(f"{algo} {setting}", flush=True)
            ours = child("prefopt", job)
            theirs, missing = trl_side(job)
            raw[f"{algo}/{setting}"] = {"prefopt": ours, "trl": theirs or missing}
            entry = report.entry(
                algo,
                figures(algo, ours, offline),
                figures(algo, theirs, offline) if theirs else None,
                setting=setting,
                trl_missing=missing,
            )
            if setting == "fp32" and theirs and "check" in ours and "check" in theirs:
                entry["agreement"] = check(algo, ours.pop("check"), theirs.pop("check"))
            entry["notes"] = report.NOTES.get(algo, "")
            results.setdefault(algo, {})[setting] = entry
            print(f"  {report.line(algo, setting, entry)}", flush=True)
    for algo, by_setting in results.items():
        by_setting.pop("best", None)
        if all(s in by_setting for s in S.settings_for(algo) if s not in S.ENGINE_SETTINGS):
            by_setting["best"] = report.best(by_setting)
    meta = report.machine(peak, assets, time.time() - began)
    RESULTS.write_text(json.dumps({"machine": meta, **results}, indent=2) + "\n")
    (WORK / "raw.json").write_text(json.dumps(raw, indent=1))
    DOC.write_text(report.markdown(meta, results))
    print(f"wrote {RESULTS} and {DOC} "
          f"in {time.time() - began:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
