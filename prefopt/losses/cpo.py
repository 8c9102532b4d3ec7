"""CPO: contrastive preference optimisation, reference-free.

Xu et al. 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance
in Machine Translation" (arXiv 2401.08417), section 3: DPO's loss with the reference model
dropped (a uniform reference, their eq. 3) plus a behaviour-cloning NLL on the chosen side:

    L_CPO = L_prefer + L_NLL,
    L_prefer = -log sigmoid(beta * (r(y_w) - r(y_l)))      (eq. 3),
    L_NLL    = -log pi(y_w|x)                              (the chosen NLL, per token here).

``r(y)`` is the policy's log-probability of the completion; the paper uses beta = 0.1 and weight
1 on ``L_NLL`` (``loss.nll_alpha``, TRL's ``cpo_alpha``).

Variants of TRL 1.16's ``CPOConfig`` are ``loss.variant``:

* ``sigmoid`` (default, eq. 3), with ``loss.label_smoothing`` eps giving the conservative
  ``-(1-eps) logsig(beta h) - eps logsig(-beta h)``;
* ``hinge``: ``relu(1 - beta h)``;
* ``ipo``: ``(h - 1/(2 beta))^2`` on per-token average log-probs (Azar et al. 2023, eq. 17);
* ``simpo``: ``-logsig(beta h - gamma)`` on average log-probs with ``loss.gamma`` (SimPO, Meng
  et al. 2024, eq. 6; TRL's ``simpo_gamma``, default 0.5), smoothed like sigmoid;

where ``h = r(y_w) - r(y_l)``; sigmoid and hinge use summed log-probs, ipo and simpo per-token
averages (as TRL). ``loss.alpha != 0`` applies AlphaPO's reward shape (Gupta et al. 2025, arXiv
2501.03884) to every variant: ``r(y) = (1 - p^(-alpha)) / alpha`` with ``p = exp(log-prob)``;
TRL's ``loss_type: alphapo`` is ``variant: simpo, nll_alpha: 0, alpha: <a>`` here.

Deviation from TRL, kept on purpose: TRL's NLL term is a token mean over the whole batch; here
it is each example's per-token NLL averaged over examples (equal when the chosen completions of
a batch have the same length).

Metrics (TRL's names): ``rewards/chosen`` = ``beta * r(y_w)`` (and rejected, margins,
accuracies), ``logps/chosen``, ``logps/rejected``, ``nll_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.losses.dpo import DPOConfig, PairwiseLoss
from prefopt.losses.orpo import mean_logps
from prefopt.registry import register_loss

VARIANTS = ("sigmoid", "hinge", "ipo", "simpo")
AVERAGED = ("ipo", "simpo")  # the variants on per-token average log-probs


@dataclass
class CPOConfig(DPOConfig):
    name: str = "cpo"
    beta: float = 0.1  # the paper's beta
    nll_alpha: float = 1.0  # weight of the chosen NLL (paper: 1; TRL's cpo_alpha)
    variant: str = "sigmoid"  # sigmoid | hinge | ipo | simpo (TRL's CPOConfig.loss_type)
    label_smoothing: float = 0.0  # sigmoid and simpo: conservative labels, in [0, 0.5)
    gamma: float = 0.5  # simpo: target margin (TRL's simpo_gamma)
    alpha: float = 0.0  # AlphaPO reward shape; 0: log-probabilities

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.variant not in VARIANTS:
            problems.append(f"loss.variant: {self.variant!r} is not one of {', '.join(VARIANTS)}")
        if not 0 <= self.label_smoothing < 0.5:
            problems.append(f"loss.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.variant not in ("sigmoid", "simpo"):
            problems.append(
                f"loss.label_smoothing applies to variants sigmoid and simpo, not {self.variant!r}"
            )
        return problems


@register_loss("cpo", CPOConfig)
class CPOLoss(PairwiseLoss):
    """CPO (Xu et al. 2024, eq. 3 plus the chosen NLL), reference-free; see the module
    docstring for the variants."""

    needs_reference = False

    def rewards(self, policy) -> tuple[Tensor, Tensor]:
        """``(r(y_w), r(y_l))``: summed or averaged log-probs, AlphaPO-shaped when alpha != 0."""
        cfg = self.config
        if cfg.variant in AVERAGED:  # type: ignore[attr-defined]
            chosen, rejected = mean_logps(policy)
        else:
            chosen, rejected = policy.chosen, policy.rejected
        alpha = cfg.alpha  # type: ignore[attr-defined]
        if alpha == 0:
            return chosen, rejected
        return (1 - torch.exp(-alpha * chosen)) / alpha, (1 - torch.exp(-alpha * rejected)) / alpha

    def implicit_rewards(self, policy, ref):
        chosen, rejected = self.rewards(policy)
        return self.beta * chosen, self.beta * rejected

    def pair_loss(self, policy, ref, batch):
        cfg = self.config
        chosen, rejected = self.rewards(policy)
        h = chosen - rejected
        variant, eps = cfg.variant, cfg.label_smoothing  # type: ignore[attr-defined]
        if variant == "hinge":
            return torch.relu(1 - self.beta * h)
        if variant == "ipo":
            return (h - 1 / (2 * self.beta)) ** 2
        z = self.beta * h - (cfg.gamma if variant == "simpo" else 0.0)  # type: ignore[attr-defined]
        return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
