"""VESPO: Variational sEquence-level Soft Policy Optimization (Shen et al. 2026, arXiv
2602.10693): REINFORCE whose gradient on each sequence is reshaped by a gamma kernel of the
*sequence-level* importance weight, with no clipping and no length normalisation,

    W_i = prod_t pi(y_t) / pi_old(y_t) = exp(sum_t log rho_{i,t})          (not GSPO's mean)
    phi(W) = W^k exp(lambda (1 - W))   (so phi(1) = 1; k, lambda per advantage sign)
    loss_t = -sg(phi(W_i)) A_{i,t} log pi(y_t),

so the gradient is ``phi(W_i) A grad log pi``: on policy it is REINFORCE's, a stale sequence
(W far from 1 on either side) is faded out smoothly, the kernel peaking at W = k / lambda.
Positive advantages use ``k_pos`` 2, ``lambda_pos`` 3; the others ``k_neg`` 3, ``lambda_neg`` 2
(the authors' scripts, FloyedShen/VESPO ``recipe/vespo/run``, and TRL 1.16's ``vespo_*``
defaults); a zero advantage counts as positive, as theirs. The kernel is the paper's deployed
form as the authors' code and TRL's docstring write it (``e^lambda W^k e^{-lambda W}``); its
equation number in the paper was not checked here (only the abstract was reachable).

Numerics, TRL's: each token's log-ratio is clamped to [-20, 20] before the sum and the sum to
[log 1e-8, 20]; a non-finite weight becomes 0. The authors' code clamps only the sum: the two
differ only where one token's log-ratio exceeds 20 in size. With one advantage per completion
the sign is the sequence's; with per-token advantages (a critic) it is that of their mean over
the sequence. Aggregation: ``global_token_mean`` (TRL's ``vespo``; the authors' verl default
``token-mean``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from prefopt.losses.ppo import OnlineLossConfig, OnlinePolicyLoss
from prefopt.registry import register_policy_loss
from prefopt.rl.advantages import masked_mean
from prefopt.rl.ppo import per_token_advantages, ratio_metrics

TOKEN_LOG_RATIO_CLAMP = 20.0
SEQUENCE_LOG_RATIO_RANGE = (math.log(1e-8), 20.0)


@dataclass
class VESPOConfig(OnlineLossConfig):
    name: str = "vespo"
    k_pos: float = 2.0  # the kernel's power for A >= 0 (how fast W < 1 is faded)
    lambda_pos: float = 3.0  # its decay for A >= 0 (how fast W > 1 is faded)
    k_neg: float = 3.0  # ... for A < 0
    lambda_neg: float = 2.0
    aggregate: str = "global_token_mean"

    def validate(self) -> list[str]:
        problems = super().validate()
        for key in ("k_pos", "k_neg"):
            if getattr(self, key) < 0:
                problems.append(f"loss.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("lambda_pos", "lambda_neg"):
            if getattr(self, key) <= 0:
                problems.append(f"loss.{key} must be > 0, got {getattr(self, key)}")
        return problems


def gamma_weights(
    log_ratio: Tensor,
    mask: Tensor,
    positive: Tensor,
    k: tuple[float, float],
    lam: tuple[float, float],
) -> tuple[Tensor, Tensor]:
    """The sequence weight W and its kernel phi(W), both [B, 1] and detached.

    log_ratio, mask: [B, T]; positive: [B, 1] bool (the sequence's advantage is >= 0);
    k, lam: (for positive, for the others).
    """
    with torch.no_grad():
        clamped = log_ratio.clamp(-TOKEN_LOG_RATIO_CLAMP, TOKEN_LOG_RATIO_CLAMP)
        log_w = (clamped * mask).sum(-1, keepdim=True).clamp(*SEQUENCE_LOG_RATIO_RANGE)
        k_seq = torch.where(positive, k[0], k[1]).to(log_w.dtype)
        lam_seq = torch.where(positive, lam[0], lam[1]).to(log_w.dtype)
        w = torch.exp(log_w)
        phi = torch.exp(lam_seq + k_seq * log_w - lam_seq * w)
        return w, torch.nan_to_num(phi, nan=0.0, posinf=0.0, neginf=0.0)


@register_policy_loss("vespo", VESPOConfig)
class VESPOLoss(OnlinePolicyLoss):
    cfg: VESPOConfig

    def terms(
        self, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """[B, T] terms ``-sg(phi(W)) A log pi`` and the ratio metrics: ``ratio_mean`` of W,
        ``clipfrac`` the tokens of sequences whose weight phi fell below one half, ``phi_mean``.
        advantages: [B, T] or [B]."""
        c = self.cfg
        advantages = per_token_advantages(advantages.detach(), logps)
        positive = masked_mean(advantages, mask, dim=1).unsqueeze(-1) >= 0
        log_ratio = logps.detach() - old_logps.detach()
        w, phi = gamma_weights(
            log_ratio, mask, positive, (c.k_pos, c.k_neg), (c.lambda_pos, c.lambda_neg)
        )
        metrics = ratio_metrics(logps, old_logps, mask, w, phi < 0.5)
        metrics["phi_mean"] = phi.mean()  # over sequences, as TRL's vespo/phi_seq_mean
        return -phi * advantages * logps, metrics
