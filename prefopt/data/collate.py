"""Batch collators: tokenized examples to padded tensors.

Why one concatenated batch for pairs: DPO-style losses need the log-probabilities of chosen and
rejected completions under the same model; stacking prompt+chosen (rows 0..B-1) over
prompt+rejected (rows B..2B-1) computes both in ONE forward pass, which is faster than two and
keeps any batch-dependent layers identical for both sides. `completion_mask` marks exactly the
completion tokens (EOS included) so the losses never score prompt or padding positions.

Training batches are right-padded (positions stay 0..n-1 for every row). Generation batches
(`PromptCollator`) are left-padded, so every prompt ends at the last column where new tokens
are appended. All masks are int64 0/1 tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def padded_length(lengths: Sequence[int], multiple: int | None) -> int:
    """Longest length, rounded up to a multiple of `multiple` when given."""
    longest = max(lengths, default=0)
    if multiple:
        longest = -(-longest // multiple) * multiple
    return longest


class _Padder:
    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; set a pad token on the tokenizer")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def pad_sequences(
        self, prompts: Sequence[list[int]], completions: Sequence[list[int]]
    ) -> dict[str, torch.Tensor]:
        """Right-padded prompt+completion rows with attention and completion masks."""
        lengths = [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
        width = padded_length(lengths, self.pad_to_multiple_of)
        input_ids = torch.full((len(lengths), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(lengths), width), dtype=torch.long)
        completion_mask = torch.zeros((len(lengths), width), dtype=torch.long)
        for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            n = len(prompt) + len(completion)
            input_ids[row, :n] = torch.tensor([*prompt, *completion], dtype=torch.long)
            attention_mask[row, :n] = 1
            completion_mask[row, len(prompt) : n] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_mask": completion_mask,
        }


def _index(examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The source row indices as a tensor, when every example has one."""
    if examples and all("index" in e for e in examples):
        return {"index": torch.tensor([int(e["index"]) for e in examples], dtype=torch.long)}
    return {}


class PreferenceCollator(_Padder):
    """Pairs to one [2B, T] batch: rows 0..B-1 prompt+chosen, rows B..2B-1 prompt+rejected.

    Returns ``input_ids``, ``attention_mask``, ``completion_mask`` ([2B, T]), ``margin`` [B]
    (float32) and ``index`` [B] when the examples carry it.
    """

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [e["prompt_ids"] for e in examples]
        completions = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
        batch = self.pad_sequences(prompts + prompts, completions)
        margins = [float(e.get("margin") or 0.0) for e in examples]
        batch["margin"] = torch.tensor(margins, dtype=torch.float32)
        return {**batch, **_index(examples)}


class SFTCollator(_Padder):
    """Demonstrations to a [B, T] batch: ``input_ids``, ``attention_mask``, ``completion_mask``."""

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [e["prompt_ids"] for e in examples]
        batch = self.pad_sequences(prompts, [e["completion_ids"] for e in examples])
        return {**batch, **_index(examples)}


class PromptCollator(_Padder):
    """Prompts for generation: left-padded ``input_ids`` and ``attention_mask`` [B, T]."""

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [e["prompt_ids"] for e in examples]
        width = padded_length([len(p) for p in prompts], self.pad_to_multiple_of)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            if prompt:
                input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
                attention_mask[row, width - len(prompt) :] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, **_index(examples)}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch on ``device`` (tensors moved, other values as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
