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
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    per_token = token_logps(logits[:, :-1], input_ids[:, 1:])
    mask = completion_mask[:, 1:].to(per_token.dtype)
    return (per_token * mask).sum(-1), mask.sum(-1)


def pair_logps(model: nn.Module, batch: dict[str, Tensor]) -> PairLogps:
    """Chosen and rejected log-probs of a pair batch of either layout: packed (its
    ``logits_mask``; :func:`packed_pair_logps`) or padded (:func:`padded_pair_logps`)."""
    if "logits_mask" in batch:
        return packed_pair_logps(model, batch)
    return padded_pair_logps(model, batch)


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


def padded_pair_logps(model: nn.Module, batch: dict[str, Tensor]) -> PairLogps:
    """Chosen and rejected log-probs of a concatenated pair batch (rows 0..B-1 chosen,
    B..2B-1 rejected) from one forward pass."""
    logps, n = sequence_logps(
        model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    )
    b = logps.shape[0] // 2
    return PairLogps(logps[:b], logps[b:], n[:b], n[b:])


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


def packed_pair_logps(model: nn.Module, batch: dict[str, Tensor]) -> PairLogps:
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
    return PairLogps(sums[:b], sums[b:], counts[:b], counts[b:])
