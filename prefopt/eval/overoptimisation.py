"""Gao et al.'s functional forms of reward-model over-optimisation, fitted by least squares.

Gao, Schulman & Hilton 2022, "Scaling Laws for Reward Model Overoptimization", arXiv
2210.10760, eq. 1 and 2 (section 3): with ``d = sqrt(KL(pi || pi_init))``, the gold reward gain
over the initial policy follows

* best-of-n: ``R_bon(d) = d (alpha - beta d)``, and
* RL:        ``R_rl(d)  = d (alpha - beta log d)``.

Both are linear in ``(alpha, beta)`` (features ``[d, -d^2]`` and ``[d, -d log d]``; ``d log d``
is 0 at ``d = 0``), so the least-squares fit is exact and unique (:func:`numpy.linalg.lstsq`),
with no intercept: the forms pass through 0 at ``d = 0``, so the gains must be measured against
the initial policy. Each fit returns the coefficients, the R^2 of the gains (1 - residual sum
of squares / total sum of squares about their mean; it can be negative when the zero-intercept
form fits worse than a constant), the residuals' root mean square, and where the fitted curve
peaks: ``d* = alpha / (2 beta)`` for best-of-n, ``d* = exp(alpha / beta - 1)`` for RL (a peak
exists only for ``beta > 0``; otherwise ``None``).

Pure functions of numbers: the ablations' tables and training logs are read elsewhere
(:mod:`prefopt.pipeline.gao`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

FORMS = ("bon", "rl")


def features(d: np.ndarray, form: str) -> np.ndarray:
    """``[N, 2]``: the columns multiplying alpha and beta in the form's gold gain."""
    if form == "bon":
        return np.stack([d, -(d**2)], axis=1)
    if form == "rl":
        with np.errstate(divide="ignore", invalid="ignore"):
            d_log_d = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
        return np.stack([d, -d_log_d], axis=1)
    raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")


def gao_curve(d: Sequence[float] | np.ndarray, alpha: float, beta: float, form: str) -> np.ndarray:
    """The form's gold gain at ``d`` (``sqrt(KL)``) for the given coefficients."""
    x = np.asarray(d, dtype=np.float64)
    return features(x, form) @ np.array([alpha, beta])


def fit_gao(
    kl: Sequence[float] | np.ndarray, gold_gain: Sequence[float] | np.ndarray, form: str
) -> dict[str, Any]:
    """Least-squares ``(alpha, beta)`` of ``form`` ("bon" or "rl") to gold gains at KLs.

    ``kl``: KL(pi || pi_init) in nats, >= 0 (``d = sqrt(kl)``); ``gold_gain``: the gold reward
    minus the initial policy's. Needs at least two points with ``kl > 0``. Returns ``alpha``,
    ``beta``, ``r2``, ``rmse``, ``n``, ``d_peak`` (``None`` without a peak) and
    ``gain_at_peak``."""
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")
    k = np.asarray(kl, dtype=np.float64).reshape(-1)
    y = np.asarray(gold_gain, dtype=np.float64).reshape(-1)
    if k.shape != y.shape:
        raise ValueError(f"kl has {k.size} values and gold_gain {y.size}")
    if not (np.isfinite(k).all() and np.isfinite(y).all()):
        raise ValueError("kl and gold_gain must be finite")
    if (k < 0).any():
        raise ValueError(f"KL must be >= 0, got min {k.min():g}")
    if int((k > 0).sum()) < 2:
        raise ValueError("fitting two coefficients needs at least two points with KL > 0")
    d = np.sqrt(k)
    x = features(d, form)
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    alpha, beta = float(coef[0]), float(coef[1])
    residual = y - x @ coef
    ss_res = float(residual @ residual)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else float("nan"))
    peak = _peak(alpha, beta, form)
    return {
        "form": form,
        "alpha": alpha,
        "beta": beta,
        "r2": r2,
        "rmse": math.sqrt(ss_res / y.size),
        "n": int(y.size),
        "d_peak": peak,
        "kl_peak": None if peak is None else peak**2,
        "gain_at_peak": None if peak is None else float(gao_curve([peak], alpha, beta, form)[0]),
    }


def _peak(alpha: float, beta: float, form: str) -> float | None:
    """The d that maximises the fitted gain (d > 0), or None when the curve never turns."""
    if beta <= 0:
        return None
    if form == "bon":
        return alpha / (2 * beta) if alpha > 0 else None
    # d/dd [alpha d - beta d log d] = alpha - beta (log d + 1) = 0
    exponent = alpha / beta - 1
    return math.exp(exponent) if exponent < 700 else None
