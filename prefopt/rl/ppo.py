"""PPO's clipped losses and the diagnostics logged beside them (ALGORITHMS.md section 3).

* Policy loss -- Schulman et al. 2017 (arXiv 1707.06347), eq. 7, written as a loss:
  ``max(-A rho, -A clip(rho, 1 - eps, 1 + eps))``, ``rho = exp(logp - old_logp)``.
* Value loss -- the clipped value loss of the OpenAI baselines / Ziegler et al. code:
  ``0.5 max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)``.

Per-token terms are reduced by ``token_aggregate``:

* ``token_mean``    -- mean over every valid token of the batch (PPO-RLHF, GRPO in TRL);
* ``sequence_mean`` -- each sequence's masked mean, then the mean over sequences (the GRPO
                       paper's eq. 3); a sequence with no valid token counts as 0;
* ``constant``      -- Dr. GRPO (Liu et al. 2025, arXiv 2503.20783): each sequence's token
                       *sum* divided by a fixed constant (e.g. the maximum number of new
                       tokens), then the mean over sequences, so no completion's length
                       rescales its own gradient. TRL's ``dr_grpo`` is this with the constant
                       ``max_completion_length``.

Metrics are detached scalars. ``approxkl`` is ``0.5 mean(d^2)`` (the k2 estimator, as the
"N implementation details" code logs it); ``clipfrac`` is the fraction of valid tokens on
which the clipped branch is strictly the larger one (so its gradient is 0), a precise form of
the usual ``|rho - 1| > eps``: a token with ``A = 0`` or with the ratio outside the range on
the side that does not bind is not counted. Metrics always average over valid tokens,
whatever ``aggregate`` the loss uses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.rl.advantages import masked_mean, masked_var

AGGREGATES = ("token_mean", "sequence_mean", "constant")


def token_aggregate(
    per_token: Tensor, mask: Tensor, mode: str = "token_mean", constant: float | None = None
) -> Tensor:
    """Reduce a per-token quantity [B, T] over the valid positions of ``mask`` to a scalar.

    ``constant`` is required (and > 0) for mode "constant" and must be None otherwise.
    """
    if mode not in AGGREGATES:
        raise ValueError(f"unknown aggregate {mode!r}; use one of {', '.join(AGGREGATES)}")
    if (mode == "constant") != (constant is not None):
        raise ValueError("aggregate 'constant' needs constant=..., and only it takes one")
    if mode == "token_mean":
        return masked_mean(per_token, mask)
    if mode == "sequence_mean":
        return masked_mean(per_token, mask, dim=1).mean()
    assert constant is not None
    if constant <= 0:
        raise ValueError(f"constant must be > 0, got {constant}")
    masked = torch.where(mask.bool(), per_token, torch.zeros_like(per_token))
    return (masked.sum(dim=1) / constant).mean()


def _per_token_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    # critic-free estimators give one advantage per completion ([B]): apply it to every token
    return advantages.unsqueeze(-1).expand_as(like) if advantages.dim() == 1 else advantages


def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: float = 0.2,
    aggregate: str = "token_mean",
    constant: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate as a loss.

    logp: [B, T] current log-probs of the sampled tokens (with gradient); old_logp: [B, T]
    at sampling time; advantages: [B, T], or [B] for one advantage per completion;
    mask: [B, T]. Returns (scalar loss, {"approxkl", "clipfrac", "ratio_mean"}).
    """
    advantages = _per_token_advantages(advantages.detach(), logp)
    log_ratio = logp - old_logp.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = token_aggregate(torch.maximum(unclipped, clipped), mask, aggregate, constant)
    metrics = {
        "approxkl": 0.5 * masked_mean(log_ratio.detach() ** 2, mask),
        "clipfrac": masked_mean((clipped > unclipped).to(logp.dtype), mask),
        "ratio_mean": masked_mean(ratio.detach(), mask),
    }
    return loss, {k: v.detach() for k, v in metrics.items()}


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float = 0.2,
    aggregate: str = "token_mean",
    constant: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss ``0.5 max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)``.

    values: [B, T] current predictions (with gradient); old_values, returns, mask: [B, T].
    Returns (scalar loss, {"clipfrac"}: fraction of valid tokens where the clipped term wins).
    """
    old_values, returns = old_values.detach(), returns.detach()
    clipped_values = torch.clamp(values, old_values - clip, old_values + clip)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    per_token = 0.5 * torch.maximum(unclipped_err, clipped_err)
    loss = token_aggregate(per_token, mask, aggregate, constant)
    clipfrac = masked_mean((clipped_err > unclipped_err).to(values.dtype), mask)
    return loss, {"clipfrac": clipfrac.detach()}


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the softmax of each position's logits: [B, T, V] -> [B, T] (nats).

    Half-precision logits are computed in float32; float64 stays float64.
    """
    log_probs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """``1 - Var(R - V) / Var(R)`` over valid tokens (detached scalar; NaN if Var(R) = 0)."""
    values, returns = values.detach(), returns.detach()
    var_returns = masked_var(returns, mask, unbiased=False)
    return 1.0 - masked_var(returns - values, mask, unbiased=False) / var_returns
