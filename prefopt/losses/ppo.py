"""The online trainer's loss: PPO's clipped surrogate (Schulman et al. 2017, arXiv 1707.06347,
eq. 7) on per-token advantages, as in RLHF (Ziegler et al. 2019; Ouyang et al. 2022;
ALGORITHMS.md section 3), plus the clipped value loss when there is a critic.

The math lives in `prefopt.rl.ppo` (pure tensor functions); this module is the `loss:` section
of the online recipes and the object the trainer calls. How advantages are made (GAE with a
critic, or RLOO / GRPO / REINFORCE++ without one) is `advantage.name`; the per-token penalty
(KL, PM, conditional PM) is `regulariser.name`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from prefopt.losses.base import LossConfig, LossOutput, detached
from prefopt.registry import register_loss
from prefopt.rl.ppo import clipped_policy_loss, clipped_value_loss

PENALTY_PLACES = ("reward", "loss")
AGGREGATES = ("token_mean", "sequence_mean")


@dataclass
class PPOConfig(LossConfig):
    """The `loss:` section of the online recipes (defaults: Huang et al.'s PPO-RLHF details)."""

    name: str = "ppo"
    epochs: int = 4  # optimisation passes over each rollout batch
    minibatch_size: int = 16  # rollouts per optimiser step
    clip: float = 0.2  # epsilon of the clipped ratio
    value_clip: float = 0.2  # the value loss's clip around the rollout-time values
    vf_coef: float = 0.1  # weight of the value loss
    # where the regulariser's per-token penalty goes: "reward" (PPO-RLHF: -coef * penalty in
    # every token's reward) or "loss" (GRPO: coef * mean penalty added to the policy loss)
    penalty_in: str = "reward"
    aggregate: str = "token_mean"  # token_mean (all tokens of a minibatch) | sequence_mean

    def validate(self) -> list[str]:
        problems = []
        for key in ("epochs", "minibatch_size"):
            if getattr(self, key) < 1:
                problems.append(f"loss.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("clip", "value_clip"):
            if not 0 < getattr(self, key) < 1:
                problems.append(f"loss.{key} must be in (0, 1), got {getattr(self, key)}")
        if self.vf_coef < 0:
            problems.append(f"loss.vf_coef must be >= 0, got {self.vf_coef}")
        if self.penalty_in not in PENALTY_PLACES:
            problems.append(f"loss.penalty_in: {self.penalty_in!r} is not one of reward, loss")
        if self.aggregate not in AGGREGATES:
            problems.append(
                f"loss.aggregate: {self.aggregate!r} is not one of {', '.join(AGGREGATES)}"
            )
        return problems


@register_loss("ppo", PPOConfig, kind="online")
class PPOLoss:
    """Clipped surrogate ``max(-A rho, -A clip(rho, 1-eps, 1+eps))`` over completion tokens."""

    def __init__(self, cfg: PPOConfig):
        self.cfg = cfg

    def __call__(
        self, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor
    ) -> LossOutput:
        """All ``[R, T]``: the current and rollout-time log-probs of each token, its advantage
        and the completion mask. Returns the scalar loss and `policy/*` metrics."""
        loss, metrics = clipped_policy_loss(
            logps, old_logps, advantages, mask, clip=self.cfg.clip, aggregate=self.cfg.aggregate
        )
        return LossOutput(loss, detached(**{f"policy/{k}": v for k, v in metrics.items()}))

    def value_loss(
        self, values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor
    ) -> LossOutput:
        loss, metrics = clipped_value_loss(
            values, old_values, returns, mask, clip=self.cfg.value_clip
        )
        return LossOutput(loss, detached(**{f"val/{k}": v for k, v in metrics.items()}))
