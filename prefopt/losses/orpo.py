"""ORPO: monolithic odds-ratio preference optimisation, reference-free.

Hong, Lee and Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference Model"
(arXiv 2403.07691), section 4. With ``P(y|x) = exp(l(y)/n(y))`` the paper's length-normalised
likelihood (the average completion log-probability) and ``odds(y|x) = P / (1 - P)``:

* eq. 6: ``L_ORPO = E[L_SFT + lambda * L_OR]``;
* eq. 7: ``L_OR = -log sigmoid(log odds(y_w|x) - log odds(y_l|x))``, where
  ``log odds(y) = log P - log(1 - P) = l(y)/n(y) - log(1 - exp(l(y)/n(y)))``;
* ``L_SFT = -l(y_w)/n(y_w)``, the chosen completion's per-token NLL (the causal-LM loss).

``loss.beta`` is the paper's lambda (TRL's ORPOConfig calls it ``beta`` too, the authors' code
``alpha``); the default 0.1 is the paper's setting and TRL's. ``loss.nll_alpha`` weighs
``L_SFT`` (1.0 in the paper; 0 leaves the odds-ratio term alone).

Deviation from TRL, kept on purpose: TRL's ``L_SFT`` is a token mean over the whole batch
(``CrossEntropyLoss`` on every chosen token); here it is each example's per-token NLL,
averaged over examples by the trainer, as the paper's per-sequence ``L_SFT`` inside ``E[...]``.
The two agree when the chosen completions of a batch have the same length
(tests/test_trl_agreement_unpaired.py checks both terms).

Metrics (TRL's names): ``rewards/chosen`` = ``lambda * l(y_w)/n(y_w)`` (and rejected),
``log_odds_ratio`` (``log sigmoid`` of the log-odds difference), ``log_odds_chosen`` (the
difference itself), ``nll_loss``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.losses.base import LossOutput, PairLogps, detached
from prefopt.losses.dpo import DPOConfig, PairwiseLoss
from prefopt.registry import register_loss

LOG_HALF = -math.log(2.0)


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable at both ends: ``log(-expm1(x))`` near 0 and
    ``log1p(-exp(x))`` below ``-log 2`` (Maechler 2012, "Accurately computing log(1-exp(-|a|))")."""
    return torch.where(x > LOG_HALF, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def mean_logps(policy: PairLogps) -> tuple[Tensor, Tensor]:
    """Per-token average log-probabilities ``(l(y_w)/n(y_w), l(y_l)/n(y_l))``, [B] each."""
    return (
        policy.chosen / policy.chosen_tokens.clamp(min=1),
        policy.rejected / policy.rejected_tokens.clamp(min=1),
    )


def log_odds_difference(policy: PairLogps) -> Tensor:
    """``log odds(y_w|x) - log odds(y_l|x)`` on average log-probs (ORPO eq. 7's argument), [B]."""
    chosen, rejected = mean_logps(policy)
    chosen, rejected = chosen.float(), rejected.float()
    return (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))


@dataclass
class ORPOConfig(DPOConfig):
    name: str = "orpo"
    beta: float = 0.1  # lambda of eq. 6, the odds-ratio weight (paper and TRL: 0.1)
    nll_alpha: float = 1.0  # weight of L_SFT, the chosen per-token NLL (paper: 1)


@register_loss("orpo", ORPOConfig)
class ORPOLoss(PairwiseLoss):
    """ORPO (Hong et al. 2024, eqs. 6-7): ``nll_alpha * L_SFT + lambda * L_OR`` per pair; the
    base class adds the ``L_SFT`` term (``nll_alpha``), this class the odds-ratio term."""

    needs_reference = False

    def implicit_rewards(self, policy, ref):
        chosen, rejected = mean_logps(policy)
        return self.beta * chosen, self.beta * rejected

    def pair_loss(self, policy, ref, batch):
        return -self.beta * F.logsigmoid(log_odds_difference(policy))

    def __call__(
        self, policy: PairLogps, ref: PairLogps | None, batch: dict[str, Any] | None = None
    ) -> LossOutput:
        out = super().__call__(policy, ref, batch)
        log_odds = log_odds_difference(policy)
        out.metrics.update(
            detached(log_odds_ratio=F.logsigmoid(log_odds), log_odds_chosen=log_odds)
        )
        return out
