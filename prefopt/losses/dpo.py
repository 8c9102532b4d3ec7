"""The DPO family of pairwise losses (ALGORITHMS.md section 1).

Notation, per pair: ``u_c = l(y_c) - l_ref(y_c)``, ``u_r = l(y_r) - l_ref(y_r)`` (summed
completion log-probs), ``z = beta * (u_c - u_r)``.

* sigmoid   -- DPO, Rafailov et al. 2023 (arXiv 2305.18290), eq. 7: ``-logsig(z)``.
* cdpo      -- conservative DPO / label smoothing eps (Mitchell 2023 note):
               ``-(1-eps) logsig(z) - eps logsig(-z)``.
* robust    -- Chowdhury et al. 2024 (arXiv 2403.00409), eq. 7, unbiased under flip rate eps:
               ``[-(1-eps) logsig(z) + eps logsig(-z)] / (1-2eps)``.
* ipo       -- Azar et al. 2023 (arXiv 2310.12036), eq. 17, with per-token normalised
               log-ratios as TRL does: ``(u_c/n_c - u_r/n_r - 1/(2 beta))^2``;
               ``per_token: false`` gives the paper's ``(u_c - u_r - 1/(2 beta))^2``.
* hinge     -- the normalised-likelihood hinge of RSO, Liu et al. 2023 (arXiv 2309.06657),
               eq. for ``hinge-norm``: ``relu(1 - z)`` with the reference log-ratios. It is
               not SLiC-HF (Zhao et al. 2023, arXiv 2305.10425), whose calibration hinge
               ``relu(delta - log pi(y_c) + log pi(y_r))`` has no reference model.
* simpo     -- Meng et al. 2024 (arXiv 2405.14734), eq. 6, reference-free:
               ``-logsig(beta (l(y_c)/n_c - l(y_r)/n_r) - gamma)``.

Settings of the pairwise losses (``DPOConfig``), each refused by the losses it does not fit
(``PairwiseLoss.settings`` lists what a loss takes; TRL refuses the same combinations):

* ``f_divergence`` -- f-DPO, Wang et al. 2023 (arXiv 2309.16240), Table 1: the
  log-ratios ``u`` inside ``z`` become ``f'(exp u)``: reverse KL ``u`` (DPO), forward KL
  ``1 - exp(-u)``, Jensen-Shannon ``log 2 + logsig(u)``, alpha-divergence
  ``(1 - exp(-alpha u)) / alpha`` (``f_alpha``; reverse KL as alpha -> 0, forward KL at 1).
* ``ld_alpha`` -- LD-DPO, Liu et al. 2024 (arXiv 2409.06411): every summed log-prob (policy and
  reference) becomes ``l_shared + ld_alpha * (l - l_shared)``, ``l_shared`` the sum over the
  first ``min(n_c, n_r)`` tokens of the completion.
* ``wpo_weighting`` -- WPO, Zhou et al. 2024 (arXiv 2406.11827), eq. 2: each pair's loss is
  multiplied by ``w(y_c) w(y_r)``, ``w(y) = exp(mean_t [log p(y_t) - log sum_v p(v)^2])``
  under the policy, without gradient.

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

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.losses.base import LossConfig, LossOutput, PairLogps, detached
from prefopt.registry import LOSSES, register_loss

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")
#: the optional settings of DPOConfig; a loss lists those it takes in ``PairwiseLoss.settings``
SETTINGS = ("f_divergence", "ld_alpha", "wpo_weighting")


@dataclass
class DPOConfig(LossConfig):
    name: str = "sigmoid"
    beta: float = 0.1  # KL strength; the DPO paper uses 0.1 (0.5 for TL;DR)
    nll_alpha: float = 0.0  # RPO: weight of the chosen NLL per token (RPO paper: 1.0)
    # f-DPO: the divergence to the reference; reverse_kl is DPO's (TRL: f_divergence_type)
    f_divergence: str = "reverse_kl"
    # alpha of alpha_divergence, f'(t) = (1 - t^-alpha) / alpha, in (0, 1) as the f-DPO paper
    # writes it; TRL 1.16's f_alpha_divergence_coef is 1 - this alpha (equal at 0.5)
    f_alpha: float = 0.5
    # LD-DPO: weight of the tokens beyond the pair's shared length, in [0, 1]; null: off (1.0)
    ld_alpha: float | None = None
    wpo_weighting: bool = False  # WPO's per-pair weights (TRL: use_weighting)

    def validate(self) -> list[str]:
        problems = []
        if self.beta <= 0:
            problems.append(f"loss.beta must be > 0, got {self.beta}")
        if self.nll_alpha < 0:
            problems.append(f"loss.nll_alpha must be >= 0, got {self.nll_alpha}")
        if self.f_divergence not in F_DIVERGENCES:
            problems.append(
                f"loss.f_divergence: {self.f_divergence!r} is not one of {', '.join(F_DIVERGENCES)}"
            )
        if not 0 < self.f_alpha < 1:
            problems.append(f"loss.f_alpha must be in (0, 1), got {self.f_alpha}")
        if self.ld_alpha is not None and not 0 <= self.ld_alpha <= 1:
            problems.append(f"loss.ld_alpha must be in [0, 1] or null, got {self.ld_alpha}")
        return problems + self.unsupported_settings()

    def settings_in_use(self) -> list[str]:
        """The optional settings this config turns on (see ``SETTINGS``)."""
        on = {
            "f_divergence": self.f_divergence != "reverse_kl",
            "ld_alpha": self.ld_alpha is not None,
            "wpo_weighting": self.wpo_weighting,
        }
        return [name for name in SETTINGS if on[name]]

    def unsupported_settings(self) -> list[str]:
        entry = LOSSES.get(self.name)
        takes = frozenset(getattr(entry.build, "settings", ()) if entry else ())
        return [
            f"loss.{setting}: loss {self.name!r} does not support it "
            f"(losses that do: {', '.join(_losses_taking(setting))})"
            for setting in self.settings_in_use()
            if setting not in takes
        ]

    def logps_summaries(self) -> tuple[frozenset[str], frozenset[str]]:
        """The optional log-prob summaries (``prefopt.models.logps.SUMMARIES``) the policy and
        the reference forwards must compute for these settings."""
        shared = {"shared"} if self.ld_alpha is not None else set()
        aligned = {"aligned"} if self.wpo_weighting else set()
        return frozenset(shared | aligned), frozenset(shared)


def _losses_taking(setting: str) -> list[str]:
    return sorted(n for n, e in LOSSES.items() if setting in getattr(e.build, "settings", ()))


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


def f_divergence_scores(log_ratio: Tensor, divergence: str, alpha: float) -> Tensor:
    """f-DPO's ``f'(pi / pi_ref)`` of a log-ratio ``u = log pi - log pi_ref`` (Wang et al. 2023,
    Table 1), computed in fp32. The alpha-divergence exponent is capped at 80, as TRL does, so
    ``exp`` stays finite in fp32 (``exp(80) ~ 5.5e34``)."""
    u = log_ratio.float()
    if divergence == "reverse_kl":  # f'(t) = log t + 1; the constant cancels in u_c - u_r
        return u
    if divergence == "forward_kl":  # f'(t) = 1 - 1/t
        return 1 - torch.exp(-u)
    if divergence == "js_divergence":  # f'(t) = log(2t / (1 + t))
        return math.log(2) + F.logsigmoid(u)
    if divergence == "alpha_divergence":  # f'(t) = (1 - t^-alpha) / alpha
        return (1 - torch.exp(torch.clamp(-alpha * u, max=80.0))) / alpha
    raise ValueError(f"unknown f-divergence {divergence!r}; use one of {F_DIVERGENCES}")


def length_desensitised(logps: PairLogps, ld_alpha: float | None) -> PairLogps:
    """LD-DPO's log-probs: ``l_shared + ld_alpha * (l - l_shared)`` per completion (the shared
    part is the first ``min(n_c, n_r)`` tokens); `logps` itself when ``ld_alpha`` is None."""
    if ld_alpha is None:
        return logps
    if logps.chosen_shared is None or logps.rejected_shared is None:
        raise ValueError("loss.ld_alpha needs the shared-length log-probs (summaries={'shared'})")
    return PairLogps(
        logps.chosen_shared + ld_alpha * (logps.chosen - logps.chosen_shared),
        logps.rejected_shared + ld_alpha * (logps.rejected - logps.rejected_shared),
        logps.chosen_tokens,
        logps.rejected_tokens,
    )


def wpo_weights(policy: PairLogps) -> Tensor:
    """WPO's per-pair weight ``w(y_c) w(y_r)`` [B] (Zhou et al. 2024, eq. 2), no gradient."""
    if policy.chosen_aligned is None or policy.rejected_aligned is None:
        raise ValueError("loss.wpo_weighting needs the aligned log-probs (summaries={'aligned'})")
    chosen = policy.chosen_aligned / policy.chosen_tokens.clamp(min=1)
    rejected = policy.rejected_aligned / policy.rejected_tokens.clamp(min=1)
    return torch.exp(chosen + rejected).detach()


