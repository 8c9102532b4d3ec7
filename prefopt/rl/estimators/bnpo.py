"""BNPO: Beta Normalization Policy Optimization (Xiao, Zhang and Cao 2025, arXiv 2506.02864):
the group's mean reward as baseline, divided by the density of a Beta distribution whose
parameters follow the batch,

    A(q, o) = (R(q, o) - p(q)) / f_N(p(q); alpha, beta),

``p(q)`` the mean reward of the prompt's k samples (the Monte Carlo estimate of its success
probability under binary rewards) and ``f_N`` the Beta(alpha, beta) density. The parameters are
set at every batch from the distribution of ``p`` over its prompts: a Beta(a, b) fitted by the
method of moments, ``a = m (m (1 - m) / v - 1)``, ``b = (1 - m) (m (1 - m) / v - 1)`` (m, v
the mean and unbiased variance of the batch's p), and the variance-minimising choice
``alpha = 1 + a / 3``, ``beta = 1 + b / 3``, each at least 1. alpha = beta = 1 is REINFORCE
with a baseline; alpha = beta = 1.5 is GRPO up to the constant pi / 8 (``sqrt(p (1 - p))`` is
the group std of binary rewards). The formulas are the authors' code's
(changyi7231/BNPO, ``recipe/bnpo/src/bnpo_ray_trainer.py``, ``compute_bnpo_outcome_advantage``),
which matches the abstract; the paper's equation numbers were not checked here (only its
abstract could be read). TRL's ``loss_type="bnpo"`` is not this: it is only the token-level
aggregation of GRPO's loss (``loss.aggregate: token_mean``).

Non-binary rewards. The theory is for rewards in {0, 1}; the authors apply it to any reward by
the affine map ``(R - reward_min) / (reward_max - reward_min)`` (their ``min_value`` 0 and
``max_value`` 1, the defaults here) and refuse a group mean outside [0, 1]. ``reward_min`` or
``reward_max`` null takes the batch's smallest or largest sequence reward instead (a deviation
for unbounded scores such as a reward model's: the map then changes from batch to batch).

Edge cases, written down: fewer than two prompts, or no spread between their p (the moments
then fix no Beta), give alpha = beta = 1 (the authors' one-prompt case; with zero spread their
code gives NaN); ``1 / f_N`` is capped at ``max_weight`` (their 1e6: f_N is 0 at p = 0 or 1 when
alpha or beta exceeds 1, where ``R - p`` is 0 anyway). The statistics are of the batch on this
process. The paper's advantage decomposition for several rewards is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prefopt.registry import register_advantage
from prefopt.rl.estimators.base import AdvantageConfig, broadcast, sequence_rewards
from prefopt.rl.rollout import Rollout


@dataclass
class BNPOConfig(AdvantageConfig):
    name: str = "bnpo"
    reward_min: float | None = 0.0  # maps to 0 (the authors' min_value); null: the batch's min
    reward_max: float | None = 1.0  # maps to 1 (their max_value); null: the batch's max
    max_weight: float = 1e6  # cap of 1 / f_N (the authors')

    def validate(self) -> list[str]:
        problems = []
        low, high = self.reward_min, self.reward_max
        if low is not None and high is not None and not low < high:
            problems.append(f"advantage.reward_min ({low}) must be < advantage.reward_max ({high})")
        if self.max_weight <= 0:
            problems.append(f"advantage.max_weight must be > 0, got {self.max_weight}")
        return problems


def beta_parameters(success: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha, beta) of the normalising Beta from the batch's per-prompt means ``success`` [N],
    each in [0, 1]: the method of moments' (a, b), then ``max(1 + a / 3, 1)`` and
    ``max(1 + b / 3, 1)``; (1, 1) with fewer than two prompts or no spread."""
    one = success.new_ones(())
    if success.numel() < 2 or not success.var() > 0:
        return one, one
    mean, var = success.mean(), success.var()
    spread = mean * (1 - mean) / var - 1
    return (1 + spread * mean / 3).clamp(min=1), (1 + spread * (1 - mean) / 3).clamp(min=1)


def beta_density(x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """The Beta(alpha, beta) density at x in [0, 1] (0 ** 0 = 1 at the ends)."""
    log_norm = torch.lgamma(alpha) + torch.lgamma(beta) - torch.lgamma(alpha + beta)
    return torch.exp(torch.xlogy(alpha - 1, x) + torch.xlogy(beta - 1, 1 - x) - log_norm)


def bnpo_advantages(
    rewards: Tensor,
    reward_min: float | None = 0.0,
    reward_max: float | None = 1.0,
    max_weight: float = 1e6,
) -> Tensor:
    """rewards: [N, k] sequence rewards grouped by prompt -> [N, k] BNPO advantages, in the
    units of the mapped rewards ``(R - reward_min) / (reward_max - reward_min)``."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"bnpo_advantages expects [N, k >= 2], got {list(rewards.shape)}")
    low = rewards.min() if reward_min is None else torch.as_tensor(reward_min)
    high = rewards.max() if reward_max is None else torch.as_tensor(reward_max)
    if not high > low:  # every reward equal (a null bound): no signal
        return torch.zeros_like(rewards)
    mapped = (rewards - low.to(rewards)) / (high - low).to(rewards)
    success = mapped.mean(dim=1)
    if ((success < 0) | (success > 1)).any():
        worst = rewards.mean(dim=1)[(success < 0) | (success > 1)][0].item()
        raise ValueError(
            f"advantage.name bnpo: a prompt's mean reward {worst:.4g} lies outside "
            f"[advantage.reward_min, advantage.reward_max] = [{float(low):g}, {float(high):g}]; "
            "set them to the reward's range, or null for the batch's"
        )
    alpha, beta = beta_parameters(success)
    weight = (1 / beta_density(success, alpha, beta)).clamp(max=max_weight)
    return weight[:, None] * (mapped - success[:, None])


@register_advantage("bnpo", BNPOConfig, needs_group=True)
class BNPO:
    def __init__(self, cfg: BNPOConfig):
        self.cfg = cfg

    def __call__(self, rollout: Rollout) -> tuple[Tensor, Tensor | None]:
        c = self.cfg
        per_completion = bnpo_advantages(
            sequence_rewards(rollout), c.reward_min, c.reward_max, c.max_weight
        )
        return broadcast(per_completion, rollout.mask), None
