"""Typed inputs and outputs shared by every loss.

Losses are pure functions of tensors: they never see a model. The trainer computes the
log-probabilities (or rewards), calls the loss, and owns the reduction over the batch, gradient
accumulation and logging. A loss returns one value per example so that the reduction is the
trainer's choice (and data-parallel sharding cannot change it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor


@dataclass
class PairLogps:
    """Summed completion log-probabilities of a batch of pairs under one model.

    chosen, rejected: [B] sums of log p(token) over completion tokens (EOS included).
    chosen_tokens, rejected_tokens: [B] number of completion tokens (float, for averages).

    Optional summaries, computed only when a loss asks for them (``prefopt.models.logps``):

    chosen_shared, rejected_shared: [B] the same sums over each completion's first
        ``min(n_c, n_r)`` tokens, the length the pair shares (LD-DPO, arXiv 2409.06411).
    chosen_aligned, rejected_aligned: [B] detached sums of ``log p(token) - log sum_v p(v)^2``
        (WPO's sampling-aligned log-probs, arXiv 2406.11827, eq. 2).
    """

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    chosen_shared: Tensor | None = None
    rejected_shared: Tensor | None = None
    chosen_aligned: Tensor | None = None
    rejected_aligned: Tensor | None = None

    def detach(self) -> PairLogps:
        values: dict[str, Any] = {
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name).detach()
            for f in fields(self)
        }
        return PairLogps(**values)


@dataclass
class LossOutput:
    """loss: [B] per-example losses; metrics: detached tensors ([B] or scalar) logged by name."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class LossConfig:
    """Fields every `loss:` section has."""

    name: str = "sigmoid"

    def validate(self) -> list[str]:
        """Range checks beyond types; each message names the key (``loss.<field>``)."""
        return []


def detached(**metrics: Tensor) -> dict[str, Tensor]:
    return {k: v.detach().float() for k, v in metrics.items()}


def as_float(x: Tensor) -> Tensor:
    return x.to(torch.float32)
