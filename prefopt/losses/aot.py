"""AOT: alignment via optimal transport, Melnyk et al. 2024 (arXiv 2406.05882).

AOT asks for first-order stochastic dominance of the chosen reward distribution over the
rejected one. With one-dimensional distributions the optimal transport plan matches quantiles,
so the batch's values are **sorted** and compared rank by rank, through the DPO-style logistic
loss with label smoothing ``eps`` (``-(1-eps) logsig(beta d) - eps logsig(-beta d)``):

* aot          -- paired: ``d = sort(l(y_c) - l(y_r)) - sort(l_ref(y_c) - l_ref(y_r))``, the
                  policy's and the reference's margins each sorted over the batch;
* aot_unpaired -- ``d = sort(u_c) - sort(u_r)``, the chosen and rejected log-ratios each
                  sorted over the batch (the pairing is not used).

The loss of a pair therefore depends on the rest of its batch: it is computed per micro-batch
(and per process), as TRL does, and ``trainer.batch_size`` is part of the method. The sorted
values are no longer attached to a pair, so WPO's per-pair weights do not apply (refused, as
TRL does), nor do f-divergences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.losses.dpo import PairwiseLoss, SmoothedDPOConfig
from prefopt.registry import register_loss


@dataclass
class AOTConfig(SmoothedDPOConfig):
    name: str = "aot"
    label_smoothing: float = 0.0  # eps of the logistic loss; AOT's default is none


class _SortedLogisticLoss(PairwiseLoss):
    settings = frozenset({"ld_alpha"})

    def sorted_margin(self, policy, ref) -> Tensor:
        raise NotImplementedError

    def pair_loss(self, policy, ref, batch):
        eps = self.config.label_smoothing  # type: ignore[attr-defined]
        z = self.beta * self.sorted_margin(policy, ref)
        return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


@register_loss("aot", AOTConfig)
class AOTPairedLoss(_SortedLogisticLoss):
    """Paired AOT: the policy's margins ``l(y_c) - l(y_r)`` and the reference's, each sorted
    over the batch, compared rank by rank."""

    def sorted_margin(self, policy, ref):
        margins, _ = torch.sort(policy.chosen - policy.rejected)
        ref_margins, _ = torch.sort(ref.chosen - ref.rejected)
        return margins - ref_margins


@register_loss("aot_unpaired", AOTConfig)
class AOTUnpairedLoss(_SortedLogisticLoss):
    """Unpaired AOT: the chosen log-ratios and the rejected ones, each sorted over the batch,
    compared rank by rank."""

    def sorted_margin(self, policy, ref):
        u_c, u_r = self.log_ratios(policy, ref)
        return torch.sort(u_c)[0] - torch.sort(u_r)[0]