class PairwiseLoss:
    """Base class: subclasses implement `pair_loss(policy, ref, batch) -> [B] loss`.

    `pair_loss` receives the log-probs after LD-DPO's weighting (when ``ld_alpha`` is set);
    the RPO term and WPO's weights are applied here, around it.
    """

    needs_reference: ClassVar[bool] = True
    supports_soft_labels: ClassVar[bool] = False  # reads batch["soft_labels"] (IDS)
    # the optional settings (``SETTINGS``) this loss takes; the others are refused
    settings: ClassVar[frozenset[str]] = frozenset({"ld_alpha", "wpo_weighting"})

    def __init__(self, config: DPOConfig):
        self.config = config
        self.beta = config.beta
        policy, reference = config.logps_summaries()
        self.policy_summaries = policy
        self.reference_summaries = reference if self.needs_reference else frozenset()

    def pair_loss(self, policy: PairLogps, ref: PairLogps | None, batch: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def implicit_rewards(self, policy: PairLogps, ref: PairLogps | None) -> tuple[Tensor, Tensor]:
        u_c, u_r = self.log_ratios(policy, ref)
        return self.beta * u_c, self.beta * u_r

    def log_ratios(self, policy: PairLogps, ref: PairLogps | None) -> tuple[Tensor, Tensor]:
        """``u_c = l(y_c) - l_ref(y_c)``, ``u_r = l(y_r) - l_ref(y_r)`` [B] each."""
        assert ref is not None
        return policy.chosen - ref.chosen, policy.rejected - ref.rejected

    def scores(self, policy: PairLogps, ref: PairLogps | None) -> tuple[Tensor, Tensor]:
        """The log-ratios through f-DPO's ``f'`` (themselves under the default reverse KL)."""
        u_c, u_r = self.log_ratios(policy, ref)
        cfg = self.config
        if cfg.f_divergence == "reverse_kl":
            return u_c, u_r
        return (
            f_divergence_scores(u_c, cfg.f_divergence, cfg.f_alpha),
            f_divergence_scores(u_r, cfg.f_divergence, cfg.f_alpha),
        )

    def logits(self, policy: PairLogps, ref: PairLogps | None) -> Tensor:
        """``z = beta * (s_c - s_r)``, the scores' margin (``beta (u_c - u_r)`` for DPO)."""
        s_c, s_r = self.scores(policy, ref)
        return self.beta * (s_c - s_r)

    def __call__(
        self, policy: PairLogps, ref: PairLogps | None, batch: dict[str, Any] | None = None
    ) -> LossOutput:
        if self.needs_reference and ref is None:
            raise ValueError(f"loss {self.config.name!r} needs reference log-probs")
        raw_policy = policy
        policy = length_desensitised(policy, self.config.ld_alpha)
        if ref is not None and self.needs_reference:
            ref = length_desensitised(ref, self.config.ld_alpha)
        loss = self.pair_loss(policy, ref, batch or {})
        metrics: dict[str, Tensor] = {}
        if self.config.wpo_weighting:
            weights = wpo_weights(raw_policy)
            loss = loss * weights
            metrics["wpo/weights"] = weights
        if self.config.nll_alpha > 0:
            nll = -raw_policy.chosen / raw_policy.chosen_tokens.clamp(min=1)
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


#: the losses built on the margin of scores ``s_c - s_r``, where f-DPO's normaliser cancels
F_DIVERGENCE_SETTINGS = PairwiseLoss.settings | {"f_divergence"}


@register_loss("sigmoid", DPOConfig)
class SigmoidLoss(PairwiseLoss):
    """DPO (Rafailov et al. 2023, eq. 7): ``-logsig(z)``; soft labels y give
    ``-(y logsig(z) + (1-y) logsig(-z))``."""

    supports_soft_labels = True
    settings = F_DIVERGENCE_SETTINGS

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

    settings = F_DIVERGENCE_SETTINGS

    def pair_loss(self, policy, ref, batch):
        eps = self.config.label_smoothing  # type: ignore[attr-defined]
        z = self.logits(policy, ref)
        return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


@dataclass
class IPOConfig(DPOConfig):
    name: str = "ipo"
    # divide each log-ratio by its completion's token count: TRL's choice, confirmed with the
    # IPO authors per TRL's comment; false: the paper's eq. 17 on summed log-ratios
    per_token: bool = True


@register_loss("ipo", IPOConfig)
class IPOLoss(PairwiseLoss):
    """IPO (Azar et al. 2023, eq. 17): ``(h - 1/(2 beta))^2`` with ``h`` the log-ratio gap,
    per-token normalised by default (as in TRL; ``per_token: false`` for the summed form)."""

    settings = F_DIVERGENCE_SETTINGS

    def pair_loss(self, policy, ref, batch):
        s_c, s_r = self.scores(policy, ref)
        if self.config.per_token:  # type: ignore[attr-defined]
            s_c = s_c / policy.chosen_tokens.clamp(min=1)
            s_r = s_r / policy.rejected_tokens.clamp(min=1)
        return (s_c - s_r - 1 / (2 * self.beta)) ** 2


@register_loss("hinge", DPOConfig)
class HingeLoss(PairwiseLoss):
    """RSO's normalised-likelihood hinge (Liu et al. 2023, arXiv 2309.06657): ``relu(1 - z)``
    on reference-normalised log-ratios. Often called "SLiC", but SLiC-HF (Zhao et al. 2023)
    has no reference model."""

    settings = F_DIVERGENCE_SETTINGS

    def pair_loss(self, policy, ref, batch):
        return torch.relu(1 - self.logits(policy, ref))


@register_loss("simpo", SimPOConfig)
class SimPOLoss(PairwiseLoss):
    """SimPO (Meng et al. 2024, eq. 6): length-normalised, reference-free, target margin gamma.

    The implicit rewards reported as ``rewards/*`` are ``beta * l(y)/n(y)`` (no reference).
    """

    needs_reference = False
    settings = frozenset({"wpo_weighting"})  # no reference: no f-divergence to it

    def implicit_rewards(self, policy, ref):
        return (
            self.beta * policy.chosen / policy.chosen_tokens.clamp(min=1),
            self.beta * policy.rejected / policy.rejected_tokens.clamp(min=1),
        )

    def pair_loss(self, policy, ref, batch):
        chosen_r, rejected_r = self.implicit_rewards(policy, ref)
        return -F.logsigmoid(chosen_r - rejected_r - self.config.gamma)  # type: ignore[attr-defined]
