"""GAE over a critic's values: Schulman et al. 2016 (arXiv 1506.02438), eqs. 11-16, in the
PPO-RLHF form of Ziegler et al. 2019 (``prefopt.rl.advantages.gae``); advantages whitened over
the batch's completion tokens (Huang et al., arXiv 2403.17031)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from prefopt.registry import register_advantage
from prefopt.rl.advantages import gae, masked_whiten
from prefopt.rl.estimators.base import AdvantageConfig, unit_interval
from prefopt.rl.rollout import Rollout


@dataclass
class GAEConfig(AdvantageConfig):
    name: str = "gae"
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE's lambda
    whiten: bool = True  # advantages whitened over the batch's completion tokens

    def validate(self) -> list[str]:
        return unit_interval("advantage", gamma=self.gamma, lam=self.lam)


@register_advantage("gae", GAEConfig, needs_critic=True)
class GAE:
    def __init__(self, cfg: GAEConfig):
        self.cfg = cfg

    def __call__(self, rollout: Rollout) -> tuple[Tensor, Tensor | None]:
        assert rollout.old_values is not None, "GAE needs the critic's values"
        adv, returns = gae(
            rollout.token_rewards, rollout.old_values, rollout.mask, self.cfg.gamma, self.cfg.lam
        )
        return (masked_whiten(adv, rollout.mask) if self.cfg.whiten else adv), returns
