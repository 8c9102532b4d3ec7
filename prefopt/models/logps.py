"""Completion log-probabilities from one forward pass."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Hashable
from typing import Any, cast

import torch
from torch import Tensor, nn

from prefopt.losses.base import PairLogps
from prefopt.losses.unpaired import UnpairedLogps


def token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(labels) under `logits`, [N, T, V] x [N, T] -> [N, T], computed in fp32.

    Uses ``gather - logsumexp`` so the full-vocabulary log-softmax tensor is never stored.
    """
    logits = logits.float()
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logps(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Summed log-probs of the completion tokens and their counts.

    input_ids, attention_mask, completion_mask: [N, T] (right padded). Position t's token is
    predicted from the logits at t-1, so masks are shifted by one. Returns ([N], [N]).
    """
    _, per_token, mask = _completion_token_logps(model, input_ids, attention_mask, completion_mask)
    return (per_token * mask).sum(-1), mask.sum(-1)


def _completion_token_logps(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The shifted logits [N, T-1, V], per-token log-probs [N, T-1] and completion mask."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logits = logits[:, :-1]
    per_token = token_logps(logits, input_ids[:, 1:])
    return logits, per_token, completion_mask[:, 1:].to(per_token.dtype)


#: The optional summaries of :class:`PairLogps` a loss may ask for (``summaries=``): "shared"
#: fills ``chosen_shared`` / ``rejected_shared`` (LD-DPO), "aligned" fills ``chosen_aligned``
#: / ``rejected_aligned`` (WPO).
SUMMARIES = frozenset({"shared", "aligned"})


def pair_logps(
    model: nn.Module, batch: dict[str, Tensor], summaries: frozenset[str] = frozenset()
) -> PairLogps:
    """Chosen and rejected log-probs of a pair batch of either layout: packed (its
    ``logits_mask``; :func:`packed_pair_logps`) or padded (:func:`padded_pair_logps`), with
    the optional `summaries` (:data:`SUMMARIES`)."""
    unknown = set(summaries) - SUMMARIES
    if unknown:
        raise ValueError(
            f"unknown log-prob summaries {sorted(unknown)}; known: {sorted(SUMMARIES)}"
        )
    if "logits_mask" in batch:
        return packed_pair_logps(model, batch, summaries)
    return padded_pair_logps(model, batch, summaries)


def unpaired_logps(model: nn.Module, batch: dict[str, Tensor]) -> UnpairedLogps:
    """Log-probs of an unpaired batch (``UnpairedCollator``): rows 0..B-1 (B = the number of
    ``desirable`` flags) are the examples; rows B..2B-1, when present, the mismatched pairs of
    KTO's KL estimate, computed without a graph (the estimate is never differentiated)."""
    b = batch["desirable"].shape[0]
    keys = ("input_ids", "attention_mask", "completion_mask")
    logps, n = sequence_logps(model, *(batch[k][:b] for k in keys))
    mismatched = None
    if batch["input_ids"].shape[0] > b:
        with torch.no_grad():
            mismatched, _ = sequence_logps(model, *(batch[k][b:] for k in keys))
    return UnpairedLogps(logps, n, mismatched)


def padded_pair_logps(
    model: nn.Module, batch: dict[str, Tensor], summaries: frozenset[str] = frozenset()
) -> PairLogps:
    """Chosen and rejected log-probs of a concatenated pair batch (rows 0..B-1 chosen,
    B..2B-1 rejected) from one forward pass."""
    logits, per_token, mask = _completion_token_logps(
        model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    )
    logps, n = (per_token * mask).sum(-1), mask.sum(-1)
    b = logps.shape[0] // 2
    extra: dict[str, Tensor] = {}
    if summaries:
        keep = mask.bool()
        rows = torch.arange(2 * b, device=keep.device).unsqueeze(1).expand_as(keep)[keep]
        sum_sq = _log_sum_sq_probs(logits[keep]) if "aligned" in summaries else None
        extra = _pair_summaries(per_token[keep], rows, 2 * b, summaries, sum_sq)
    return PairLogps(logps[:b], logps[b:], n[:b], n[b:], **extra)


@torch.no_grad()
def _log_sum_sq_probs(logits: Tensor) -> Tensor:
    """``log sum_v p(v)^2`` of each row of `logits` [N, V] -> [N], in fp32, no gradient."""
    logits = logits.float()
    return torch.logsumexp(2 * logits, dim=-1) - 2 * torch.logsumexp(logits, dim=-1)


def _pair_summaries(
    per_token: Tensor,
    segments: Tensor,
    n_segments: int,
    summaries: frozenset[str],
    log_sum_sq: Tensor | None,
) -> dict[str, Tensor]:
    """The optional :class:`PairLogps` summaries from the scored completion tokens of a batch.

    per_token: [N] log-probs; segments: [N] the completion of each token (0..B-1 chosen of
    pair j, B..2B-1 rejected of pair j; a completion's tokens in their order, not necessarily
    contiguous); log_sum_sq: [N] ``log sum_v p(v)^2`` at each token ("aligned" only).
    """
    b = n_segments // 2
    out: dict[str, Tensor] = {}
    if "shared" in summaries:
        # each token's rank within its completion: a stable sort by completion keeps the order
        counts = torch.bincount(segments, minlength=n_segments)
        order = torch.argsort(segments, stable=True)
        first = counts.cumsum(0) - counts
        rank = torch.empty_like(segments)
        rank[order] = torch.arange(len(segments), device=segments.device) - first[segments[order]]
        shared_length = torch.minimum(counts[:b], counts[b:]).repeat(2)
        in_shared = (rank < shared_length[segments]).to(per_token.dtype)
        sums = per_token.new_zeros(n_segments).index_add(0, segments, per_token * in_shared)
        out["chosen_shared"], out["rejected_shared"] = sums[:b], sums[b:]
    if "aligned" in summaries:
        assert log_sum_sq is not None
        aligned = (per_token - log_sum_sq).detach()
        sums = aligned.new_zeros(n_segments).index_add(0, segments, aligned)
        out["chosen_aligned"], out["rejected_aligned"] = sums[:b], sums[b:]
    return out


def attention_layout(model: nn.Module, mask: Tensor) -> Tensor:
    """A packed batch's boolean [R, 1, L, L] mask in the form the model's attention takes: as
    it is for SDPA, additive (0 / most negative) for eager attention. Kernels that take no
    arbitrary mask (flash attention) cannot run the packed layout."""
    config = getattr(_inner_model(model), "config", None)
    impl = getattr(config, "_attn_implementation", "sdpa") or "sdpa"
    if impl == "sdpa":
        return mask
    if impl == "eager":
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(
            ~mask, torch.finfo(torch.float32).min
        )
    raise ValueError(
        f"data.layout packed needs attention that takes a custom mask (sdpa or eager); the "
        f"model uses {impl!r}: set data.layout padded"
    )


def takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether the model under any DDP / PEFT wrapper names ``logits_to_keep`` (the wrappers
    pass keyword arguments through). Asked at every forward: the answer is kept per class."""
    return _forward_names_logits_to_keep(cast(Hashable, type(_inner_model(model))))


def _inner_model(model: nn.Module) -> Any:
    """The transformers model under a DDP and / or PEFT wrapper."""
    inner: Any = getattr(model, "module", model)  # DDP
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PEFT


@functools.cache
def _forward_names_logits_to_keep(cls: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def packed_pair_logps(
    model: nn.Module, batch: dict[str, Tensor], summaries: frozenset[str] = frozenset()
) -> PairLogps:
    """Chosen and rejected log-probs of a packed batch (:class:`prefopt.data.collate.
    PackedPairCollator`): one forward over the shared-prompt segments, logits only at the
    positions that predict a completion token (``logits_to_keep``; the full-vocabulary tensor
    exists for those positions only), the log-softmax normaliser computed once per kept
    position (the prompt's last position serves the first chosen and the first rejected token),
    and per-token log-probs summed per completion."""
    mask = batch["logits_mask"]
    kwargs: dict[str, Any] = {
        "input_ids": batch["input_ids"],
        "position_ids": batch["position_ids"],
        "attention_mask": attention_layout(model, batch["attention_mask"]),
        "use_cache": False,
    }
    if takes_logits_to_keep(model):
        logits = model(**kwargs, logits_to_keep=mask).logits
        logits = logits.reshape(-1, logits.shape[-1])  # [N kept, V]
    else:
        logits = model(**kwargs).logits[mask]
    logits = logits.float()
    index, targets = batch["target_index"], batch["target_ids"]
    per_token = logits[index, targets] - torch.logsumexp(logits, dim=-1)[index]
    segments = batch["target_segment"]
    n = batch["last_index"].shape[0]
    sums = per_token.new_zeros(n).index_add(0, segments, per_token)
    counts = torch.bincount(segments, minlength=n).to(per_token.dtype)
    b = n // 2
    extra: dict[str, Tensor] = {}
    if summaries:
        sum_sq = _log_sum_sq_probs(logits)[index] if "aligned" in summaries else None
        extra = _pair_summaries(per_token, segments, n, summaries, sum_sq)
    return PairLogps(sums[:b], sums[b:], counts[:b], counts[b:], **extra)
