"""Advantage estimators for the online trainer: GAE and the critic-free family.

Pure tensor functions (ALGORITHMS.md sections 3 and 12); no model is ever seen here.

* GAE -- Schulman et al. 2016 (arXiv 1506.02438), eqs. 11-16, in the PPO-RLHF form of
  Ziegler et al. 2019: ``delta_t = r_t + gamma V_{t+1} - V_t``,
  ``A_t = delta_t + gamma lambda A_{t+1}``, returns ``A + V``.
* RLOO -- Ahmadian et al. 2024 (arXiv 2402.14740), eq. 6: ``r_i - mean_{j != i} r_j``.
* GRPO -- Shao et al. 2024 (arXiv 2402.03300), sec. 4.1.2: ``(r_i - mean(r)) / (std(r) + eps)``
  within each group; Dr. GRPO (Liu et al. 2025, arXiv 2503.20783) drops the division.
* REINFORCE++ -- Hu 2025 (arXiv 2501.03262): discounted return-to-go per token, whitened over
  every valid token of the batch; REINFORCE++-baseline subtracts the group mean from the
  scores first.

Masks. ``mask`` marks valid (completion) positions with 1 and need not be a contiguous block:
the recursions of ``gae`` and ``discounted_returns`` chain the valid positions of a row in
order and pass straight through masked ones (a masked position's reward and value are never
read), so a hole in a row behaves as if it had been cut out. The value after a row's last
valid token is 0 (the episode ends there). Outputs are 0 on masked positions.

Deliberate choices a reader of the papers might not expect:

* ``masked_var`` is the unbiased (Bessel-corrected) variance, as TRL's ``masked_var``;
  ``masked_whiten`` divides by ``sqrt(var + eps)`` rather than ``std + eps``.
* GRPO's std is the unbiased sample std (``torch.std``, correction 1), as TRL's
  ``GRPOTrainer``; the paper does not say which. ``scale="batch"`` uses the unbiased std of
  all ``N * k`` scores (TRL's ``scale_rewards="batch"``), still centring by the group mean.
* ``masked_mean`` of an empty selection is 0 (not NaN), so an all-padding row contributes
  nothing; ``masked_var`` refuses too few entries with a ValueError instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

GRPO_SCALES = ("group", "batch", "none")


def _as_mask(mask: Tensor, like: Tensor) -> Tensor:
    return mask.to(dtype=like.dtype, device=like.device)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1.

    x, mask: same shape. ``dim=None`` reduces everything to a scalar; otherwise reduces ``dim``.
    An empty selection gives 0.
    """
    m = _as_mask(mask, x)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all entries where ``mask`` is 1 (scalar).

    ``unbiased`` applies Bessel's correction n / (n - 1); it needs n >= 2 valid entries.
    """
    n = int(mask.sum().item())
    needed = 2 if unbiased else 1
    if n < needed:
        raise ValueError(f"masked_var needs at least {needed} valid entries, got {n}")
    centred = x - masked_mean(x, mask)
    var = masked_mean(centred**2, mask)
    return var * (n / (n - 1)) if unbiased else var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the valid entries of the whole tensor.

    With ``shift_mean=False`` the mean is added back (only the scale changes). Masked-out
    entries are returned as 0. Statistics use ``masked_var(unbiased=True)``.
    """
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation, vectorised over the batch (reverse loop over T).

    rewards, values, mask: [B, T]. Returns (advantages [B, T], returns [B, T] = A + V), both
    0 on masked positions and both without gradient (rollout quantities).
    """
    valid = mask.bool()
    rewards, values = rewards.detach(), values.detach()
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])  # V after the last valid token: terminal
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        # a masked position is transparent: the carried (V, A) skip over it
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_adv = torch.where(valid[:, t], adv_t, next_adv)
        advantages[:, t] = torch.where(valid[:, t], adv_t, torch.zeros_like(adv_t))
    returns = torch.where(valid, advantages + values, torch.zeros_like(values))
    return advantages, returns


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Return-to-go ``G_t = r_t + gamma G_{t+1}`` over the valid positions of each row.

    rewards, mask: [B, T] -> [B, T], 0 on masked positions.
    """
    valid = mask.bool()
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(valid[:, t], rewards[:, t] + gamma * running, running)
        returns[:, t] = torch.where(valid[:, t], running, torch.zeros_like(running))
    return returns


def _check_groups(scores: Tensor, estimator: str) -> None:
    if scores.dim() != 2:
        raise ValueError(f"{estimator} expects scores of shape [N, k], got {list(scores.shape)}")
    if scores.shape[1] < 2:
        raise ValueError(f"{estimator} needs k >= 2 samples per prompt, got k={scores.shape[1]}")


def rloo_advantages(scores: Tensor) -> Tensor:
    """RLOO: ``r_i - mean_{j != i} r_j`` within each prompt's group.

    scores: [N, k] (N prompts x k samples), k >= 2 -> [N, k].
    """
    _check_groups(scores, "rloo_advantages")
    k = scores.shape[1]
    leave_one_out = (scores.sum(dim=1, keepdim=True) - scores) / (k - 1)
    return scores - leave_one_out


def grpo_advantages(scores: Tensor, eps: float = 1e-4, scale: str = "group") -> Tensor:
    """GRPO: ``(r - group mean) / (std + eps)``; scores [N, k] -> [N, k].

    scale: "group" (unbiased std of each group), "batch" (unbiased std of all N*k scores) or
    "none" (Dr. GRPO: no division, ``eps`` unused). k >= 2: with one sample the group mean
    is the sample itself and every advantage would silently be 0.
    """
    if scale not in GRPO_SCALES:
        raise ValueError(f"unknown GRPO scale {scale!r}; use one of {', '.join(GRPO_SCALES)}")
    _check_groups(scores, "grpo_advantages")
    centred = scores - scores.mean(dim=1, keepdim=True)
    if scale == "group":
        return centred / (scores.std(dim=1, keepdim=True) + eps)
    if scale == "batch":
        return centred / (scores.std() + eps)
    return centred


def reinforce_pp_advantages(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """REINFORCE++: return-to-go per token, whitened over every valid token of the batch.

    token_rewards, mask: [B, T] (the per-token KL penalty plus the score at the last token)
    -> [B, T], 0 on masked positions.
    """
    return masked_whiten(discounted_returns(token_rewards, mask, gamma), mask)


def reinforce_pp_baseline_scores(scores: Tensor) -> Tensor:
    """REINFORCE++-baseline: scores minus their group mean, before token rewards are built.

    scores: [N, k] -> [N, k].
    """
    if scores.dim() != 2:
        raise ValueError(f"expected scores of shape [N, k], got {list(scores.shape)}")
    return scores - scores.mean(dim=1, keepdim=True)
