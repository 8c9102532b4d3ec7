"""Expected calibration error of a reward model's preference probabilities.

A Bradley-Terry reward model predicts ``p = sig(r(x, y_1) - r(x, y_2))``, the probability that
the first response of a pair is preferred (ALGORITHMS.md section 2). Its expected calibration
error (Guo et al. 2017, "On Calibration of Modern Neural Networks", arXiv 1706.04599, eq. 3;
Naeini et al. 2015) is

    ECE = sum_b (|B_b| / n) * | acc(B_b) - conf(B_b) |

over ``n_bins`` equal-width bins ``B_b = ((b-1)/M, b/M]`` of the confidence.

Symmetrisation. A pair (y_1, y_2) and its swap (y_2, y_1) are the same prediction, so the ECE is
computed on the *predicted winner*: ``confidence = max(p, 1 - p)`` and ``accuracy`` is the
probability that the predicted winner is preferred by the label, i.e. ``y`` when ``p > 0.5``,
``1 - y`` when ``p < 0.5`` (``y`` may be a hard label in {0, 1} or a soft label in [0, 1]). At
``p == 0.5`` there is no predicted winner: the pair counts with accuracy 0.5 (a fair tie-break)
and confidence 0.5, so it contributes no calibration error. The result is invariant to swapping
the order of any pair (``p -> 1 - p``, ``y -> 1 - y``). Confidences lie in [0.5, 1], so with the
default 10 bins only the upper five are populated; the bins still cover [0, 1] as in the usual
definition so that values are comparable with other implementations.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["expected_calibration_error"]


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 10) -> float:
    """ECE of pairwise preference probabilities (Guo et al. 2017, eq. 3), symmetrised.

    Args:
        probs: ``[n]`` predicted probabilities that the first response is preferred, e.g.
            ``sigmoid(r_chosen - r_rejected)``.
        labels: ``[n]`` 1.0 where the first response is preferred, 0.0 where the second is
            (soft labels in [0, 1] are allowed). For (chosen, rejected) pairs pass ones.
        n_bins: number of equal-width confidence bins over [0, 1], right-closed.

    Returns:
        The ECE, a float in [0, 1].
    """
    p = probs.detach().to(torch.float64).reshape(-1).cpu()
    y = labels.detach().to(torch.float64).reshape(-1).cpu()
    if p.shape != y.shape:
        raise ValueError(f"probs {tuple(p.shape)} and labels {tuple(y.shape)} differ in shape")
    if p.numel() == 0:
        raise ValueError("expected_calibration_error needs at least one pair")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if p.min() < 0 or p.max() > 1:
        raise ValueError("probs must lie in [0, 1]")

    confidence = torch.maximum(p, 1.0 - p)
    accuracy = torch.where(p > 0.5, y, 1.0 - y)
    accuracy = torch.where(p == 0.5, torch.full_like(y, 0.5), accuracy)

    # Right-closed bins ((b-1)/M, b/M]; confidence 0 (impossible here) would fall in bin 0.
    inner_edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)[1:-1]
    bin_index = torch.bucketize(confidence, inner_edges, right=False)
    count = torch.bincount(bin_index, minlength=n_bins).to(torch.float64)
    sum_conf = torch.bincount(bin_index, weights=confidence, minlength=n_bins)
    sum_acc = torch.bincount(bin_index, weights=accuracy, minlength=n_bins)
    # sum_b (|B_b|/n) |acc_b - conf_b| = (1/n) sum_b |sum_acc_b - sum_conf_b|
    return float((sum_acc - sum_conf).abs().sum() / count.sum())
