"""RETA: how much better than average are the responses a reward model ranks at the top?

Chen et al. (2025), arXiv 2504.14838 (ALGORITHMS.md section 9). For each prompt q there are N
responses from a reference policy, each with a cached oracle quality ``J > 0``. The reward
model under test ranks them, and for a quantile ``eta in (0, 1]``

    RETA(eta) = mean_q [ mean J over the top ceil(eta * N) responses by RM score ]
                       / [ mean J over all N responses ]

RETA(1) = 1 exactly; a value above 1 means the RM's picks are better than average, below 1
worse. The curve over eta is reported as the expectation over random subsets of n < N
responses per prompt (``subset_size``), resampled to give error bars, together with the eta
that maximises it: the quantile to select from when the RM is not reliable enough to trust its
top choice.

Implementation choices (documented deviations or details the notes leave open):

* ``k = ceil(eta * N)`` is computed as ``ceil(round(eta * N, 9))`` so that floating-point error
  cannot add a response: ``(7/25) * 25 == 7.000000000000001`` still gives k = 7, not 8.
* Ties in RM score are broken by the response's index: among equal scores the response that
  comes first in the input (lower column index) ranks higher. In a random subset the same rule
  applies to the original column indices, so subsetting never changes how two responses tie.
* Numerator and denominator come from the same cumulative sum of the oracle scores in RM
  order, ``cumsum[k-1] / k`` over ``cumsum[N-1] / N``, so for eta = 1 they are the same number
  and RETA(1) is exactly 1.0 (not merely to rounding). Computation is in float64.
* The std of the curve is the sample std (``correction=1``) over resamples of the prompt-averaged
  RETA, i.e. the spread of the subset estimate; 0 with a single resample or with no subsetting.
* ``best_eta`` is the smallest eta attaining the maximum mean (ties go to the smaller eta).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["RetaCurve", "default_etas", "reta", "reta_curve", "reta_loop"]


def _top_k(eta: float, n: int) -> int:
    if not 0.0 < eta <= 1.0:
        raise ValueError(f"eta must be in (0, 1], got {eta}")
    return max(1, min(n, math.ceil(round(eta * n, 9))))


def _check_inputs(rm_scores: Tensor, oracle: Tensor) -> tuple[Tensor, Tensor]:
    if rm_scores.dim() != 2 or rm_scores.shape != oracle.shape:
        raise ValueError(
            f"rm_scores and oracle must both be [Q, N]; got {tuple(rm_scores.shape)} and "
            f"{tuple(oracle.shape)}"
        )
    if rm_scores.shape[0] == 0 or rm_scores.shape[1] == 0:
        raise ValueError("RETA needs at least one prompt and one response")
    scores = rm_scores.detach().to(device="cpu", dtype=torch.float64)
    quality = oracle.detach().to(device="cpu", dtype=torch.float64)
    if not bool((quality > 0).all()):
        raise ValueError(
            "RETA needs oracle scores J > 0 (it is a ratio of means); map the oracle to a "
            "positive scale first, e.g. exp(J) or J - min(J) + 1"
        )
    return scores, quality


def _rank_order(scores: Tensor) -> Tensor:
    """Indices sorting the last dim by descending score, ties by ascending position."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def _reta_per_prompt(scores: Tensor, quality: Tensor, ks: Sequence[int]) -> Tensor:
    """``[..., E]`` RETA of each row of ``[..., n]`` scores/quality, one column per k."""
    n = scores.shape[-1]
    order = _rank_order(scores)
    cumulative = torch.gather(quality, -1, order).cumsum(dim=-1)
    k = torch.tensor(ks, dtype=torch.long)
    top_mean = cumulative[..., k - 1] / k.to(torch.float64)
    all_mean = cumulative[..., n - 1 : n] / n
    return top_mean / all_mean


def reta(rm_scores: Tensor, oracle: Tensor, eta: float) -> float:
    """RETA(eta) over all N responses of each prompt (Chen et al. 2025, arXiv 2504.14838).

    Args:
        rm_scores: ``[Q, N]`` reward-model scores.
        oracle: ``[Q, N]`` oracle qualities ``J > 0`` of the same responses.
        eta: quantile in (0, 1]; the top ``ceil(eta * N)`` responses by RM score are kept.

    Returns:
        The mean over prompts of (mean J of the RM's top responses) / (mean J of all).
    """
    scores, quality = _check_inputs(rm_scores, oracle)
    k = _top_k(eta, scores.shape[1])
    return float(_reta_per_prompt(scores, quality, [k]).mean())


def default_etas(n: int) -> list[float]:
    """``[1/n, 2/n, ..., 1]``: one eta per distinct top-k on n responses, ending at 1.0."""
    return [k / n for k in range(1, n)] + [1.0]


@dataclass
class RetaCurve:
    """A RETA curve: ``mean[e]`` and ``std[e]`` over resampled subsets at ``etas[e]``."""

    etas: list[float]
    mean: list[float]
    std: list[float]
    best_eta: float
    best_value: float
    subset_size: int
    n_resamples: int

    def to_csv(self, path: str | Path) -> None:
        """Write ``eta,mean,std`` rows (one per eta) to ``path``."""
        with Path(path).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["eta", "mean", "std"])
            for row in zip(self.etas, self.mean, self.std, strict=True):
                writer.writerow([repr(v) for v in row])

    def plot(self, path: str | Path, title: str | None = None) -> None:
        """Save the curve as a PNG with error bars (+- std) and a line at RETA = 1."""
        from matplotlib.figure import Figure  # object API: no global pyplot/backend state

        fig = Figure(figsize=(5.0, 3.5), dpi=120)
        ax = fig.add_subplot()
        ax.errorbar(self.etas, self.mean, yerr=self.std, marker="o", ms=3, capsize=2)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.axvline(self.best_eta, color="tab:red", linestyle=":", linewidth=1)
        ax.set_xlabel("eta (fraction of responses kept by the RM)")
        ax.set_ylabel("RETA(eta)")
        ax.set_xlim(0.0, 1.02)
        ax.set_title(title or f"RETA, subsets of {self.subset_size}, best eta {self.best_eta:.3g}")
        fig.tight_layout()
        fig.savefig(str(path), format="png")


