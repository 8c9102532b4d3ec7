"""GSPO: Group Sequence Policy Optimization (Zheng et al. 2025, arXiv 2507.18071), eqs. 5-7:
PPO's clipped surrogate on the sequence-level ratio

    s_i = (pi(y_i | x) / pi_old(y_i | x)) ** (1 / |y_i|) = exp(mean_t log rho_{i,t}),

one number per sequence, clipped to [1 - eps_low, 1 + eps_high] and multiplied by the
sequence's advantage, averaged over sequences. Its defaults are the paper's sec. 5.1: clipping
ranges 3e-4 (left) and 4e-4 (right), two orders of magnitude below the token-level 0.2 because
a sequence's ratio moves far less than a token's. The loss is PPO's (`prefopt.losses.ppo`)
with ``ratio: sequence``; TRL gets the same with ``importance_sampling_level="sequence"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefopt.losses.ppo import PPOConfig, PPOLoss
from prefopt.registry import register_policy_loss


@dataclass
class GSPOConfig(PPOConfig):
    name: str = "gspo"
    clip: float = 3e-4
    clip_high: float | None = 4e-4
    ratio: str = "sequence"
    aggregate: str = "sequence_mean"


register_policy_loss("gspo", GSPOConfig)(PPOLoss)
