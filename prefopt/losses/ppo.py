"""The online trainer's loss: PPO's clipped surrogate (Schulman et al. 2017, arXiv 1707.06347,
eq. 7) on per-token advantages, as in RLHF (Ziegler et al. 2019; Ouyang et al. 2022;
ALGORITHMS.md section 3), plus the clipped value loss when there is a critic.

Policy-loss forms are the ``online`` entries of the loss registry
(`prefopt.registry.register_policy_loss`): ``loss.name`` picks one, and every form shares the
fields of `OnlineLossConfig` (epochs, minibatches, where the penalty goes, the aggregation) and
the value loss of `OnlinePolicyLoss`. This module holds the base and PPO's clipped surrogate
with its options: clip-higher (DAPO), two-sided clipping (``delta``) and the sequence-level ratio
(GSPO). The math lives in `prefopt.rl.ppo` (pure tensor functions). How advantages are made is
``advantage.name`` (`prefopt.registry.ADVANTAGES`); the per-token penalty ``regulariser.name``.

``loss.aggregate`` is one of `prefopt.rl.ppo.AGGREGATES`: ``token_mean`` (TRL's bnpo),
``global_token_mean`` (DAPO, TRL's dapo), ``sequence_mean`` (the GRPO paper, TRL's grpo) or
``constant`` (Dr. GRPO, TRL's dr_grpo; ``loss.constant`` null: ``rollout.max_new_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from prefopt.losses.base import LossConfig, LossOutput, detached
from prefopt.registry import register_policy_loss
from prefopt.rl.ppo import (
    AGGREGATES,
    RATIO_LEVELS,
    clipped_policy_terms,
    clipped_value_loss,
    token_aggregate,
)

PENALTY_PLACES = ("reward", "loss")


@dataclass
class OnlineLossConfig(LossConfig):
    """Fields every policy-loss form's ``loss:`` section has (defaults: Huang et al.'s PPO-RLHF
    details, arXiv 2403.17031)."""

    name: str = "ppo"
    epochs: int = 4  # optimisation passes over each rollout batch
    minibatch_size: int = 16  # rollouts per optimiser step
    value_clip: float = 0.2  # the value loss's clip around the rollout-time values
    vf_coef: float = 0.1  # weight of the value loss
    # where the regulariser's per-token penalty goes: "reward" (PPO-RLHF: -coef * penalty in
    # every token's reward) or "loss" (GRPO: coef * mean penalty added to the policy loss)
    penalty_in: str = "reward"
    aggregate: str = "token_mean"  # token_mean | global_token_mean | sequence_mean | constant
    constant: float | None = None  # aggregate constant's divisor; null: rollout.max_new_tokens

    def validate(self) -> list[str]:
        problems = []
        for key in ("epochs", "minibatch_size"):
            if getattr(self, key) < 1:
                problems.append(f"loss.{key} must be >= 1, got {getattr(self, key)}")
        if not 0 < self.value_clip < 1:
            problems.append(f"loss.value_clip must be in (0, 1), got {self.value_clip}")
        if self.vf_coef < 0:
            problems.append(f"loss.vf_coef must be >= 0, got {self.vf_coef}")
        if self.penalty_in not in PENALTY_PLACES:
            problems.append(f"loss.penalty_in: {self.penalty_in!r} is not one of reward, loss")
        if self.aggregate not in AGGREGATES:
            problems.append(
                f"loss.aggregate: {self.aggregate!r} is not one of {', '.join(AGGREGATES)}"
            )
        if self.constant is not None and (self.aggregate != "constant" or self.constant <= 0):
            problems.append(
                f"loss.constant ({self.constant}) is the divisor of loss.aggregate: constant "
                "and must be > 0 (null: rollout.max_new_tokens)"
            )
        return problems


class OnlinePolicyLoss:
    """Base of the policy-loss forms: `terms` gives the per-token loss terms and metrics, the
    base aggregates them (``loss.aggregate``), names the metrics ``policy/*`` and owns the
    clipped value loss of a critic."""

    # the per-token loss terms can be weighted (``rollout.tis_cap``'s importance weights)
    takes_token_weights: ClassVar[bool] = True

    def __init__(self, cfg: OnlineLossConfig):
        self.cfg = cfg

    def terms(
        self, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """([R, T] per-token loss terms, detached scalar metrics)."""
        raise NotImplementedError

    def __call__(
        self,
        logps: Tensor,
        old_logps: Tensor,
        advantages: Tensor,
        mask: Tensor,
        tokens: Tensor | float | None = None,
        token_weights: Tensor | None = None,
    ) -> LossOutput:
        """All ``[R, T]``: the current and rollout-time log-probs of each token, its advantage
        and the completion mask; ``tokens`` the divisor of ``global_token_mean``;
        ``token_weights`` (detached, e.g. truncated importance weights) multiply each token's
        loss term before the aggregation (whose divisor stays the mask's). Returns the scalar
        loss and `policy/*` metrics."""
        per_token, metrics = self.terms(logps, old_logps, advantages, mask)
        if token_weights is not None:
            per_token = per_token * token_weights.detach()
        loss = token_aggregate(per_token, mask, self.cfg.aggregate, self.cfg.constant, tokens)
        return LossOutput(loss, detached(**{f"policy/{k}": v for k, v in metrics.items()}))

    def value_loss(
        self, values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor
    ) -> LossOutput:
        loss, metrics = clipped_value_loss(
            values, old_values, returns, mask, clip=self.cfg.value_clip
        )
        return LossOutput(loss, detached(**{f"val/{k}": v for k, v in metrics.items()}))


@dataclass
class PPOConfig(OnlineLossConfig):
    """PPO's clipped surrogate; with ``clip_high`` DAPO's clip-higher (eps_high 0.28 in the
    paper), with ``delta`` two-sided clipping, with ``ratio: sequence`` GSPO's ratio."""

    name: str = "ppo"
    clip: float = 0.2  # epsilon of the clipped ratio (the lower one when clip_high is set)
    clip_high: float | None = None  # the upper epsilon; null: clip
    delta: float | None = None  # cap of the unclipped ratio (two-sided clipping); null: off
    ratio: str = "token"  # token | sequence (GSPO)

    def validate(self) -> list[str]:
        problems = super().validate()
        for key in ("clip", "clip_high"):
            value = getattr(self, key)
            if value is not None and not 0 < value < 1:
                problems.append(f"loss.{key} must be in (0, 1), got {value}")
        high = self.clip if self.clip_high is None else self.clip_high
        if self.delta is not None and self.delta <= 1 + high:
            problems.append(
                f"loss.delta ({self.delta}) must be > 1 + the upper clip ({1 + high}): below it "
                "the cap would bind inside the clip range"
            )
        if self.ratio not in RATIO_LEVELS:
            problems.append(f"loss.ratio: {self.ratio!r} is not one of {', '.join(RATIO_LEVELS)}")
        return problems


@register_policy_loss("ppo", PPOConfig)
class PPOLoss(OnlinePolicyLoss):
    """Clipped surrogate ``max(-A rho, -A clip(rho, 1-eps, 1+eps_high))`` over completion
    tokens (`prefopt.rl.ppo.clipped_policy_terms`)."""

    cfg: PPOConfig

    def terms(
        self, logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.cfg
        return clipped_policy_terms(
            logps, old_logps, advantages, mask, c.clip, c.clip_high, c.delta, c.ratio
        )