def _sample_subsets(q: int, n_total: int, n: int, n_resamples: int, seed: int) -> Tensor:
    """``[R, Q, n]`` column indices of random subsets, sorted ascending within each subset.

    Shared by :func:`reta_curve` and :func:`reta_loop` so that both see the same subsets.
    With ``n == n_total`` every subset is all columns and one resample is drawn.
    """
    if n == n_total:
        return torch.arange(n_total).expand(1, q, n_total).clone()
    generator = torch.Generator().manual_seed(seed)
    keys = torch.rand(n_resamples, q, n_total, generator=generator)
    return keys.argsort(dim=-1)[..., :n].sort(dim=-1).values


def _resolve(
    n_total: int, etas: Sequence[float] | None, subset_size: int | None, n_resamples: int
) -> tuple[int, list[float]]:
    n = max(1, n_total // 2) if subset_size is None else subset_size
    if not 1 <= n <= n_total:
        raise ValueError(f"subset_size must be in [1, N={n_total}], got {subset_size}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    grid = default_etas(n) if etas is None else [float(e) for e in etas]
    if not grid:
        raise ValueError("etas must not be empty")
    for eta in grid:
        _top_k(eta, n)  # validates the range
    return n, grid


def _summarise(per_resample: Tensor, etas: list[float], n: int, n_resamples: int) -> RetaCurve:
    """``per_resample``: ``[R, E]`` prompt-averaged RETA of each resample."""
    mean = per_resample.mean(dim=0)
    if per_resample.shape[0] > 1:
        std = per_resample.std(dim=0, correction=1)
    else:
        std = torch.zeros_like(mean)
    best = int(torch.argmax(mean))  # first maximum: the smallest eta among ties
    return RetaCurve(
        etas=list(etas),
        mean=mean.tolist(),
        std=std.tolist(),
        best_eta=etas[best],
        best_value=float(mean[best]),
        subset_size=n,
        n_resamples=int(per_resample.shape[0]),
    )


def reta_curve(
    rm_scores: Tensor,
    oracle: Tensor,
    etas: Sequence[float] | None = None,
    subset_size: int | None = None,
    n_resamples: int = 100,
    seed: int = 0,
) -> RetaCurve:
    """RETA curve with error bars over random response subsets (Chen et al. 2025).

    For each of ``n_resamples`` draws, every prompt keeps a uniformly random subset of
    ``subset_size`` of its N responses; RETA(eta) is computed on the subsets and averaged over
    prompts. The curve is the mean over draws, the error bar their (sample) std.

    Args:
        rm_scores: ``[Q, N]`` reward-model scores.
        oracle: ``[Q, N]`` oracle qualities ``J > 0``.
        etas: quantiles in (0, 1]; default ``[1/n, 2/n, ..., 1]`` for subsets of n.
        subset_size: n; default ``N // 2``. ``subset_size == N`` means no subsetting (a single
            evaluation on all responses, std 0).
        n_resamples: number of subset draws.
        seed: seed of the subset draws.
    """
    scores, quality = _check_inputs(rm_scores, oracle)
    q, n_total = scores.shape
    n, grid = _resolve(n_total, etas, subset_size, n_resamples)
    subsets = _sample_subsets(q, n_total, n, n_resamples, seed)  # [R, Q, n]
    r = subsets.shape[0]
    sub_scores = torch.gather(scores.expand(r, q, n_total), -1, subsets)
    sub_quality = torch.gather(quality.expand(r, q, n_total), -1, subsets)
    ks = [_top_k(eta, n) for eta in grid]
    per_resample = _reta_per_prompt(sub_scores, sub_quality, ks).mean(dim=1)  # [R, E]
    return _summarise(per_resample, grid, n, n_resamples)


def reta_loop(
    rm_scores: Tensor,
    oracle: Tensor,
    etas: Sequence[float] | None = None,
    subset_size: int | None = None,
    n_resamples: int = 100,
    seed: int = 0,
) -> RetaCurve:
    """Plain-Python reference implementation of :func:`reta_curve`, for tests only.

    Same subsets (same seed), same tie rule, one prompt and one eta at a time.
    """
    scores, quality = _check_inputs(rm_scores, oracle)
    q, n_total = scores.shape
    n, grid = _resolve(n_total, etas, subset_size, n_resamples)
    subsets = _sample_subsets(q, n_total, n, n_resamples, seed).tolist()
    score_rows, quality_rows = scores.tolist(), quality.tolist()
    table: list[list[float]] = []
    for draw in subsets:
        row = []
        for eta in grid:
            k = _top_k(eta, n)
            total = 0.0
            for prompt, columns in enumerate(draw):
                # columns ascend and sorted() stays stable with reverse=True: equal scores keep
                # column order
                ranked = sorted(columns, key=score_rows[prompt].__getitem__, reverse=True)
                top = sum(quality_rows[prompt][c] for c in ranked[:k]) / k
                everything = sum(quality_rows[prompt][c] for c in ranked) / n
                total += top / everything
            row.append(total / q)
        table.append(row)
    return _summarise(torch.tensor(table, dtype=torch.float64), grid, n, n_resamples)
