"""Typed inputs and outputs shared by every loss.

Losses are pure functions of tensors: they never see a model. The trainer computes the
log-probabilities (or rewards), calls the loss, and owns the reduction over the batch, gradient
accumulation and logging. A loss returns one value per example so that the reduction is the
trainer's choice (and data-parallel sharding cannot change it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class PairLogps:
    """Summed completion log-probabilities of a batch of pairs under one model.

    chosen, rejected: [B] sums of log p(token) over completion tokens (EOS included).
    chosen_tokens, rejected_tokens: [B] number of completion tokens (float, for averages).
    """

    chosen: Tensor
    rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor

    def detach(self) -> PairLogps:
        return PairLogps(
            self.chosen.detach(),
            self.rejected.detach(),
            self.chosen_tokens.detach(),
            self.rejected_tokens.detach(),
        )


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
