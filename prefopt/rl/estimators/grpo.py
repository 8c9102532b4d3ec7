"""GRPO's group-normalised advantages: Shao et al. 2024 (arXiv 2402.03300), sec. 4.1.2,
``(r_i - mean(r)) / (std(r) + eps)`` over the k samples of a prompt
(``prefopt.rl.advantages.grpo_advantages``).

``scale_rewards`` is TRL's option of the same name: ``group`` (the paper), ``batch`` (the std of
all N*k rewards, still centred by the group mean; PPO Lite, arXiv 2508.08221) or ``none``
(Dr. GRPO, Liu et al. 2025, arXiv 2503.20783, sec. 3.1: dividing by the group's std weights
easy and hard questions more than the rest). The std is the unbiased sample std, as TRL's.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from prefopt.registry import register_advantage
from prefopt.rl.advantages import GRPO_SCALES, grpo_advantages
from prefopt.rl.estimators.base import AdvantageConfig, broadcast, sequence_rewards
from prefopt.rl.rollout import Rollout


@dataclass
class GRPOConfig(AdvantageConfig):
    name: str = "grpo"
    scale_rewards: str = "group"  # group | batch | none (Dr. GRPO)
    eps: float = 1e-4  # added to the std (TRL's 1e-4)

    def validate(self) -> list[str]:
        problems = []
        if self.scale_rewards not in GRPO_SCALES:
            problems.append(
                f"advantage.scale_rewards: {self.scale_rewards!r} is not one of "
                f"{', '.join(GRPO_SCALES)}"
            )
        if self.eps <= 0:
            problems.append(f"advantage.eps must be > 0, got {self.eps}")
        return problems


@register_advantage("grpo", GRPOConfig, needs_group=True)
class GRPO:
    def __init__(self, cfg: GRPOConfig):
        self.cfg = cfg

    def __call__(self, rollout: Rollout) -> tuple[Tensor, Tensor | None]:
        per_completion = grpo_advantages(
            sequence_rewards(rollout), eps=self.cfg.eps, scale=self.cfg.scale_rewards
        )
        return broadcast(per_completion, rollout.mask), None
