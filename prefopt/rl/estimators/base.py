"""What every advantage estimator shares: the config base and the helpers of the sequence-level
(critic-free) family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from prefopt.rl.rollout import Rollout

DEFAULT_ADVANTAGE = "gae"


@dataclass
class AdvantageConfig:
    """The ``advantage:`` section; each estimator's config extends it."""

    name: str = DEFAULT_ADVANTAGE

    def validate(self) -> list[str]:
        """Problems of this section, each naming its full key (``advantage.gamma: ...``)."""
        return []


class AdvantageEstimator(Protocol):
    def __call__(self, rollout: Rollout) -> tuple[Tensor, Tensor | None]:
        """([R, T-1] advantages, 0 off the mask; [R, T-1] returns for a critic, or None)."""
        ...


def sequence_rewards(rollout: Rollout) -> Tensor:
    """[N, k] each completion's sequence reward: its score plus its summed per-token penalty
    terms (the token rewards' row sums), grouped by prompt."""
    return rollout.token_rewards.sum(-1).reshape(-1, rollout.group_size)


def broadcast(per_completion: Tensor, mask: Tensor) -> Tensor:
    """[N, k] (or [R]) one advantage per completion -> [R, T-1] on its completion tokens."""
    return per_completion.reshape(-1, 1) * mask


def unit_interval(section: str, **values: float) -> list[str]:
    """Problems of values that must lie in [0, 1] (discounts, lambdas)."""
    return [
        f"{section}.{key} must be in [0, 1], got {value}"
        for key, value in values.items()
        if not 0 <= value <= 1
    ]
