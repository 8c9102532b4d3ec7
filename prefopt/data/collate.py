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


class UnpairedCollator(_Padder):
    """Unpaired examples (KTO, BCO) to a [B, T] batch, or [2B, T] with ``mismatched``.

    Rows 0..B-1 are prompt_i + completion_i. With ``mismatched``, rows B..2B-1 are prompt_i +
    completion_{i-1} (cyclically, as TRL), the mismatched pairs of KTO's KL estimate; such a
    completion is cut from the right to fit ``max_length`` (it then loses its EOS). Also
    ``desirable`` [B] (bool) and ``index`` [B] when the examples carry it.
    """

    def __init__(
        self,
        pad_token_id: int,
        max_length: int,
        mismatched: bool,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        super().__init__(pad_token_id, pad_to_multiple_of)
        self.max_length, self.mismatched = max_length, mismatched

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [e["prompt_ids"] for e in examples]
        completions = [e["completion_ids"] for e in examples]
        if self.mismatched:
            shifted = zip(prompts, completions[-1:] + completions[:-1], strict=True)
            completions += [c[: self.max_length - len(p)] for p, c in shifted]
            prompts = prompts + prompts
        batch = self.pad_sequences(prompts, completions)
        batch["desirable"] = torch.tensor([bool(e["desirable"]) for e in examples])
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


def causal_mask(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[n, n] bool, lower triangular: position i may attend to j <= i."""
    return torch.ones((max(n, 1), max(n, 1)), dtype=torch.bool, device=device).tril()


def lay_shared_prefix(
    allowed: torch.Tensor,
    positions: torch.Tensor,
    start: int,
    prompt_len: int,
    blocks: Sequence[int],
    causal: torch.Tensor,
) -> list[int]:
    """Mask and positions of one shared-prefix segment of a packed row, in place: a prompt of
    ``prompt_len`` tokens at ``start`` (causal), then blocks of the given lengths, each
    attending to the whole prompt and causally to itself (never to another block), its
    positions continuing the prompt's. ``allowed`` [L, L] and ``positions`` [L] are one row's;
    ``causal`` a :func:`causal_mask` at least as wide as the longest run. Returns each block's
    first column. The packed pair layout (blocks: chosen, rejected) and the online groups
    (blocks: a prompt's k completions, prefopt.models.generation) share it."""
    prompt = slice(start, start + prompt_len)
    allowed[prompt, prompt] = causal[:prompt_len, :prompt_len]
    positions[prompt] = torch.arange(prompt_len, device=positions.device)
    starts, at = [], start + prompt_len
    for n in blocks:
        block = slice(at, at + n)
        allowed[block, prompt] = True
        allowed[block, block] = causal[:n, :n]
        positions[block] = torch.arange(prompt_len, prompt_len + n, device=positions.device)
        starts.append(at)
        at += n
    return starts


class PackedPairCollator:
    """Pairs packed with a shared prompt: each pair is ONE segment ``prompt | chosen |
    rejected`` and several segments share a row, so the prompt is computed once per pair (not
    twice, as in :class:`PreferenceCollator`) and no row is padded to the batch's longest pair.

    Inside a segment the chosen tokens attend causally to the prompt and to themselves; the
    rejected tokens attend to the prompt and to themselves, never to the chosen ones, and their
    positions restart where the prompt ends -- so every completion sees exactly the context it
    sees in its own padded row, and its log-probabilities are the same up to float rounding
    (tests/test_fast_paths.py). Segments are placed first-fit-decreasing into rows of at most
    ``row_length`` tokens (a longer segment gets a row of its own); rows are right-padded to the
    longest row, and a padding position attends only to itself (no softmax over nothing).

    Returns ``input_ids``, ``position_ids`` [R, L]; ``attention_mask`` [R, 1, L, L] (bool, True:
    may attend); ``logits_mask`` [R, L] (bool: the positions whose next-token prediction scores
    a completion token -- the only positions that need logits); for the flattened kept
    positions ``target_index`` [N] (which kept position predicts), ``target_ids`` [N] and
    ``target_segment`` [N] (0..B-1 chosen of pair j, B..2B-1 rejected of pair j);
    ``last_index`` [2B] (flat index into R*L of the last non-pad token of prompt+chosen /
    prompt+rejected: where a sequence-classification model pools its score); ``margin`` [B]
    and ``index`` [B] as the padded collator.
    """

    def __init__(self, pad_token_id: int, row_length: int) -> None:
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; set a pad token on the tokenizer")
        if row_length < 1:
            raise ValueError(f"row_length must be >= 1, got {row_length}")
        self.pad_token_id = int(pad_token_id)
        self.row_length = int(row_length)

    def _rows(self, lengths: list[int]) -> list[list[int]]:
        """First-fit-decreasing: the pair indices of each row (row order, then pair order,
        deterministic)."""
        rows: list[list[int]] = []
        room: list[int] = []
        for pair in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
            for r, free in enumerate(room):
                if lengths[pair] <= free:
                    rows[r].append(pair)
                    room[r] -= lengths[pair]
                    break
            else:
                rows.append([pair])
                room.append(self.row_length - lengths[pair])
        return rows

    def _last_real(self, prompt: list[int], completion: list[int], default: int) -> int:
        """Index in prompt+completion of the last non-pad token (`default` if none)."""
        sequence = [*prompt, *completion]
        for i in range(len(sequence) - 1, -1, -1):
            if sequence[i] != self.pad_token_id:
                return i
        return default

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        b = len(examples)
        parts = [(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]) for e in examples]
        lengths = [len(p) + len(c) + len(r) for p, c, r in parts]
        rows = self._rows(lengths)
        width = max(sum(lengths[i] for i in row) for row in rows)
        n_rows = len(rows)
        input_ids = torch.full((n_rows, width), self.pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((n_rows, width), dtype=torch.long)
        allowed = torch.zeros((n_rows, width, width), dtype=torch.bool)
        logits_mask = torch.zeros((n_rows, width), dtype=torch.bool)
        last_index = torch.zeros(2 * b, dtype=torch.long)
        # (flat position that predicts, target id, segment) per scored completion token
        scored: list[tuple[int, int, int]] = []
        causal = causal_mask(width)
        for r, row in enumerate(rows):
            start = 0
            for pair in row:
                prompt, chosen, rejected = parts[pair]
                p, c, k = len(prompt), len(chosen), len(rejected)
                end = start + p + c + k
                input_ids[r, start:end] = torch.tensor([*prompt, *chosen, *rejected])
                lay_shared_prefix(allowed[r], position_ids[r], start, p, [c, k], causal)
                flat = r * width
                # token t of a completion is predicted at the position before it; the first
                # rejected token is predicted at the prompt's last position (shared with chosen)
                # (with an empty prompt a completion's first token has no context: unscored,
                # as in the padded layout)
                first = 0 if p else 1
                for j in range(first, c):
                    scored.append((flat + start + p - 1 + j, chosen[j], pair))
                for j in range(first, k):
                    at = start + p - 1 if j == 0 else start + p + c + j - 1
                    scored.append((flat + at, rejected[j], b + pair))
                # where a sequence-classification model pools: the last token that is not the
                # pad token (with pad = EOS, the token before the closing EOS)
                last_index[pair] = flat + start + self._last_real(prompt, chosen, p + c - 1)
                at = self._last_real(prompt, rejected, p + k - 1)
                last_index[b + pair] = flat + start + (at if at < p else at + c)
                start = end
            pad = torch.arange(start, width)
            allowed[r, pad, pad] = True  # padding attends to itself only: no empty softmax
        flat_positions = torch.tensor([s[0] for s in scored], dtype=torch.long)
        logits_mask.view(-1)[flat_positions] = True
        # index of each scored position among the kept (True) positions, in row-major order
        rank = torch.cumsum(logits_mask.view(-1).long(), 0) - 1
        batch = {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "attention_mask": allowed.unsqueeze(1),
            "logits_mask": logits_mask,
            "target_index": rank[flat_positions],
            "target_ids": torch.tensor([s[1] for s in scored], dtype=torch.long),
            "target_segment": torch.tensor([s[2] for s in scored], dtype=torch.long),
            "last_index": last_index,
            "margin": torch.tensor(
                [float(e.get("margin") or 0.0) for e in examples], dtype=torch.float32
            ),
        }
        return {**batch, **_index(examples)}
