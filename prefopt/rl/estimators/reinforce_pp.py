"""REINFORCE++ (Hu 2025, arXiv 2501.03262, sec. 3): the discounted return-to-go of the token
rewards (PPO's per-token KL penalty plus the score at the last token), whitened over every
valid token of the batch (``prefopt.rl.advantages.reinforce_pp_advantages``).

REINFORCE++-baseline (the same paper's group variant) first subtracts the mean score of the
prompt's k samples from each completion's last-token reward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from prefopt.registry import register_advantage
from prefopt.rl.advantages import reinforce_pp_advantages, reinforce_pp_baseline_scores
from prefopt.rl.estimators.base import AdvantageConfig, unit_interval
from prefopt.rl.rollout import Rollout


@dataclass
class ReinforcePPConfig(AdvantageConfig):
    name: str = "reinforce_pp"
    gamma: float = 1.0  # discount of the return-to-go

    def validate(self) -> list[str]:
        return unit_interval("advantage", gamma=self.gamma)


@dataclass
class ReinforcePPBaselineConfig(ReinforcePPConfig):
    name: str = "reinforce_pp_baseline"


@register_advantage("reinforce_pp", ReinforcePPConfig)
class ReinforcePP:
    def __init__(self, cfg: ReinforcePPConfig):
        self.cfg = cfg

    def __call__(self, rollout: Rollout) -> tuple[Tensor, Tensor | None]:
        return reinforce_pp_advantages(rollout.token_rewards, rollout.mask, self.cfg.gamma), None


@register_advantage("reinforce_pp_baseline", ReinforcePPBaselineConfig, needs_group=True)
class ReinforcePPBaseline(ReinforcePP):
    def __call__(self, rollout: Rollout) -> tuple[Tensor, Tensor | None]:
        scores = rollout.scores
        centred = reinforce_pp_baseline_scores(scores.reshape(-1, rollout.group_size))
        shifted = rollout.token_rewards.clone()
        rows = torch.arange(shifted.shape[0], device=shifted.device)
        shifted[rows, rollout.last_column] += centred.reshape(-1) - scores
        return reinforce_pp_advantages(shifted, rollout.mask, self.cfg.gamma), None
