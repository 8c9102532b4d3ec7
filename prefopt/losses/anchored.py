"""Pairwise losses that anchor each completion's implicit reward on its own, not only the
chosen-rejected margin. With ``r_c = beta u_c``, ``r_r = beta u_r`` (``u = l(y) - l_ref(y)``):

* nca_pair  -- NCA, Chen et al. 2024 (arXiv 2402.05369), the pairwise (K = 2) NCA loss:
               ``-logsig(r_c) - 1/2 logsig(-r_c) - 1/2 logsig(-r_r)``.
* bco_pair  -- BCO for pairs, Jung et al. 2024 (arXiv 2404.04656): a binary classifier with
               the implicit reward as logit, chosen positive and rejected negative:
               ``-logsig(r_c) - logsig(-r_r)``. BCO's reward shift ``delta`` (a running mean of
               the rewards) is not applied, as in TRL 1.16's ``bco_pair`` (docs/algorithms/dpo.md).
* sppo_hard -- SPPO, Wu et al. 2024 (arXiv 2405.00675), eq. 4.7 of Algorithm 1 with the hard
               win probability (1 for the chosen, 0 for the rejected):
               ``(u_c - 1/(2 beta))^2 + (u_r + 1/(2 beta))^2``.
* apo_zero  -- APO-zero, D'Oosterlinck et al. 2024 (arXiv 2408.06266), eq. 7: raise the
               chosen likelihood, lower the rejected one: ``1 - sig(r_c) + sig(r_r)``.
* apo_down  -- APO-down, the same paper's eq. 8, for chosen completions worse than the
               model's own: ``sig(r_c) + 1 - sig(r_c - r_r)`` lowers both likelihoods, the
               rejected more.

The f-DPO generalisation does not apply to them: its ``beta log Z(x)`` term cancels only in the
chosen-rejected difference (TRL refuses the same combinations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prefopt.losses.dpo import DPOConfig, PairwiseLoss
from prefopt.registry import register_loss


@register_loss("nca_pair", DPOConfig)
class NCAPairLoss(PairwiseLoss):
    """NCA for pairs (Chen et al. 2024): the chosen reward is pushed up on its own
    (``-logsig(r_c)``) and both rewards down by half, so likelihoods do not all fall."""

    def pair_loss(self, policy, ref, batch):
        r_c, r_r = self.implicit_rewards(policy, ref)
        return -F.logsigmoid(r_c) - 0.5 * F.logsigmoid(-r_c) - 0.5 * F.logsigmoid(-r_r)


@register_loss("bco_pair", DPOConfig)
class BCOPairLoss(PairwiseLoss):
    """BCO on pairs (Jung et al. 2024) without the reward shift: ``-logsig(r_c) - logsig(-r_r)``."""

    def pair_loss(self, policy, ref, batch):
        r_c, r_r = self.implicit_rewards(policy, ref)
        return -F.logsigmoid(r_c) - F.logsigmoid(-r_r)


@register_loss("sppo_hard", DPOConfig)
class SPPOHardLoss(PairwiseLoss):
    """SPPO with hard labels (Wu et al. 2024, eq. 4.7: ``(u - eta (P - 1/2))^2`` with
    ``eta = 1/beta``, P = 1 for the winner and 0 for the loser): each log-ratio regresses on
    ``+-1/(2 beta)``."""

    def pair_loss(self, policy, ref, batch):
        u_c, u_r = self.log_ratios(policy, ref)
        target = 0.5 / self.beta
        return (u_c - target) ** 2 + (u_r + target) ** 2


@register_loss("apo_zero", DPOConfig)
class APOZeroLoss(PairwiseLoss):
    """APO-zero (D'Oosterlinck et al. 2024, eq. 7): for chosen completions better than the
    model's own; raises ``l(y_c)`` and lowers ``l(y_r)`` independently."""

    def pair_loss(self, policy, ref, batch):
        r_c, r_r = self.implicit_rewards(policy, ref)
        return 1 - torch.sigmoid(r_c) + torch.sigmoid(r_r)


@register_loss("apo_down", DPOConfig)
class APODownLoss(PairwiseLoss):
    """APO-down (D'Oosterlinck et al. 2024, eq. 8): for chosen completions worse than the
    model's own; ``sig(r_c)`` lowers the chosen likelihood, ``1 - sig(r_c - r_r)`` keeps the
    rejected one below it."""

    def pair_loss(self, policy, ref, batch):
        r_c, r_r = self.implicit_rewards(policy, ref)
        return torch.sigmoid(r_c) + 1 - torch.sigmoid(r_c - r_r)
