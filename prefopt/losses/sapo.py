"""SAPO: Soft Adaptive Policy Optimization (Gao et al. 2025, arXiv 2511.20347, eqs. 5-7): the
hard clip replaced by a smooth gate of the ratio,

    f(rho) = sigmoid(tau (rho - 1)) * 4 / tau,   loss_t = -f(rho_t) A_t,

whose gradient ``sigmoid'(tau (rho - 1)) * 4`` is 1 on policy and decays smoothly off policy,
with a temperature per advantage sign: ``tau_pos`` for A > 0 and ``tau_neg`` for A <= 0
(negative advantages spread their gradient over the whole vocabulary, so they are damped
faster). Defaults: the paper's and TRL's, tau_pos 1.0, tau_neg 1.05; aggregated per sequence
then over sequences (TRL's ``sapo``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prefopt.losses.ppo import OnlineLossConfig, OnlinePolicyLoss
from prefopt.registry import register_policy_loss
from prefopt.rl.ppo import per_token_advantages, ratio_metrics


@dataclass
class SAPOConfig(OnlineLossConfig):
    name: str = "sapo"
    tau_pos: float = 1.0  # the gate's temperature for positive advantages
    tau_neg: float = 1.05  # ... and for the others
    aggregate: str = "sequence_mean"

    def validate(self) -> list[str]:
        problems = super().validate()
        for key in ("tau_pos", "tau_neg"):
            if getattr(self, key) <= 0:
                problems.append(f"loss.{key} must be > 0, got {getattr(self, key)}")
        return problems


@register_policy_loss("sapo", SAPOConfig)
class SAPOLoss(OnlinePolicyLoss):
    cfg: SAPOConfig

    def terms(
        self, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """[B, T] terms ``-sigmoid(tau (rho - 1)) 4 / tau * A`` and the ratio metrics
        (clipfrac: tokens whose gate's slope fell below one half). advantages: [B, T] or [B]."""
        advantages = per_token_advantages(advantages.detach(), logps)
        ratio = torch.exp(logps - old_logps.detach())
        tau = torch.where(advantages > 0, self.cfg.tau_pos, self.cfg.tau_neg).to(logps.dtype)
        gate = torch.sigmoid(tau * (ratio - 1))
        slope = (4 * gate * (1 - gate)).detach()  # d(gate 4 / tau) / d rho
        return -gate * 4 / tau * advantages, ratio_metrics(
            logps, old_logps, mask, ratio, slope < 0.5
        )
