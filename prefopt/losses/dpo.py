"""The DPO family of pairwise losses (ALGORITHMS.md section 1).

Notation, per pair: ``u_c = l(y_c) - l_ref(y_c)``, ``u_r = l(y_r) - l_ref(y_r)`` (summed
completion log-probs), ``z = beta * (u_c - u_r)``.

* sigmoid   -- DPO, Rafailov et al. 2023 (arXiv 2305.18290), eq. 7: ``-logsig(z)``.
* cdpo      -- conservative DPO / label smoothing eps (Mitchell 2023 note):
               ``-(1-eps) logsig(z) - eps logsig(-z)``.
* robust    -- Chowdhury et al. 2024 (arXiv 2403.00409), eq. 7, unbiased under flip rate eps:
               ``[-(1-eps) logsig(z) + eps logsig(-z)] / (1-2eps)``.
* ipo       -- Azar et al. 2023 (arXiv 2310.12036), eq. 17, with per-token normalised
               log-ratios as TRL does: ``(u_c/n_c - u_r/n_r - 1/(2 beta))^2``.
* hinge     -- the normalised-likelihood hinge of RSO, Liu et al. 2023 (arXiv 2309.06657),
               eq. for ``hinge-norm``: ``relu(1 - z)`` with the reference log-ratios. It is
               not SLiC-HF (Zhao et al. 2023, arXiv 2305.10425), whose calibration hinge
               ``relu(delta - log pi(y_c) + log pi(y_r))`` has no reference model.
* simpo     -- Meng et al. 2024 (arXiv 2405.14734), eq. 6, reference-free:
               ``-logsig(beta (l(y_c)/n_c - l(y_r)/n_r) - gamma)``.

Every loss adds the RPO / NLL term ``nll_alpha * NLL(y_c) / n_c`` (Pang et al. 2024, arXiv
2404.19733) when ``nll_alpha > 0``.

Soft labels: when the batch carries ``soft_labels`` (per-pair probability that the chosen
response is preferred, e.g. maintained by iterative data smoothing), the sigmoid loss uses
``-(y logsig(z) + (1-y) logsig(-z))``: cDPO is the special case ``y = 1 - eps``.

Metrics follow the names users know from TRL: ``rewards/chosen`` (mean ``beta*u_c``),
``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies`` (``u_c > u_r``),
``logps/chosen``, ``logps/rejected``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.losses.base import LossConfig, LossOutput, PairLogps, detached
from prefopt.registry import register_loss


@dataclass
class DPOConfig(LossConfig):
    name: str = "sigmoid"
    beta: float = 0.1  # KL strength; the DPO paper uses 0.1 (0.5 for TL;DR)
    nll_alpha: float = 0.0  # RPO: weight of the chosen NLL per token (RPO paper: 1.0)

    def validate(self) -> list[str]:
        problems = []
        if self.beta <= 0:
            problems.append(f"loss.beta must be > 0, got {self.beta}")
        if self.nll_alpha < 0:
            problems.append(f"loss.nll_alpha must be >= 0, got {self.nll_alpha}")
        return problems


@dataclass
class SmoothedDPOConfig(DPOConfig):
    name: str = "cdpo"
    label_smoothing: float = 0.1  # eps: assumed probability that a label is flipped; [0, 0.5)

    def validate(self) -> list[str]:
        problems = super().validate()
        if not 0 <= self.label_smoothing < 0.5:
            problems.append(f"loss.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        return problems


@dataclass
class SimPOConfig(DPOConfig):
    name: str = "simpo"
    beta: float = 2.0  # SimPO paper: beta in [2.0, 2.5]
    gamma: float = 1.0  # target margin; the paper tunes gamma/beta in [0, 1] (0.5 here)


class PairwiseLoss:
    """Base class: subclasses implement `pair_loss(policy, ref, batch) -> [B] loss`."""

    needs_reference: ClassVar[bool] = True
    supports_soft_labels: ClassVar[bool] = False  # reads batch["soft_labels"] (IDS)

    def __init__(self, config: DPOConfig):
        self.config = config
        self.beta = config.beta

    def pair_loss(self, policy: PairLogps, ref: PairLogps | None, batch: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def implicit_rewards(self, policy: PairLogps, ref: PairLogps | None) -> tuple[Tensor, Tensor]:
        assert ref is not None
        return self.beta * (policy.chosen - ref.chosen), self.beta * (
            policy.rejected - ref.rejected
        )

    def __call__(
        self, policy: PairLogps, ref: PairLogps | None, batch: dict[str, Any] | None = None
    ) -> LossOutput:
        if self.needs_reference and ref is None:
            raise ValueError(f"loss {self.config.name!r} needs reference log-probs")
        loss = self.pair_loss(policy, ref, batch or {})
        metrics: dict[str, Tensor] = {}
        if self.config.nll_alpha > 0:
            nll = -policy.chosen / policy.chosen_tokens.clamp(min=1)
            loss = loss + self.config.nll_alpha * nll
            metrics["nll_loss"] = nll
        chosen_r, rejected_r = self.implicit_rewards(policy, ref)
        metrics.update(
            detached(
                **{
                    "rewards/chosen": chosen_r,
                    "rewards/rejected": rejected_r,
                    "rewards/margins": chosen_r - rejected_r,
                    "rewards/accuracies": (chosen_r > rejected_r).float(),
                    "logps/chosen": policy.chosen,
                    "logps/rejected": policy.rejected,
                },
                **{k: v for k, v in metrics.items()},
            )
        )
        return LossOutput(loss=loss, metrics=metrics)

    def logits(self, policy: PairLogps, ref: PairLogps | None) -> Tensor:
        assert ref is not None
        return self.beta * ((policy.chosen - ref.chosen) - (policy.rejected - ref.rejected))


@register_loss("sigmoid", DPOConfig)
class SigmoidLoss(PairwiseLoss):
    """DPO (Rafailov et al. 2023, eq. 7): ``-logsig(z)``; soft labels y give
    ``-(y logsig(z) + (1-y) logsig(-z))``."""

    supports_soft_labels = True

    def target(self, batch: dict[str, Any], like: Tensor) -> Tensor | None:
        labels = batch.get("soft_labels")
        return None if labels is None else labels.to(like)

    def pair_loss(self, policy, ref, batch):
        z = self.logits(policy, ref)
        y = self.target(batch, z)
        if y is None:
            return -F.logsigmoid(z)
        return -(y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z))


@register_loss("cdpo", SmoothedDPOConfig)
class ConservativeLoss(SigmoidLoss):
    """cDPO: label smoothing ``-(1-eps) logsig(z) - eps logsig(-z)``. Its labels are the fixed
    1 - eps, so it does not take IDS labels (that would silently override eps)."""

    supports_soft_labels = False

    def target(self, batch, like):
        eps = self.config.label_smoothing  # type: ignore[attr-defined]
        return torch.full_like(like, 1 - eps)


@register_loss("robust", SmoothedDPOConfig)
class RobustLoss(PairwiseLoss):
    """Robust DPO (Chowdhury et al. 2024, eq. 7): unbiased under label-flip rate eps."""

    def pair_loss(self, policy, ref, batch):
        eps = self.config.label_smoothing  # type: ignore[attr-defined]
        z = self.logits(policy, ref)
        return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


@register_loss("ipo", DPOConfig)
class IPOLoss(PairwiseLoss):
    """IPO (Azar et al. 2023, eq. 17) on per-token normalised log-ratios (as in TRL)."""

    def pair_loss(self, policy, ref, batch):
        assert ref is not None
        h = (policy.chosen - ref.chosen) / policy.chosen_tokens.clamp(min=1) - (
            policy.rejected - ref.rejected
        ) / policy.rejected_tokens.clamp(min=1)
        return (h - 1 / (2 * self.beta)) ** 2


@register_loss("hinge", DPOConfig)
class HingeLoss(PairwiseLoss):
    """RSO's normalised-likelihood hinge (Liu et al. 2023, arXiv 2309.06657): ``relu(1 - z)``
    on reference-normalised log-ratios. Often called "SLiC", but SLiC-HF (Zhao et al. 2023)
    has no reference model."""

    def pair_loss(self, policy, ref, batch):
        return torch.relu(1 - self.logits(policy, ref))


@register_loss("simpo", SimPOConfig)
class SimPOLoss(PairwiseLoss):
    """SimPO (Meng et al. 2024, eq. 6): length-normalised, reference-free, target margin gamma.

    The implicit rewards reported as ``rewards/*`` are ``beta * l(y)/n(y)`` (no reference).
    """

    needs_reference = False

    def implicit_rewards(self, policy, ref):
        return (
            self.beta * policy.chosen / policy.chosen_tokens.clamp(min=1),
            self.beta * policy.rejected / policy.rejected_tokens.clamp(min=1),
        )

    def pair_loss(self, policy, ref, batch):
        chosen_r, rejected_r = self.implicit_rewards(policy, ref)
        return -F.logsigmoid(chosen_r - rejected_r - self.config.gamma)  # type: ignore[attr-defined]
