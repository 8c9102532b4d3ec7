"""Per-token regularisers of the online trainer, selected by name (ALGORITHMS.md sections 3, 5).

Each regulariser returns a per-token ``penalty [B, T]``; the trainer adds ``-coef * penalty``
to the token rewards (the config holds ``coef``; the trainer applies it, or the KL
controller's current value for ``kl``). All penalties are 0 on masked positions.

* kl              -- KL-RLHF (Ziegler et al. 2019; Ouyang et al. 2022): ``penalty_t = k(d_t)``
                     with ``d_t = log pi(a_t) - log pi_ref(a_t)`` and k one of k1 / k2 / k3
                     (see ``prefopt.rl.kl``); a fixed or adaptive coefficient.
* pm              -- preference matching, Xiao et al. 2024 (arXiv 2405.16455), the PM
                     regulariser ``R(pi) = -log pi``: ``penalty_t = log pi(a_t)``, so the reward
                     gains ``-coef log pi(a_t)`` (an entropy bonus). Maximising
                     ``E[r - coef log pi]`` gives ``pi ∝ exp(r / coef)``, whose implied
                     preferences are Bradley-Terry's at temperature coef. No reference needed.
* conditional_pm  -- conditional PM as in the authors' released code (``compute_rewards`` in
                     their DeepSpeed-Chat fork), per token:
                     ``penalty_t = log pi(a_t)`` if ``log pi_ref(a_t) > log alpha``,
                     else ``log pi(a_t) - log pi_ref(a_t)`` (KL-like where the reference finds
                     the token unlikely, so the PM entropy bonus cannot push mass onto it).

Settings for conditional PM. The authors' README suggests ``--penalty entropy --ent_ctl 0.1
--alpha_ctl 0.1``, flags their ``main.py`` does not define; their shipped 7B script uses
``kl_ctl 1.0, alpha_ctl 0.01``. We expose both numbers, ``coef`` (their ``kl_ctl``) and
``alpha`` (their ``alpha_ctl``), and default to the shipped script's (1.0, 0.01). The strict
``>`` in the test follows ALGORITHMS.md's reading of their code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from prefopt.registry import register_regulariser
from prefopt.rl.kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_penalty


@dataclass
class RegulariserConfig:
    """Fields every ``regulariser:`` section has."""

    name: str = "kl"
    coef: float = 0.05  # weight of the penalty in the token reward: r_t -= coef * penalty_t

    def validate(self) -> list[str]:
        """Range checks beyond types; each message names the key (``regulariser.<field>``)."""
        return []


@dataclass
class KLRegulariserConfig(RegulariserConfig):
    name: str = "kl"
    coef: float = 0.05  # fixed coef, or the adaptive controller's initial value
    estimator: str = "k1"  # k1 | k2 | k3 (see prefopt.rl.kl)
    adaptive: bool = False  # Ziegler et al.'s adaptive controller
    target: float = 6.0  # adaptive: target KL per sequence (nats); Ziegler et al. use 6
    horizon: int = 10000  # adaptive: steps for a full 20% correction; Ziegler et al. 10000

    def validate(self) -> list[str]:
        problems = []
        if self.estimator not in KL_ESTIMATORS:
            problems.append(
                f"regulariser.estimator must be one of {', '.join(KL_ESTIMATORS)}, "
                f"got {self.estimator!r}"
            )
        if self.adaptive:
            if self.coef <= 0:
                problems.append(f"regulariser.coef must be > 0 when adaptive, got {self.coef}")
            if self.target <= 0:
                problems.append(f"regulariser.target must be > 0, got {self.target}")
            if self.horizon <= 0:
                problems.append(f"regulariser.horizon must be > 0, got {self.horizon}")
        elif self.coef < 0:
            problems.append(f"regulariser.coef must be >= 0, got {self.coef}")
        return problems


@dataclass
class PMConfig(RegulariserConfig):
    name: str = "pm"
    coef: float = 1.0  # temperature beta of pi ∝ exp(r / beta); 1 matches Bradley-Terry exactly

    def validate(self) -> list[str]:
        if self.coef <= 0:
            return [f"regulariser.coef must be > 0, got {self.coef}"]
        return []


@dataclass
class ConditionalPMConfig(PMConfig):
    name: str = "conditional_pm"
    coef: float = 1.0  # the authors' kl_ctl (their shipped 7B script: 1.0)
    alpha: float = 0.01  # the authors' alpha_ctl: PM where pi_ref(a_t) > alpha, else KL

    def validate(self) -> list[str]:
        problems = super().validate()
        if not 0 < self.alpha < 1:
            problems.append(f"regulariser.alpha must be in (0, 1), got {self.alpha}")
        return problems


def _masked(penalty: Tensor, mask: Tensor) -> Tensor:
    # where, not multiply: padding may hold -inf log-probs, and -inf * 0 is NaN
    return torch.where(mask.bool(), penalty, torch.zeros_like(penalty))


class Regulariser:
    """Base class: subclasses implement ``penalty(logp, ref_logp, mask) -> [B, T]``.

    logp, ref_logp: [B, T] log-probs of the sampled tokens under the policy and the reference
    (``ref_logp`` may be None when ``needs_reference`` is False); mask: [B, T] completion mask.
    """

    needs_reference: ClassVar[bool] = True

    def __init__(self, config: RegulariserConfig):
        self.config = config

    def penalty(self, logp: Tensor, ref_logp: Tensor | None, mask: Tensor) -> Tensor:
        raise NotImplementedError

    def _reference(self, ref_logp: Tensor | None) -> Tensor:
        if ref_logp is None:
            raise ValueError(f"regulariser {self.config.name!r} needs reference log-probs")
        return ref_logp


@register_regulariser("kl", KLRegulariserConfig)
class KLRegulariser(Regulariser):
    """KL-RLHF: ``penalty_t = k(logp_t - ref_logp_t)`` with the configured estimator."""

    config: KLRegulariserConfig

    def penalty(self, logp: Tensor, ref_logp: Tensor | None, mask: Tensor) -> Tensor:
        return _masked(kl_penalty(logp, self._reference(ref_logp), self.config.estimator), mask)

    def controller(self) -> FixedKLController | AdaptiveKLController:
        """The coefficient's controller: fixed at ``coef``, or adaptive starting from it."""
        if self.config.adaptive:
            return AdaptiveKLController(self.config.coef, self.config.target, self.config.horizon)
        return FixedKLController(self.config.coef)


@register_regulariser("pm", PMConfig)
class PMRegulariser(Regulariser):
    """PM (Xiao et al. 2024): ``penalty_t = log pi(a_t)``; the reward gains ``-coef log pi``."""

    needs_reference = False

    def penalty(self, logp: Tensor, ref_logp: Tensor | None, mask: Tensor) -> Tensor:
        return _masked(logp, mask)


@register_regulariser("conditional_pm", ConditionalPMConfig)
class ConditionalPMRegulariser(Regulariser):
    """Conditional PM: ``log pi`` where ``log pi_ref > log alpha``, else ``log pi - log pi_ref``."""

    config: ConditionalPMConfig

    def penalty(self, logp: Tensor, ref_logp: Tensor | None, mask: Tensor) -> Tensor:
        ref_logp = self._reference(ref_logp)
        likely = ref_logp > math.log(self.config.alpha)
        return _masked(torch.where(likely, logp, logp - ref_logp), mask)
