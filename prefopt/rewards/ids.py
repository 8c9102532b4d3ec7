"""Iterative Data Smoothing (IDS): reward learning with soft labels that the model updates.

Zhu, Jordan & Jiao (2024), "Iterative Data Smoothing: Mitigating Reward Overfitting and
Overoptimization in RLHF", arXiv 2401.16335 (ALGORITHMS.md section 6).

For a comparison i between responses (a_i, a'_i) with reward gap
``delta_i = r(x, a_i) - r(x, a'_i)`` and a soft label ``y_i`` (the probability that the *first*
response is preferred):

* the loss is the cross-entropy with the soft label (the paper's IDS objective, which with hard
  labels is the usual Bradley-Terry MLE loss)::

      L_i = -[ y_i log sig(delta_i) + (1 - y_i) log sig(-delta_i) ]

* after the model has been trained on the current labels, each label moves towards the updated
  model's own prediction::

      y_i <- (1 - beta) y_i + beta sig(delta_i)

  with ``y_i^0`` the hard label and ``beta`` small, so that labels move on a slower timescale
  than the model. A comparison seen many times is fitted quickly and its label then follows
  the fit; a comparison seen once barely moves the model before its label has been smoothed
  towards the model's prediction, which keeps rarely compared responses near their
  initialisation instead of driving their reward gap to infinity.

The labels are per-example state that persists across epochs (:class:`SoftLabelStore`); they
are not recomputed per batch. Whether the labels are updated after every batch (on the
batch's examples) or after every epoch (on all examples) is the trainer's choice; the paper's
values of beta and of the number of epochs are unverified (see ``docs/algorithms/ids.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SoftLabelStore", "soft_label_loss", "update_soft_labels"]


def soft_label_loss(deltas: Tensor, labels: Tensor) -> Tensor:
    """Per-example cross-entropy with soft labels (IDS objective, arXiv 2401.16335).

    ``-[y log sig(delta) + (1 - y) log sig(-delta)]``, computed with ``logsigmoid`` so that it is
    finite for any ``delta``. With ``labels == 1`` this is the Bradley-Terry loss
    ``-log sig(delta)``.

    Args:
        deltas: ``[B]`` reward gaps ``r(first) - r(second)``.
        labels: ``[B]`` probabilities in ``[0, 1]`` that the first response is preferred.

    Returns:
        ``[B]`` per-example losses (the caller reduces them).
    """
    labels = labels.to(deltas.dtype)
    return -(labels * F.logsigmoid(deltas) + (1.0 - labels) * F.logsigmoid(-deltas))


def update_soft_labels(labels: Tensor, deltas: Tensor, beta: float) -> Tensor:
    """IDS label update ``y <- (1 - beta) y + beta sig(delta)`` (IDS, arXiv 2401.16335).

    ``deltas`` are detached: labels are targets, never trained through.

    Args:
        labels: ``[B]`` current soft labels.
        deltas: ``[B]`` reward gaps of the *updated* model on the same examples.
        beta: label step size in ``[0, 1]``; 0 keeps the labels (plain MLE), 1 replaces them by
            the model's predictions.

    Returns:
        ``[B]`` new labels, in the dtype and on the device of ``labels``.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    probs = torch.sigmoid(deltas.detach()).to(device=labels.device, dtype=labels.dtype)
    return (1.0 - beta) * labels + beta * probs


class SoftLabelStore:
    """Per-example IDS soft labels, indexed by the example's position in the training set.

    Initialised from hard labels (1.0 = the first response of the pair is preferred; for a
    dataset of (chosen, rejected) pairs every label is 1.0). Kept on the CPU in float32 unless
    another dtype is given; :meth:`get` returns labels on the device of the indices.

    ``state_dict`` / ``load_state_dict`` let a trainer checkpoint and resume the labels together
    with the model.
    """

    def __init__(self, hard_labels: Tensor | Sequence[float], dtype: torch.dtype = torch.float32):
        labels = torch.as_tensor(hard_labels).detach().to(device="cpu", dtype=dtype).clone()
        if labels.dim() != 1:
            raise ValueError(f"hard_labels must be 1-D [N], got shape {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() > 1):
            raise ValueError("labels must lie in [0, 1]")
        self.labels = labels

    @classmethod
    def all_first_preferred(cls, n: int, dtype: torch.dtype = torch.float32) -> SoftLabelStore:
        """A store for ``n`` (chosen, rejected) pairs: every hard label is 1.0."""
        return cls(torch.ones(n, dtype=dtype), dtype=dtype)

    def __len__(self) -> int:
        return self.labels.numel()

    def get(self, indices: Tensor) -> Tensor:
        """Current labels ``[B]`` of the examples ``indices`` (``[B]`` long), on their device."""
        return self.labels[indices.to("cpu", torch.long)].to(indices.device)

    def update(self, indices: Tensor, deltas: Tensor, beta: float) -> None:
        """Apply :func:`update_soft_labels` to the examples ``indices`` with the model's gaps.

        If an index occurs more than once in ``indices``, the last occurrence wins.
        """
        idx = indices.to("cpu", torch.long)
        if idx.shape != deltas.shape:
            raise ValueError(
                f"indices {tuple(idx.shape)} and deltas {tuple(deltas.shape)} differ in shape"
            )
        self.labels[idx] = update_soft_labels(self.labels[idx], deltas.detach().cpu(), beta)

    def state_dict(self) -> dict[str, Any]:
        return {"labels": self.labels.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        labels = torch.as_tensor(state["labels"])
        if labels.shape != self.labels.shape:
            raise ValueError(
                f"soft-label state has shape {tuple(labels.shape)}, "
                f"this store holds {tuple(self.labels.shape)}"
            )
        self.labels = labels.detach().to(device="cpu", dtype=self.labels.dtype).clone()
