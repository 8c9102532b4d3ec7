"""CISPO: Clipped IS-weight Policy Optimization (MiniMax-M1, arXiv 2506.13585, sec. 3.1,
eqs. 4-5): REINFORCE with the importance weight clipped and detached,

    loss_t = -sg(clip(rho_t, 1 - eps_low, 1 + eps_high)) * A_t * log pi(y_t),

so that no token's gradient is ever dropped (PPO's clip zeroes the gradient of a token whose
ratio left the range; CISPO only bounds its weight), aggregated over every token of the batch
(eq. 4's ``1 / sum_i |o_i|``: ``global_token_mean``).

Defaults: the paper sets no lower bound ("eps_low large") and tunes only the upper one without
publishing it; ``ratio_max`` is the cap itself (``1 + eps_high``) and defaults to 5.0, the value
TRL recommends after ScaleRL (arXiv 2510.13786) -- TRL's ``epsilon_high`` for ``cispo`` is
likewise this absolute cap. ``ratio_min`` (null: no lower bound) is the paper's optional
``1 - eps_low``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prefopt.losses.ppo import OnlineLossConfig, OnlinePolicyLoss
from prefopt.registry import register_policy_loss
from prefopt.rl.ppo import per_token_advantages, ratio_metrics


@dataclass
class CISPOConfig(OnlineLossConfig):
    name: str = "cispo"
    ratio_max: float = 5.0  # the IS weight's cap (1 + eps_high)
    ratio_min: float | None = None  # its floor (1 - eps_low); null: none (the paper)
    aggregate: str = "global_token_mean"

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.ratio_max <= 1:
            problems.append(f"loss.ratio_max must be > 1, got {self.ratio_max}")
        if self.ratio_min is not None and not 0 <= self.ratio_min < 1:
            problems.append(f"loss.ratio_min must be in [0, 1) or null, got {self.ratio_min}")
        return problems


@register_policy_loss("cispo", CISPOConfig)
class CISPOLoss(OnlinePolicyLoss):
    cfg: CISPOConfig

    def terms(
        self, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """[B, T] terms ``-sg(clip(rho)) A log pi`` and the ratio metrics (clipfrac: tokens
        whose weight was capped). advantages: [B, T] or [B]."""
        low, high = self.cfg.ratio_min, self.cfg.ratio_max
        ratio = torch.exp(logps - old_logps.detach())
        weight = torch.clamp(ratio, min=low, max=high).detach()
        per_token = -weight * per_token_advantages(advantages.detach(), logps) * logps
        clipped = (ratio > high) | (ratio < (low if low is not None else 0.0))
        return per_token, ratio_metrics(logps, old_logps, mask, ratio, clipped)
