"""Supervised fine-tuning: negative log-likelihood of the completion tokens.

Per example the loss is the completion NLL divided by its token count, and the trainer averages
over examples (each demonstration weighs the same, whatever its length). ``token_mean`` instead
weighs every token the same across the batch (the Hugging Face default), computed as
``NLL_i * B / sum(n)`` per example so that the batch mean is the token mean.

``pair_sft`` is the same loss on the chosen completions of preference pairs (TRL's DPO
``loss_type="sft"``; the generation loss of InternVL's MPO, Wang et al. 2024, arXiv
2411.10442), a pairwise loss to mix with the others (``loss.name: mix``). Its default is the
token mean, as TRL's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from prefopt.losses.base import LossConfig, LossOutput, PairLogps, detached
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


@dataclass
class PairSFTConfig(SFTConfig):
    name: str = "pair_sft"
    reduction: str = "token_mean"  # TRL's loss_type "sft": the token mean over the batch


@register_loss("pair_sft", PairSFTConfig)
class PairSFTLoss(SFTLoss):
    """The NLL of the chosen completions of pairs; reference-free, takes none of the pairwise
    settings (f-divergence, LD-DPO, WPO) of ``DPOConfig``."""

    supports_soft_labels: ClassVar[bool] = False
    policy_summaries: ClassVar[frozenset[str]] = frozenset()
    reference_summaries: ClassVar[frozenset[str]] = frozenset()

    def __call__(  # type: ignore[override]
        self, policy: PairLogps, ref: PairLogps | None = None, batch: dict[str, Any] | None = None
    ) -> LossOutput:
        out = super().__call__(policy.chosen, policy.chosen_tokens)
        out.metrics.update(
            detached(**{"logps/chosen": policy.chosen, "logps/rejected": policy.rejected})
        )
        return out
