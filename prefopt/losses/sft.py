"""Supervised fine-tuning: negative log-likelihood of the completion tokens.

Per example the loss is the completion NLL divided by its token count, and the trainer averages
over examples (each demonstration weighs the same, whatever its length). ``token_mean`` instead
weighs every token the same across the batch (the Hugging Face default), computed as
``NLL_i * B / sum(n)`` per example so that the batch mean is the token mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from prefopt.losses.base import LossConfig, LossOutput, detached
from prefopt.registry import register_loss


@dataclass
class SFTConfig(LossConfig):
    name: str = "sft"
    reduction: str = "sequence_mean"  # "sequence_mean" | "token_mean"

    def validate(self) -> list[str]:
        if self.reduction not in ("sequence_mean", "token_mean"):
            return [f"loss.reduction must be sequence_mean or token_mean, got {self.reduction!r}"]
        return []


@register_loss("sft", SFTConfig, kind="sft")
class SFTLoss:
    needs_reference: ClassVar[bool] = False

    def __init__(self, config: SFTConfig):
        self.config = config

    def __call__(self, logps: Tensor, n_tokens: Tensor, batch: dict[str, Any] | None = None):
        """logps: [B] summed completion log-probs; n_tokens: [B] completion token counts."""
        nll = -logps
        if self.config.reduction == "token_mean":
            loss = nll * nll.numel() / n_tokens.sum().clamp(min=1)
        else:
            loss = nll / n_tokens.clamp(min=1)
        return LossOutput(loss=loss, metrics=detached(nll_per_token=nll / n_tokens.clamp(min=1)))
