"""PPO's clipped losses and the diagnostics logged beside them (ALGORITHMS.md section 3).

* Policy loss -- Schulman et al. 2017 (arXiv 1707.06347), eq. 7, written as a loss:
  ``max(-A rho, -A clip(rho, 1 - eps, 1 + eps))``, ``rho = exp(logp - old_logp)``. Options:
  clip-higher (DAPO, Yu et al. 2025, arXiv 2503.14476, eq. 10: ``clip(rho, 1 - eps_low,
  1 + eps_high)``); two-sided clipping (INTELLECT-2, arXiv 2505.07291, sec. 3.3: the unclipped
  ratio capped at ``delta`` so that a negative advantage cannot drive the loss without bound;
  TRL's ``delta``); the sequence-level ratio of GSPO (Zheng et al. 2025, arXiv 2507.18071,
  eq. 7: ``s_i = exp(mean_t (logp - old_logp))``, one number per sequence; TRL's
  ``importance_sampling_level="sequence"``).
* Value loss -- the clipped value loss of the OpenAI baselines / Ziegler et al. code:
  ``0.5 max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)``.

Per-token terms are reduced by ``token_aggregate``:

* ``token_mean``    -- mean over every valid token of the (minibatch on this process) batch
                       (PPO-RLHF; TRL's ``bnpo``);
* ``global_token_mean`` -- the token sum divided by the valid tokens of the optimiser step's
                       batch over every process (DAPO, eq. 8; TRL's ``dapo``): with one process
                       the same as ``token_mean``;
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

#: The one list of aggregations (the online losses' ``loss.aggregate``).
AGGREGATES = ("token_mean", "global_token_mean", "sequence_mean", "constant")
RATIO_LEVELS = ("token", "sequence")


def token_aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: str = "token_mean",
    constant: float | None = None,
    tokens: Tensor | float | None = None,
) -> Tensor:
    """Reduce a per-token quantity [B, T] over the valid positions of ``mask`` to a scalar.

    ``constant`` is required (and > 0) for mode "constant" and must be None otherwise.
    ``tokens`` is the divisor of "global_token_mean": the valid tokens of the step's batch over
    every process divided by the number of processes (data parallelism averages the
    processes' gradients); None: this batch's own count.
    """
    if mode not in AGGREGATES:
        raise ValueError(f"unknown aggregate {mode!r}; use one of {', '.join(AGGREGATES)}")
    if (mode == "constant") != (constant is not None):
        raise ValueError("aggregate 'constant' needs constant=..., and only it takes one")
    if mode == "token_mean" or (mode == "global_token_mean" and tokens is None):
        return masked_mean(per_token, mask)
    if mode == "global_token_mean":
        masked = torch.where(mask.bool(), per_token, torch.zeros_like(per_token))
        return masked.sum() / torch.as_tensor(tokens, dtype=per_token.dtype).clamp(min=1)
    if mode == "sequence_mean":
        return masked_mean(per_token, mask, dim=1).mean()
    assert constant is not None
    if constant <= 0:
        raise ValueError(f"constant must be > 0, got {constant}")
    masked = torch.where(mask.bool(), per_token, torch.zeros_like(per_token))
    return (masked.sum(dim=1) / constant).mean()


def per_token_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    """[B, T] advantages: one per completion ([B], the critic-free estimators') applied to
    every token of ``like``; a [B, T] tensor as it is."""
    return advantages.unsqueeze(-1).expand_as(like) if advantages.dim() == 1 else advantages


def importance_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """``pi / pi_old`` per token ([B, T]), or GSPO's per sequence: the exponentiated mean of
    the valid tokens' log-ratios (arXiv 2507.18071, eq. 7), as [B, 1] (one number per sequence,
    broadcast over its tokens). The gradient flows through ``logp`` only."""
    if level not in RATIO_LEVELS:
        raise ValueError(f"unknown ratio level {level!r}; use one of {', '.join(RATIO_LEVELS)}")
    log_ratio = logp - old_logp.detach()
    if level == "sequence":
        log_ratio = masked_mean(log_ratio, mask, dim=1).unsqueeze(-1)
    return torch.exp(log_ratio)


def clipped_policy_terms(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: float = 0.2,
    clip_high: float | None = None,
    delta: float | None = None,
    ratio_level: str = "token",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate per token, before aggregation: ([B, T] loss terms, metrics).

    ``clip_high`` (None: ``clip``) is the upper epsilon, ``delta`` (None: off) the cap of the
    unclipped ratio, ``ratio_level`` token or sequence (see the module docstring).
    """
    advantages = per_token_advantages(advantages.detach(), logp)
    ratio = importance_ratio(logp, old_logp, mask, ratio_level)
    high = clip if clip_high is None else clip_high
    capped = ratio if delta is None else torch.clamp(ratio, max=delta)
    unclipped = -advantages * capped
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    return per_token, ratio_metrics(logp, old_logp, mask, ratio, clipped > unclipped)


def ratio_metrics(
    logp: Tensor, old_logp: Tensor, mask: Tensor, ratio: Tensor, clipped: Tensor
) -> dict[str, Tensor]:
    """The diagnostics logged beside every policy loss (detached scalars over valid tokens):
    ``approxkl`` (k2 of the token log-ratios), ``clipfrac`` (where ``clipped`` is true) and
    ``ratio_mean`` (of the ratio the loss uses, token or sequence level)."""
    log_ratio = (logp - old_logp).detach()
    ratio, clipped = ratio.detach().expand_as(logp), clipped.expand_as(logp)
    metrics = {
        "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
        "clipfrac": masked_mean(clipped.to(logp.dtype), mask),
        "ratio_mean": masked_mean(ratio, mask),
    }
    return {k: v.detach() for k, v in metrics.items()}


def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: float = 0.2,
    aggregate: str = "token_mean",
    constant: float | None = None,
    clip_high: float | None = None,
    delta: float | None = None,
    ratio_level: str = "token",
    tokens: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate as a loss.

    logp: [B, T] current log-probs of the sampled tokens (with gradient); old_logp: [B, T]
    at sampling time; advantages: [B, T], or [B] for one advantage per completion;
    mask: [B, T]. Returns (scalar loss, {"approxkl", "clipfrac", "ratio_mean"}).
    """
    per_token, metrics = clipped_policy_terms(
        logp, old_logp, advantages, mask, clip, clip_high, delta, ratio_level
    )
    return token_aggregate(per_token, mask, aggregate, constant, tokens), metrics


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
