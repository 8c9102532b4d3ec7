"""KTO: Kahneman-Tversky optimisation on unpaired, binary feedback.

Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization" (arXiv
2402.01306), section 4.1 (eq. 7 as TRL cites it). With ``r(x, y) = log pi(y|x) -
log pi_ref(y|x)`` and the reference point ``z0 = KL(pi(y'|x) || pi_ref(y'|x))``:

    v(x, y) = lambda_D sigmoid(beta (r(x, y) - z0))   if y is desirable,
              lambda_U sigmoid(beta (z0 - r(x, y)))   if y is undesirable,
    L_KTO   = E[lambda_y - v(x, y)].

``z0`` is estimated as the paper and TRL do: over the micro-batch's mismatched pairs (prompt
``x_i`` with the completion ``y_{i-1}`` of another example), ``z0 = max(0, mean_i log
pi(y_{i-1}|x_i) / pi_ref(y_{i-1}|x_i))``, with no gradient through it. Under data parallelism
the mean is over every process's micro-batch (as TRL's gather), then clamped.

Defaults from the paper: beta = 0.1, lambda_D = lambda_U = 1. The paper advises keeping
``lambda_D n_D / (lambda_U n_U)`` in ``[1, 4/3]`` (``n_D``, ``n_U``: desirable and undesirable
counts); the world's unpaired data is half desirable, so the defaults sit at 1.

Metrics: ``z0`` (the clamped reference point; TRL logs it as ``kl``, a name that here is the
gold evaluation's KL to the reference), ``rewards/*`` and ``logps/*``
(``prefopt.losses.unpaired``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.losses.unpaired import UnpairedConfig, UnpairedLoss
from prefopt.registry import register_loss


@dataclass
class KTOConfig(UnpairedConfig):
    name: str = "kto"
    beta: float = 0.1  # paper: 0.1
    desirable_weight: float = 1.0  # lambda_D
    undesirable_weight: float = 1.0  # lambda_U

    def validate(self) -> list[str]:
        problems = super().validate()
        for key in ("desirable_weight", "undesirable_weight"):
            if getattr(self, key) <= 0:
                problems.append(f"loss.{key} must be > 0, got {getattr(self, key)}")
        return problems


@register_loss("kto", KTOConfig, kind="unpaired")
class KTOLoss(UnpairedLoss):
    """KTO (Ethayarajh et al. 2024, section 4.1), ``lambda_y - v(x, y)`` per example."""

    needs_mismatched = True
    config: KTOConfig

    def example_loss(self, log_ratios, mismatched_log_ratios, desirable, training, batch_mean):
        assert mismatched_log_ratios is not None
        z0 = batch_mean(mismatched_log_ratios.detach().mean()).clamp(min=0)
        gain = torch.sigmoid(self.beta * (log_ratios - z0))  # sigma(beta (r - z0))
        desirable_loss = self.config.desirable_weight * (1 - gain)
        # sigma(beta (z0 - r)) = 1 - sigma(beta (r - z0))
        undesirable_loss = self.config.undesirable_weight * gain
        return torch.where(desirable, desirable_loss, undesirable_loss), {"z0": z0}
