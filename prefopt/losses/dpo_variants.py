"""Pairwise losses on DPO's margin ``z = beta (s_c - s_r)`` besides those of ``dpo.py``.

``s`` are the log-ratios ``u = l(y) - l_ref(y)``, or f-DPO's ``f'(exp u)`` when
``loss.f_divergence`` is set: each loss here takes every setting of ``DPOConfig``.

* exo_pair     -- EXO, Ji et al. 2024 (arXiv 2402.00856), eq. 16 for K = 2: the reverse KL
                  ``KL(q || p)`` between the model's preference distribution
                  ``q = (sig(z), sig(-z))`` and the smoothed label ``p = (1 - eps, eps)``:
                  ``sig(z) (logsig(z) - log(1-eps)) + sig(-z) (logsig(-z) - log eps)``.
* discopop     -- DiscoPOP (the discovered "log-ratio modulated loss"), Lu et al. 2024
                  (arXiv 2406.08414), eq. 5: ``(1 - m) (-logsig(z)) + m exp(-z)`` with
                  ``m = sig(z / tau)``.
* sigmoid_norm -- DPO on per-token log-ratios, ``-logsig(beta (s_c/n_c - s_r/n_r))``: the
                  length-normalised DPO of Tulu 3, Lambert et al. 2024 (arXiv 2411.15124),
                  TRL's ``sigmoid_norm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.losses.dpo import F_DIVERGENCE_SETTINGS, DPOConfig, PairwiseLoss
from prefopt.registry import register_loss


@dataclass
class EXOConfig(DPOConfig):
    name: str = "exo_pair"
    # eps of the smoothed label p = (1 - eps, eps); EXO's recommended 1e-3. eps = 0 makes
    # log(eps) infinite, so it must be > 0 (TRL refuses 0 too)
    label_smoothing: float = 1e-3

    def validate(self) -> list[str]:
        problems = super().validate()
        if not 0 < self.label_smoothing < 0.5:
            problems.append(f"loss.label_smoothing must be in (0, 0.5), got {self.label_smoothing}")
        return problems


@dataclass
class DiscoPOPConfig(DPOConfig):
    name: str = "discopop"
    tau: float = 0.05  # temperature of the modulation sig(z / tau); the paper's 0.05

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.tau <= 0:
            problems.append(f"loss.tau must be > 0, got {self.tau}")
        return problems


@register_loss("exo_pair", EXOConfig)
class EXOPairLoss(PairwiseLoss):
    """EXO-pref for pairs (Ji et al. 2024, eq. 16): ``KL(q || p)`` over {chosen, rejected},
    ``q = softmax`` of the implicit rewards, ``p = (1 - eps, eps)``. It is 0 exactly when
    ``z = log((1-eps)/eps)`` (6.9 at eps = 1e-3), unlike DPO which keeps pushing ``z`` up."""

    settings = F_DIVERGENCE_SETTINGS

    def pair_loss(self, policy, ref, batch):
        eps = self.config.label_smoothing  # type: ignore[attr-defined]
        z = self.logits(policy, ref)
        chosen = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
        rejected = torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps))
        return chosen + rejected


@register_loss("discopop", DiscoPOPConfig)
class DiscoPOPLoss(PairwiseLoss):
    """DiscoPOP (Lu et al. 2024, eq. 5): a blend of the logistic (DPO) and exponential losses
    whose mixing weight ``sig(z / tau)`` moves to the exponential one as the margin grows."""

    settings = F_DIVERGENCE_SETTINGS

    def pair_loss(self, policy, ref, batch):
        z = self.logits(policy, ref)
        modulation = torch.sigmoid(z / self.config.tau)  # type: ignore[attr-defined]
        return (1 - modulation) * -F.logsigmoid(z) + modulation * torch.exp(-z)


@register_loss("sigmoid_norm", DPOConfig)
class LengthNormalisedSigmoidLoss(PairwiseLoss):
    """Length-normalised DPO (Tulu 3; TRL's ``sigmoid_norm``): the DPO loss on the per-token
    scores ``s_c / n_c - s_r / n_r``. The implicit rewards reported stay ``beta u``."""

    settings = F_DIVERGENCE_SETTINGS

    def pair_loss(self, policy, ref, batch):
        s_c, s_r = self.scores(policy, ref)
        per_token = s_c / policy.chosen_tokens.clamp(min=1) - s_r / policy.rejected_tokens.clamp(
            min=1
        )
        return -F.logsigmoid(self.beta * per_token)
