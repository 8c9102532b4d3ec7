"""Completion log-probabilities from one forward pass."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prefopt.losses.base import PairLogps


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
    """Chosen and rejected log-probs of a concatenated pair batch (rows 0..B-1 chosen,
    B..2B-1 rejected) from one forward pass."""
    logps, n = sequence_logps(
        model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    )
    b = logps.shape[0] // 2
    return PairLogps(logps[:b], logps[b:], n[:b], n[b:])
