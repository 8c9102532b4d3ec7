"""RLOO: Ahmadian et al. 2024 (arXiv 2402.14740), eq. 6: each completion's sequence reward
minus the mean of the other k-1 of its prompt (``prefopt.rl.advantages.rloo_advantages``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from prefopt.registry import register_advantage
from prefopt.rl.advantages import rloo_advantages
from prefopt.rl.estimators.base import AdvantageConfig, broadcast, sequence_rewards
from prefopt.rl.rollout import Rollout


@dataclass
class RLOOConfig(AdvantageConfig):
    name: str = "rloo"


@register_advantage("rloo", RLOOConfig, needs_group=True)
class RLOO:
    def __init__(self, cfg: RLOOConfig):
        self.cfg = cfg

    def __call__(self, rollout: Rollout) -> tuple[Tensor, Tensor | None]:
        return broadcast(rloo_advantages(sequence_rewards(rollout)), rollout.mask), None
