"""Closed forms for a K-armed bandit with known rewards (ALGORITHMS.md section 5).

Xiao et al. 2024 (arXiv 2405.16455), sec. 3: KL-RLHF, ``max E[r] - beta KL(pi || pi_ref)``,
has the optimum ``pi* ∝ pi_ref exp(r / beta)``, whose implied pairwise preference
``pi_i / (pi_i + pi_j) = sig((r_i - r_j) / beta + log pi_ref(i) / pi_ref(j))`` equals
Bradley-Terry's ``sig(r_i - r_j)`` only for beta = 1 and a uniform reference, and collapses
onto the best arm as beta -> 0. The PM objective ``max E[r - beta log pi]`` has the optimum
``softmax(r / beta)``, whose implied preferences are exactly Bradley-Terry's for beta = 1.
These are the oracles the regularisers are tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_beta(beta: float) -> None:
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def kl_rlhf_optimum(rewards: Tensor, ref_probs: Tensor, beta: float) -> Tensor:
    """``pi* ∝ pi_ref exp(r / beta)``; rewards, ref_probs: [K] -> probs [K]."""
    _check_beta(beta)
    return torch.softmax(torch.log(ref_probs) + rewards / beta, dim=-1)


def pm_optimum(rewards: Tensor, beta: float = 1.0) -> Tensor:
    """``softmax(r / beta)``, the maximiser of ``E[r - beta log pi]``; [K] -> [K]."""
    _check_beta(beta)
    return torch.softmax(rewards / beta, dim=-1)


def implied_preferences(probs: Tensor) -> Tensor:
    """``P[i, j] = pi_i / (pi_i + pi_j)``: probs [K] -> [K, K] (0.5 on the diagonal)."""
    return probs.unsqueeze(1) / (probs.unsqueeze(1) + probs.unsqueeze(0))


def bradley_terry(rewards: Tensor) -> Tensor:
    """``P[i, j] = sig(r_i - r_j)``: rewards [K] -> [K, K]."""
    return torch.sigmoid(rewards.unsqueeze(1) - rewards.unsqueeze(0))
