"""The pure pieces of the harness: FLOP counts, the agreement check, peak memory, matmul peak.

FLOPs of a transformer with N parameters (position embeddings left out: a lookup, no matmul;
the tied token embedding counts once, as the LM-head matmul) on T tokens (Kaplan et al. 2020,
attention's own T^2 term left out): a forward pass 2 N T, a forward and backward 6 N T. Only
useful tokens count (padding excluded). Per algorithm, per useful token of a sequence:

* dpo: policy forward+backward + reference forward = 8 N (whether a side caches the reference
  or not: the rate is of the algorithm's work);
* rm: forward+backward of the reward model = 6 N;
* ppo (1 epoch): sampling 2 N + reward model 2 N + reference 2 N + critic forward 2 N + policy
  forward+backward 6 N + critic forward+backward 6 N = 20 N;
* grpo / rloo (no reference, a Python reward): sampling 2 N + policy forward+backward 6 N = 8 N.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

FLOPS_PER_TOKEN = {"dpo": 8, "rm": 6, "ppo": 20, "grpo": 8, "rloo": 8}


class AgreementError(AssertionError):
    """The two sides do not compute the same numbers: no speed may be reported."""


def useful_flops(algo: str, params: int, tokens: int) -> float:
    """FLOPs of `algo`'s work on `tokens` useful tokens with a model of `params` parameters."""
    return float(FLOPS_PER_TOKEN[algo]) * params * tokens


def counted_params(model) -> int:  # type: ignore[no-untyped-def]
    """Parameters that take part in matmuls (position embeddings left out), counted once."""
    seen: set[int] = set()
    total = 0
    for name, p in model.named_parameters():
        if id(p) in seen or name.endswith(("wpe.weight", "position_embeddings.weight")):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def check_agreement(
    name: str, ours: Sequence[float], theirs: Sequence[float], tol: float = 1e-4, rtol: float = 0.0
) -> float:
    """The largest absolute difference of two equal-length lists; AgreementError where a
    difference exceeds ``tol + rtol * |TRL's value|``."""
    if len(ours) != len(theirs):
        raise AgreementError(f"{name}: {len(ours)} values against {len(theirs)}")
    pairs = list(zip(ours, theirs, strict=True))
    worst = max((abs(a - b) for a, b in pairs), default=0.0)
    if not all(abs(a - b) <= tol + rtol * abs(b) for a, b in pairs):  # also catches NaN
        raise AgreementError(
            f"{name}: prefopt and TRL differ by {worst:.3g} > {tol:g} + {rtol:g} x |value|\n"
            f"  prefopt: {[round(v, 6) for v in ours]}\n  TRL:     {[round(v, 6) for v in theirs]}"
        )
    return worst


def check_same_ids(
    name: str, ours: Sequence[Sequence[int]], theirs: Sequence[Sequence[int]]
) -> None:
    if len(ours) != len(theirs):
        raise AgreementError(f"{name}: {len(ours)} rows against {len(theirs)}")
    for row, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        a, b = list(a), list(b)
        if a != b:
            first = next(
                (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)),
            )
            raise AgreementError(
                f"{name}: row {row} tokenizes differently from position {first}: prefopt "
                f"{a[first : first + 8]} (len {len(a)}), TRL {b[first : first + 8]} (len {len(b)})"
            )


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (ru_maxrss: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def rates(algo: str, items: int, tokens: int, seconds: float, params: int) -> dict[str, float]:
    """Per-second figures of a timed window: items (pairs / episodes), useful tokens, GFLOP/s."""
    seconds = max(seconds, 1e-9)
    return {
        "per_s": items / seconds,
        "tokens_per_s": tokens / seconds,
        "gflops": useful_flops(algo, params, tokens) / seconds / 1e9,
    }


def matmul_peak_gflops(dtype_name: str, size: int = 2048, seconds: float = 2.0) -> float:
    """Achieved GFLOP/s of `torch.matmul` on square `size` matrices (best of repeated runs)."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)  # warm-up: kernels chosen, pages touched
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def ratio(ours: Mapping[str, float], theirs: Mapping[str, float], key: str = "per_s") -> float:
    return ours[key] / theirs[key] if theirs.get(key) else float("nan")


def job_main(run: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """One side's process: the job file (argv[1]) run with ``OMP_NUM_THREADS`` threads, its
    result written as JSON to argv[2]."""
    job = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    Path(sys.argv[2]).write_text(json.dumps(run(job)))
