"""GMPO: Geometric-Mean Policy Optimization (Zhao et al. 2025, arXiv 2507.20673, eq. 4): the
geometric mean of the token-level clipped objectives instead of GRPO's arithmetic mean,

    J_i = ( prod_t min(rho_t A_i, clip(rho_t, e^-eps_low, e^eps_high) A_i) ) ** (1 / |o_i|)

computed in log space as ``A_i exp(mean_t sgn(A_i) min(sgn(A_i) log rho_t, sgn(A_i)
clip(log rho_t, -eps_low, eps_high)))``: the clip is token-level and in log space, so one
outlier token moves a sequence's ratio by only ``1/|o|`` of its log-ratio. Defaults: the
paper's clipping range (e^-0.4, e^0.4); one advantage per sequence (the mean of its tokens'),
averaged over sequences (``sequence_mean``), as the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prefopt.losses.ppo import OnlineLossConfig, OnlinePolicyLoss
from prefopt.registry import register_policy_loss
from prefopt.rl.advantages import masked_mean
from prefopt.rl.ppo import per_token_advantages, ratio_metrics


@dataclass
class GMPOConfig(OnlineLossConfig):
    name: str = "gmpo"
    clip: float = 0.4  # log-space clip below (the ratio's floor is e^-clip)
    clip_high: float | None = None  # log-space clip above; null: clip
    aggregate: str = "sequence_mean"

    def validate(self) -> list[str]:
        problems = super().validate()
        for key in ("clip", "clip_high"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                problems.append(f"loss.{key} must be > 0, got {value}")
        return problems


@register_policy_loss("gmpo", GMPOConfig)
class GMPOLoss(OnlinePolicyLoss):
    cfg: GMPOConfig

    def terms(
        self, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """[B, T] the per-sequence loss ``-A_i s_i`` on each token of sequence i (so that
        ``sequence_mean`` averages it over sequences), ``s_i`` the geometric mean of the clipped
        token ratios, and the ratio metrics (``ratio_mean``: of s). advantages: [B, T] or [B]."""
        low = self.cfg.clip
        high = low if self.cfg.clip_high is None else self.cfg.clip_high
        advantages = per_token_advantages(advantages.detach(), logps)
        sequence_advantage = masked_mean(advantages, mask, dim=1).unsqueeze(-1)  # [B, 1]
        sign = torch.sign(sequence_advantage)
        log_ratio = logps - old_logps.detach()
        clamped = torch.clamp(log_ratio, -low, high)
        pessimistic = sign * torch.minimum(sign * log_ratio, sign * clamped)
        ratio = torch.exp(masked_mean(pessimistic, mask, dim=1)).unsqueeze(-1)  # [B, 1]
        clipped = (sign * clamped < sign * log_ratio) & (clamped != log_ratio)
        per_sequence = (-sequence_advantage * ratio).expand_as(logps)
        return per_sequence, ratio_metrics(logps, old_logps, mask, ratio, clipped)
