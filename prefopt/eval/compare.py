"""Paired comparison of two reward models on the same held-out preference pairs.

Two reward models scored on the same pairs are compared pair by pair: for each pair, the
difference of their per-pair correctness, averaged, with the standard error of that mean. The
pairing removes the variance shared by the two models (most pairs are easy or hard for both),
so a difference of a fraction of a point can be told apart from noise on a few thousand pairs,
where the two accuracies' separate error bars would overlap.

Two measures per model:

* ``accuracy``: 1 where the model's margin (``chosen`` minus ``rejected``) is positive, else 0,
  against the sampled labels -- a tie counts as wrong, as in every run's ``eval.accuracy``, so
  that a run's own figure is reproduced; the number of ties is reported (``ties``) because a
  scorer with many (the gold reward has a few exact-zero gaps) reads lower here;
* ``expected_accuracy`` (only with the world's gold gaps): ``p`` where the margin is positive,
  ``1 - p`` where negative, 1/2 on a tie, with ``p = sigmoid(gold_gap / T)`` the probability
  that a fresh label prefers ``chosen`` -- the accuracy free of the labels' noise
  (``World.expected_accuracy`` is its mean).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from prefopt.world.world import per_pair_expected  # noqa: F401  (part of this module's API)


def standard_error(values: Tensor) -> float:
    """Standard error of the mean of ``values`` (sample standard deviation over sqrt(N)); NaN
    for fewer than two values."""
    n = values.numel()
    return float(values.double().std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")


def paired(a: Tensor, b: Tensor) -> dict[str, float]:
    """Means of two ``[N]`` paired measurements, their own standard errors, and the mean of
    their per-unit difference ``a - b`` with its paired standard error."""
    a, b = a.double(), b.double()
    return {
        "a": float(a.mean()),
        "a_se": standard_error(a),
        "b": float(b.mean()),
        "b_se": standard_error(b),
        "diff": float((a - b).mean()),
        "se": standard_error(a - b),
    }


def paired_comparison(
    margins_a: Tensor,
    margins_b: Tensor,
    gold_gaps: Tensor | None = None,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Compare two models' margins on the same N pairs (``chosen`` is the labelled winner).

    Returns ``{"n", "ties", "disagreement", "accuracy": {"a", "b", "diff", "se"}}`` and, with
    the gold gaps, ``"expected_accuracy"`` in the same form; ``diff`` is ``a - b`` and ``se``
    its paired standard error (sample standard deviation of the per-pair differences over
    ``sqrt(N)``).
    """
    if margins_a.shape != margins_b.shape or margins_a.dim() != 1:
        raise ValueError(
            f"margins must be two [N] tensors of one size, got {tuple(margins_a.shape)} and "
            f"{tuple(margins_b.shape)}"
        )
    if margins_a.numel() == 0:
        raise ValueError("no pairs to compare")
    right_a, right_b = (margins_a > 0).double(), (margins_b > 0).double()
    out: dict[str, Any] = {
        "n": int(margins_a.numel()),
        "ties": {"a": int((margins_a == 0).sum()), "b": int((margins_b == 0).sum())},
        # on the sampled labels: one right and the other wrong (a tie counts as wrong)
        "disagreement": float((right_a != right_b).double().mean()),
        "accuracy": paired(right_a, right_b),
    }
    if gold_gaps is not None:
        if gold_gaps.shape != margins_a.shape:
            raise ValueError(f"gold_gaps {tuple(gold_gaps.shape)} must match the margins")
        out["expected_accuracy"] = paired(
            per_pair_expected(margins_a, gold_gaps, temperature),
            per_pair_expected(margins_b, gold_gaps, temperature),
        )
    return out


def score_margins(
    scorer: Any,
    records: Sequence[dict[str, Any]],
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 1024,
) -> Tensor:
    """``[N]`` margins ``score(chosen) - score(rejected)`` of any scorer (``score(prompts,
    completions)``) on preference records, scored ``chunk`` pairs at a time; ``progress(done,
    total)`` is called after each chunk. A chunk is a multiple of the reward models' batch of
    64, so the batches, and the scores, are those of one call on all records."""
    margins = []
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        prompts = [r["prompt"] for r in part]
        chosen = scorer.score(prompts, [r["chosen"] for r in part])
        rejected = scorer.score(prompts, [r["rejected"] for r in part])
        margins.append((chosen - rejected).detach().float().cpu())
        if progress is not None:
            progress(start + len(part), len(records))
    return torch.cat(margins) if margins else torch.zeros(0)


def format_comparison(result: dict[str, Any], name_a: str, name_b: str) -> str:
    width = max(len(name_a), len(name_b), len("A - B (paired SE)")) + 2
    keys = [k for k in ("accuracy", "expected_accuracy") if k in result]
    lines = ["".ljust(width) + "".join(f"{k:<22}" for k in keys)]
    lines.append(name_a.ljust(width) + "".join(f"{result[k]['a']:<22.4f}" for k in keys))
    lines.append(name_b.ljust(width) + "".join(f"{result[k]['b']:<22.4f}" for k in keys))
    cells = ""
    for k in keys:
        diff, se = result[k]["diff"], result[k]["se"]
        cells += f"{diff:+.4f} ({se:.4f})".ljust(22)
    lines.append("A - B (paired SE)".ljust(width) + cells)
    lines.append(f"{result['n']} pairs; the two disagree on {result['disagreement']:.1%} of them")
    ties = result.get("ties", {})
    if any(ties.values()):
        lines.append(
            f"ties (counted wrong in accuracy, 1/2 in expected accuracy): A {ties['a']}, "
            f"B {ties['b']}"
        )
    return "\n".join(lines)
