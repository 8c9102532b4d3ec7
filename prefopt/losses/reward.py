"""Bradley-Terry reward-model loss (ALGORITHMS.md section 2).

``loss = -logsig(r_c - r_r - m) + c * (r_c + r_r)^2`` per pair, with an optional per-pair margin
``m`` (from the data's ``margin`` field, when ``use_margin``) and a centring coefficient ``c``
(Eisenstein et al. 2023 use 0.01) that keeps rewards near zero mean.

With soft labels ``y`` (iterative data smoothing, Zhu et al. 2024, arXiv 2401.16335, section 4),
the first term becomes ``-[y logsig(d) + (1-y) logsig(-d)]``, ``d = r_c - r_r - m``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from prefopt.losses.base import LossConfig, LossOutput, detached
from prefopt.registry import register_loss


@dataclass
class BradleyTerryConfig(LossConfig):
    name: str = "bradley_terry"
    use_margin: bool = False  # subtract the data's per-pair margin m (Llama-2 style)
    center_coef: float = 0.0  # c in c * (r_c + r_r)^2; 0.01 is common

    def validate(self) -> list[str]:
        if self.center_coef < 0:
            return [f"loss.center_coef must be >= 0, got {self.center_coef}"]
        return []


@register_loss("bradley_terry", BradleyTerryConfig, kind="reward")
class BradleyTerryLoss:
    needs_reference: ClassVar[bool] = False
    supports_soft_labels: ClassVar[bool] = True

    def __init__(self, config: BradleyTerryConfig):
        self.config = config

    def __call__(
        self, chosen: Tensor, rejected: Tensor, batch: dict[str, Any] | None = None
    ) -> LossOutput:
        """chosen, rejected: [B] scalar rewards."""
        batch = batch or {}
        d = chosen - rejected
        if self.config.use_margin and "margin" in batch:
            d = d - batch["margin"].to(d)
        labels = batch.get("soft_labels")
        if labels is None:
            loss = -F.logsigmoid(d)
        else:
            y = labels.to(d)
            loss = -(y * F.logsigmoid(d) + (1 - y) * F.logsigmoid(-d))
        if self.config.center_coef > 0:
            loss = loss + self.config.center_coef * (chosen + rejected) ** 2
        margin = chosen - rejected
        return LossOutput(
            loss=loss,
            metrics=detached(
                accuracy=(margin > 0).float(),
                margin=margin,
                reward_chosen=chosen,
                reward_rejected=rejected,
            ),
        )
