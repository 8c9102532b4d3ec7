"""GDPO: Group reward-Decoupled normalisation Policy Optimisation (arXiv 2601.05242), the
multi-reward variant of GRPO: each reward is normalised within its prompt's group on its own,
the normalised rewards are summed with their weights, and the sum is normalised over the batch
(TRL's ``multi_objective_aggregation="normalize_then_sum"``):

    A_i = whiten_batch( sum_m w_m (r_im - mean_g(r_m)) / (std_g(r_m) + eps) )

GRPO on the weighted sum instead lets a reward with a large spread drown the others and maps
distinct reward combinations to the same advantage (the paper's sec. 3).

Deliberate choice: whatever the sequence reward holds beyond the weighted rewards (the
missing-EOS penalty, overlong shaping, the clip, a regulariser's penalty in the reward) is one
more reward with weight 1, normalised like the others; with none of these it is constant within
each group and contributes 0. Stds are unbiased, as TRL's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prefopt.registry import register_advantage
from prefopt.rl.estimators.base import AdvantageConfig, broadcast, sequence_rewards
from prefopt.rl.rollout import Rollout


@dataclass
class GDPOConfig(AdvantageConfig):
    name: str = "gdpo"
    eps: float = 1e-4  # added to each std (TRL's 1e-4)

    def validate(self) -> list[str]:
        return [] if self.eps > 0 else [f"advantage.eps must be > 0, got {self.eps}"]


def gdpo_advantages(rewards: Tensor, weights: Tensor, eps: float = 1e-4) -> Tensor:
    """rewards: [N, k, M] (N prompts x k samples x M rewards), weights: [M] -> [N, k]."""
    if rewards.dim() != 3 or rewards.shape[1] < 2:
        raise ValueError(f"gdpo_advantages expects [N, k >= 2, M], got {list(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    normalised = centred / (rewards.std(dim=1, keepdim=True) + eps)
    combined = (normalised * weights).sum(-1)
    return (combined - combined.mean()) / (combined.std() + eps)


@register_advantage("gdpo", GDPOConfig, needs_group=True)
class GDPO:
    def __init__(self, cfg: GDPOConfig):
        self.cfg = cfg

    def __call__(self, rollout: Rollout) -> tuple[Tensor, Tensor | None]:
        k = rollout.group_size
        weighted = rollout.rewards @ rollout.reward_weights  # [R]
        rest = sequence_rewards(rollout).reshape(-1) - weighted
        rewards = torch.cat([rollout.rewards, rest[:, None]], dim=1)
        weights = torch.cat([rollout.reward_weights, rollout.reward_weights.new_ones(1)])
        per_completion = gdpo_advantages(
            rewards.reshape(-1, k, rewards.shape[1]), weights, eps=self.cfg.eps
        )
        return broadcast(per_completion, rollout.mask), None
