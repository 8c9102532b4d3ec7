"""Token ids for preference pairs, demonstrations and prompts, with an exact boundary.

Why separate tokenization: the losses score only completion tokens, so the ids must split
exactly where the prompt ends. Tokenizing ``prompt + completion`` as one string lets BPE merge
characters across the boundary (``"wor" + "ld"`` becomes ``"world"``), which would move
completion text into the prompt or the reverse. Prompt and completion are therefore tokenized
separately (no special tokens) and their ids concatenated; BOS is put in front of the prompt
and EOS after each completion by hand.

Why a plain list and not ``datasets.Dataset.from_list(...).map(...)``: the records are already
an in-memory list, and an in-memory `Dataset` writes no cache file, so `map` would cache
nothing across runs while adding Arrow conversion and fingerprinting of the tokenizer. The
tokenizer is called once per field over the whole list (batched, through the fast Rust
tokenizer), which is the expensive part that `map` would have batched too.

Truncation (see docs/data.md): when prompt + longest completion exceeds `max_length`, the prompt
is cut from the left to `max_prompt_length` (BOS kept first), then completions are cut from the
right to fit; a cut completion loses its EOS. A row whose prompt leaves no room for a single
completion token is dropped as ``prompt_too_long``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prefopt.data.records import BadRows, render_prompt, render_record

logger = logging.getLogger(__name__)

PASSTHROUGH_KEYS = ("id", "scores", "desirable")  # desirable: unpaired records (KTO, BCO)


def tokenize_preference(
    records: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    *,
    max_length: int,
    max_prompt_length: int,
    bad_rows: BadRows | None = None,
    add_bos: bool | None = None,
) -> list[dict[str, Any]]:
    """Tokenize pairs to ``prompt_ids``, ``chosen_ids``, ``rejected_ids``, ``margin``, ``index``.

    `add_bos=None` adds the tokenizer's BOS when it has one (never twice). Dropped rows are
    counted in `bad_rows` (or logged when it is None).
    """
    out = []
    for pos, row, prompt, (chosen, rejected) in _fitted_rows(
        records, tokenizer, ("chosen", "rejected"), max_length, max_prompt_length, add_bos, bad_rows
    ):
        example = {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}
        margin = float(row.get("margin") or 0.0)
        out.append({**example, "margin": margin, **_meta(row, pos)})
    return out


def tokenize_sft(
    records: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    *,
    max_length: int,
    max_prompt_length: int,
    bad_rows: BadRows | None = None,
    add_bos: bool | None = None,
) -> list[dict[str, Any]]:
    """Tokenize demonstrations to ``prompt_ids``, ``completion_ids``, ``index`` (same rules);
    unpaired records (KTO, BCO) keep their ``desirable``."""
    return [
        {"prompt_ids": prompt, "completion_ids": completion, **_meta(row, pos)}
        for pos, row, prompt, (completion,) in _fitted_rows(
            records, tokenizer, ("completion",), max_length, max_prompt_length, add_bos, bad_rows
        )
    ]


def tokenize_prompts(
    records: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    *,
    max_prompt_length: int,
    add_bos: bool | None = None,
) -> list[dict[str, Any]]:
    """Tokenize prompts only (for generation), cut from the left to `max_prompt_length`."""
    _check_lengths(max_prompt_length, max_prompt_length)
    rows = list(records)
    texts = [render_prompt(tokenizer, row["prompt"]) for row in rows]
    bos, keep_first = bos_id(tokenizer, add_bos), getattr(tokenizer, "bos_token_id", None)
    out = []
    for pos, (row, ids) in enumerate(zip(rows, encode(tokenizer, texts), strict=True)):
        prompt = truncate_left(with_bos(ids, bos), max_prompt_length, keep_first)
        out.append({"prompt_ids": prompt, **_meta(row, pos)})
    return out


def fit_lengths(
    prompt: list[int],
    completions: Sequence[list[int]],
    *,
    max_length: int,
    max_prompt_length: int,
    bos: int | None = None,
) -> tuple[list[int], list[list[int]]] | None:
    """Apply the truncation rules; None when the prompt leaves no room for a completion."""
    if len(prompt) + max(len(c) for c in completions) <= max_length:
        return prompt, list(completions)
    prompt = truncate_left(prompt, max_prompt_length, bos)
    room = max_length - len(prompt)
    if room < 1:
        return None
    return prompt, [c[:room] for c in completions]


def truncate_left(ids: list[int], length: int, bos: int | None = None) -> list[int]:
    """Keep the last `length` ids; a leading `bos` stays first (and counts in `length`)."""
    if len(ids) <= length:
        return ids
    if bos is not None and ids and ids[0] == bos:
        return ids[:1] + ids[len(ids) - (length - 1) :]
    return ids[len(ids) - length :]


def with_bos(ids: list[int], bos: int | None) -> list[int]:
    """Put `bos` in front unless it is None or already first (e.g. rendered by a template)."""
    if bos is None or (ids and ids[0] == bos):
        return ids
    return [bos, *ids]


def bos_id(tokenizer: Any, add_bos: bool | None) -> int | None:
    """The BOS id to prepend: the tokenizer's when `add_bos` is None or True, else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is None:
        raise ValueError("add_bos=True but the tokenizer has no bos_token")
    return bos if add_bos is None or add_bos else None


def eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; completions need one to end")
    return int(eos)


def encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens, in one batched call."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _rendered(
    records: Iterable[Mapping[str, Any]], tokenizer: Any, keys: tuple[str, ...]
) -> list[dict[str, Any]]:
    return [render_record(row, tokenizer, keys) for row in records]


def _fitted_rows(
    records: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    keys: tuple[str, ...],
    max_length: int,
    max_prompt_length: int,
    add_bos: bool | None,
    bad_rows: BadRows | None,
) -> list[tuple[int, dict[str, Any], list[int], list[list[int]]]]:
    """``(position, rendered row, prompt ids, completion ids per key)`` of every row that fits
    the limits; a row whose prompt leaves no room is dropped and counted as
    ``prompt_too_long`` in `bad_rows` (logged when it is None)."""
    rows = _rendered(records, tokenizer, keys)
    fitted = _fit_all(rows, tokenizer, keys, max_length, max_prompt_length, add_bos)
    out = []
    with _dropped(bad_rows) as bad:
        for pos, (row, (ids, cut)) in enumerate(zip(rows, fitted, strict=True)):
            if ids is None:
                bad.add("prompt_too_long", row.get("index", pos))
                continue
            bad.kept += 1
            bad.truncated += cut
            out.append((pos, row, ids[0], ids[1]))
    return out


def _fit_all(
    rows: list[dict[str, Any]],
    tokenizer: Any,
    keys: tuple[str, ...],
    max_length: int,
    max_prompt_length: int,
    add_bos: bool | None,
) -> list[tuple[tuple[list[int], list[list[int]]] | None, bool]]:
    """Encode prompt and completions of every row, add BOS/EOS, and fit them to the limits;
    each row's fitted ids (None: no room) and whether the limits cut it."""
    _check_lengths(max_length, max_prompt_length)
    bos, eos = bos_id(tokenizer, add_bos), eos_id(tokenizer)
    keep_first = getattr(tokenizer, "bos_token_id", None)  # BOS rendered by a template stays
    prompts = encode(tokenizer, [row["prompt"] for row in rows])
    completions = zip(*(encode(tokenizer, [row[k] for row in rows]) for k in keys), strict=True)
    out = []
    for prompt, comps in zip(prompts, completions, strict=True):
        prompt, ended = with_bos(prompt, bos), [[*c, eos] for c in comps]
        cut = len(prompt) + max(len(c) for c in ended) > max_length
        fitted = fit_lengths(
            prompt,
            ended,
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            bos=keep_first,
        )
        out.append((fitted, cut))
    return out


def _meta(row: Mapping[str, Any], pos: int) -> dict[str, Any]:
    meta = {"index": row.get("index", pos)}
    meta.update({k: row[k] for k in PASSTHROUGH_KEYS if row.get(k) is not None})
    return meta


def _check_lengths(max_length: int, max_prompt_length: int) -> None:
    if max_prompt_length < 1 or max_length < 1:
        raise ValueError(f"lengths must be >= 1, got {max_length=}, {max_prompt_length=}")


class _dropped:
    """Context giving a BadRows to fill: the caller's, or a local one logged at the end."""

    def __init__(self, bad_rows: BadRows | None) -> None:
        self.own = bad_rows is None
        self.bad = BadRows() if bad_rows is None else bad_rows

    def __enter__(self) -> BadRows:
        return self.bad

    def __exit__(self, *exc: object) -> None:
        if self.own and self.bad.noteworthy:
            logger.warning("tokenization %s", self.bad.report())


TEXT_KEYS = ("prompt", "chosen", "rejected", "completion")


def unknown_token_share(
    records: Sequence[Mapping[str, Any]], tokenizer: Any, sample: int = 1000
) -> tuple[float, Mapping[str, Any] | None]:
    """The share of the tokens of the first ``sample`` records' texts (prompt and completions)
    that ``tokenizer`` maps to its unknown token, and the first record with one (or None).

    A tokenizer without an unknown token (byte-level BPE: every text has ids) gives 0.0."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return 0.0, None
    texts, owners = [], []
    for record in records[:sample]:
        for key in TEXT_KEYS:
            if isinstance(record.get(key), str):
                texts.append(record[key])
                owners.append(record)
    if not texts:
        return 0.0, None
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    total = sum(len(row) for row in ids)
    unknown = [row.count(unk) for row in ids]
    first = next((owners[i] for i, n in enumerate(unknown) if n), None)
    return (sum(unknown) / total if total else 0.0), first


def unknown_tokens_problem(
    records: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    max_fraction: float,
    *,
    where: str,
    tokenizer_name: str,
) -> str | None:
    """A one-line refusal when more than ``max_fraction`` of the data's tokens are unknown to
    the tokenizer (English text with the world's word-level tokenizer is all ``<unk>``: a run
    would train on nothing), else None. ``where`` names the data (``data.source=...``)."""
    share, first = unknown_token_share(records, tokenizer)
    if share <= max_fraction or first is None:
        return None
    text = next(str(first[k]) for k in TEXT_KEYS if isinstance(first.get(k), str))
    return (
        f"{where}: {share:.0%} of its tokens are unknown to the tokenizer ({tokenizer_name}), "
        f"e.g. row {first.get('index', 0)}: {text[:40]!r}; training would see only "
        f"{tokenizer.unk_token!r}. Set model.name_or_path (or model.tokenizer) to a model whose "
        "tokenizer covers this text, e.g. model.name_or_path=EleutherAI/pythia-160m "
        f"(data.max_unknown_fraction={max_fraction:g} is the share allowed)"
    )
