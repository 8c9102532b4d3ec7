"""Read preference and SFT data from local files, local folders or hub datasets into records.

Why this module exists: public preference datasets come in several shapes (prompt/chosen/
rejected columns, Anthropic HH whole dialogues, OpenAI TL;DR comparisons, chat-message lists)
and all of them contain some broken rows. Everything downstream wants one shape, so this module
does the reading (local files row by row in `prefopt.data.files`, so that a broken row is a
counted bad row and never a traceback; folders and hub datasets through `datasets`), detects
the format, and turns each raw row into a normalised record or a counted bad-row reason. The
hub path and the local-file path end in the same `normalize_rows`, so the normalisation tested
here on local files is the one that runs on hub rows.

Normalised records (plain dicts):

* preference: ``prompt``, ``chosen``, ``rejected`` (all text, or all message lists when the data
  is conversational and no tokenizer was given), ``margin`` (float | None), ``index`` (row index
  in the source), and ``id`` / ``scores`` / ``metadata`` when the row has them;
* sft: ``prompt``, ``completion``, ``index`` and ``id`` / ``metadata`` when present;
* unpaired (KTO, BCO): the sft fields and ``desirable`` (bool). Pairs become unpaired records
  with :func:`pairs_to_unpaired` (each pair gives a desirable and an undesirable example).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prefopt.data.files import first_line, read_file_rows
from prefopt.data.records import (
    BadRow,
    BadRows,
    DataError,
    Message,
    check_messages,
    is_blank,
    render_record,
    text_size,
)

KINDS = ("preference", "sft", "unpaired")
FORMATS = ("auto", "preference", "hh", "tldr", "conversation", "sft", "unpaired")
PAIR_FORMATS = ("preference", "hh", "tldr", "conversation")
HH_MARKER = "\n\nAssistant:"
HH_HUMAN = "\n\nHuman:"
TLDR_TEMPLATE = "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_COMPRESSIBLE = {".jsonl", ".json", ".csv"}  # parquet compresses internally; .parquet.gz fails
_DETECT_SAMPLE = 100
#: data.max_field_chars' default: far above any real row (HH-RLHF's longest field is ~14k)
MAX_FIELD_CHARS = 1_000_000

Row = Mapping[str, Any]
Parser = Callable[[Row], dict[str, Any]]


def load_records(
    source: str,
    *,
    kind: str = "preference",
    format: str = "auto",
    split: str = "train",
    data_dir: str | None = None,
    data_files: list[str] | None = None,
    max_rows: int | None = None,
    on_bad_row: str = "skip",
    tokenizer: Any = None,
    max_field_chars: int = MAX_FIELD_CHARS,
    allow_empty_prompt: bool = False,
) -> tuple[list[dict[str, Any]], BadRows]:
    """Load `source` and return (normalised records, bad rows).

    `source` is a local file or glob ending in .jsonl/.json/.csv (optionally .gz) or .parquet,
    a local folder, or a hub dataset name (read with ``datasets.load_dataset(source,
    data_dir=..., data_files=..., split=...)``). `split` applies to folders and hub datasets;
    a file or glob is always the whole of its rows. `max_rows` keeps the first rows of the
    source before validation. With a `tokenizer`, conversational records are rendered to text
    through its chat template; without one they keep their message lists. A row with a field
    of more than `max_field_chars` characters, or (unless `allow_empty_prompt`) a blank prompt,
    is a bad row (see `normalize_rows`).
    """
    _check_choice("kind", kind, KINDS)
    _check_choice("format", format, FORMATS)
    _check_choice("on_bad_row", on_bad_row, ("skip", "error"))
    if max_rows is not None and max_rows < 0:
        raise ValueError(f"max_rows must be >= 0, got {max_rows}")
    unreadable = BadRows()
    if file_builder(source) is not None:
        if split != "train":
            # a file has no splits: never hand back the training rows as "held out"
            raise DataError(
                f"{source}: a file has no {split!r} split; give the held-out rows "
                "as their own file (data.eval_source)"
            )
        rows: Any = read_file_rows(source, on_bad_row, unreadable)
        rows = rows[:max_rows] if max_rows is not None else rows
    else:
        rows = read_rows(source, split=split, data_dir=data_dir, data_files=data_files)
        if max_rows is not None:
            rows = rows.select(range(min(max_rows, len(rows))))
    records, bad = normalize_rows(
        rows,
        kind=kind,
        format=format,
        on_bad_row=on_bad_row,
        tokenizer=tokenizer,
        source=source,
        max_field_chars=max_field_chars,
        allow_empty_prompt=allow_empty_prompt,
    )
    return records, bad.merge(unreadable)


def records_kind(loss_kind: str, unpaired: str = "rows") -> str:
    """The records a loss of kind ``loss_kind`` reads: ``sft``, ``unpaired``, or
    ``preference`` (pairs; also for an unpaired loss with ``data.unpaired: pairs``, whose pairs
    :func:`pairs_to_unpaired` then splits)."""
    if loss_kind == "sft":
        return "sft"
    if loss_kind == "unpaired" and unpaired == "rows":
        return "unpaired"
    return "preference"


def read_rows(
    source: str,
    *,
    split: str = "train",
    data_dir: str | None = None,
    data_files: list[str] | None = None,
) -> Any:
    """Read the raw rows of a local folder or hub dataset as a `datasets.Dataset` (local files
    are read by `prefopt.data.files`, row by row). A failure to read is a one-line DataError
    naming the source and the reader's reason, not a traceback."""
    import datasets
    from datasets.exceptions import DatasetGenerationError

    try:
        dataset = datasets.load_dataset(
            source, data_dir=data_dir, data_files=data_files, split=split
        )
    except (DatasetGenerationError, ValueError, StopIteration, UnicodeError) as exc:
        cause: BaseException = exc
        for _ in range(10):  # the reader's own error, under datasets' wrappers
            inner = cause.__cause__ or cause.__context__
            if inner is None:
                break
            cause = inner
        raise DataError(f"{source}: cannot be read ({first_line(cause)})") from None
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(f"{source}: expected one split, got {type(dataset).__name__}")
    return dataset


def file_builder(source: str) -> str | None:
    """The `datasets` builder ("json", "parquet", "csv") for a file name, or None if not a file."""
    name = source.lower()
    if os.path.isdir(source):
        return None
    if name.endswith(".gz"):
        ext = os.path.splitext(name[:-3])[1]
        if ext == ".parquet":
            raise DataError(f"{source}: .parquet.gz is not readable; parquet compresses itself")
        return _BUILDERS[ext] if ext in _COMPRESSIBLE else None
    return _BUILDERS.get(os.path.splitext(name)[1])


def normalize_rows(
    rows: Iterable[Row],
    *,
    kind: str = "preference",
    format: str = "auto",
    on_bad_row: str = "skip",
    tokenizer: Any = None,
    source: str = "<rows>",
    max_field_chars: int = MAX_FIELD_CHARS,
    allow_empty_prompt: bool = False,
) -> tuple[list[dict[str, Any]], BadRows]:
    """Validate and normalise raw rows (any iterable of dicts, e.g. a `datasets.Dataset`).

    Besides each format's own checks, a row is bad when one of its fields holds more than
    `max_field_chars` characters (``field_too_long:<field>``, measured before anything
    tokenizes it, so one huge row cannot exhaust memory), when its prompt is blank
    (``empty_prompt``, unless `allow_empty_prompt`), when a message has a role chat templates
    do not know (``unknown_role:<field>``), or when the tokenizer's chat template fails on it
    (``chat_template_error``)."""
    _check_choice("kind", kind, KINDS)
    _check_choice("format", format, FORMATS)
    _check_choice("on_bad_row", on_bad_row, ("skip", "error"))
    if not hasattr(rows, "__getitem__"):
        rows = list(rows)
    try:
        fmt = detect_format(rows) if format == "auto" else format
        parse = _parser(kind, fmt)
    except DataError as err:
        raise DataError(f"{source}: {err}") from None
    completion_keys = ("chosen", "rejected") if kind == "preference" else ("completion",)
    records: list[dict[str, Any]] = []
    bad = BadRows()
    for index, row in enumerate(rows):
        try:
            _check_field_sizes(row, max_field_chars)
            record = parse(row)
            if not allow_empty_prompt and is_blank(record["prompt"]):
                raise BadRow("empty_prompt")
            record["index"] = index
            if tokenizer is not None:
                record = _render(record, tokenizer, completion_keys, f"{source}: row {index}")
        except BadRow as err:
            if on_bad_row == "error":
                detail = f": {err.detail}" if err.detail else ""
                raise DataError(f"{source}: row {index}: bad row ({err.reason}{detail})") from None
            bad.add(err.reason, index)
            continue
        records.append(record)
    return records, bad


def _check_field_sizes(row: Row, limit: int) -> None:
    if not isinstance(row, Mapping):
        return  # the format's parser names what is wrong with it
    for name, value in row.items():
        if text_size(value, limit) > limit:
            raise BadRow(f"field_too_long:{name}")


def _render(record: dict, tokenizer: Any, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    try:
        return render_record(record, tokenizer, keys)
    except DataError as err:  # the template itself cannot split prompt from completion
        raise DataError(f"{where}: {err}") from None
    except Exception as err:  # the template refused this row (jinja raise_exception...)
        raise BadRow("chat_template_error", detail=first_line(err)) from None


def detect_format(rows: Iterable[Row]) -> str:
    """Guess the format from the fields that are set in the first rows (see docs/data.md)."""
    sample = list(itertools.islice(iter(rows), _DETECT_SAMPLE))
    present = {k for row in sample for k, v in row.items() if v is not None}
    first = {k: next((r[k] for r in sample if r.get(k) is not None), None) for k in present}
    if {"info", "summaries", "choice"} <= present:
        return "tldr"
    if {"chosen", "rejected"} <= present:
        if isinstance(first["chosen"], list):
            return "conversation"
        if "prompt" in present:
            return "preference"
        if any(HH_HUMAN in str(r.get("chosen")) for r in sample):
            return "hh"
    if ("messages" in present or {"prompt", "completion"} <= present) and (
        present & set(LABEL_FIELDS)
    ):
        return "unpaired"
    if "messages" in present or {"prompt", "completion"} <= present:
        return "sft"
    raise DataError(f"cannot detect the data format from fields {sorted(present)}")


def _parser(kind: str, fmt: str) -> Parser:
    pair_parsers: dict[str, Parser] = {
        "preference": parse_pair,
        "conversation": parse_pair,
        "hh": parse_hh,
        "tldr": parse_tldr,
    }
    if kind == "unpaired":
        if fmt != "unpaired":
            raise DataError(
                f"format {fmt!r} has no desirable/undesirable labels, and this needs unpaired "
                "rows (prompt, completion, desirable); for preference pairs set "
                "data.unpaired: pairs (each pair gives a desirable and an undesirable example)"
            )
        return parse_unpaired
    if fmt == "unpaired":
        raise DataError(
            f"format 'unpaired' (prompt, completion, desirable) has no {kind} records; it "
            "trains the unpaired losses (kto, bco)"
        )
    if kind == "sft":
        return parse_sft if fmt == "sft" else _chosen_as_sft(pair_parsers[fmt])
    if fmt == "sft":
        raise DataError(
            "format 'sft' (prompt/completion or messages) has no rejected completions, and "
            "this needs preference pairs (prompt, chosen, rejected); use kind='sft'"
        )
    return pair_parsers[fmt]


def _chosen_as_sft(parse: Parser) -> Parser:
    """SFT on the chosen side of pair data; rows are validated as pairs (same rows as DPO)."""

    def parse_chosen(row: Row) -> dict[str, Any]:
        pair = parse(row)
        rest = {k: v for k, v in pair.items() if k in ("id", "metadata")}
        return {"prompt": pair["prompt"], "completion": pair["chosen"], **rest}

    return parse_chosen


# --- pair formats -------------------------------------------------------------------------


def parse_pair(row: Row) -> dict[str, Any]:
    """prompt/chosen/rejected, as text or as chat messages (prompt optional for messages)."""
    prompt, chosen, rejected = row.get("prompt"), row.get("chosen"), row.get("rejected")
    if prompt is None and not isinstance(chosen, list):
        raise BadRow("missing_field:prompt")
    _require(row, "chosen", "rejected")
    if any(isinstance(v, list) for v in (prompt, chosen, rejected)):
        prompt, chosen, rejected = _conversation_pair(prompt, chosen, rejected)
    else:
        for name, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            _require_type(value, str, name)
    _check_pair(chosen, rejected)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **_extras(row)}


def parse_hh(row: Row) -> dict[str, Any]:
    """Anthropic HH-RLHF: two whole dialogues sharing everything up to the last Assistant turn."""
    _require(row, "chosen", "rejected")
    chosen, rejected = row["chosen"], row["rejected"]
    _require_type(chosen, str, "chosen")
    _require_type(rejected, str, "rejected")
    cut_c, cut_r = chosen.rfind(HH_MARKER), rejected.rfind(HH_MARKER)
    if cut_c < 0 or cut_r < 0:
        raise BadRow("hh_no_assistant_turn")
    cut_c, cut_r = cut_c + len(HH_MARKER), cut_r + len(HH_MARKER)
    if chosen[:cut_c] != rejected[:cut_r]:
        raise BadRow("hh_prompt_mismatch")
    pair = {"prompt": chosen[:cut_c], "chosen": chosen[cut_c:], "rejected": rejected[cut_r:]}
    _check_pair(pair["chosen"], pair["rejected"])
    return {**pair, **_extras(row)}


def parse_tldr(row: Row) -> dict[str, Any]:
    """OpenAI summarize_from_feedback comparisons: a post, two summaries and a choice."""
    _require(row, "info", "summaries", "choice")
    info, summaries, choice = row["info"], row["summaries"], row["choice"]
    _require_type(info, Mapping, "info")
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise BadRow("wrong_type:summaries")
    texts = [s.get("text") if isinstance(s, Mapping) else None for s in summaries]
    if not isinstance(texts[0], str) or not isinstance(texts[1], str):
        raise BadRow("wrong_type:summaries")
    if isinstance(choice, bool) or choice not in (0, 1):
        raise BadRow("tldr_bad_choice")
    chosen, rejected = (" " + str(texts[i]).lstrip() for i in (choice, 1 - choice))
    _check_pair(chosen, rejected)
    record = {"prompt": tldr_prompt(info), "chosen": chosen, "rejected": rejected, "margin": None}
    if info.get("id") is not None:
        record["id"] = info["id"]
    return record


def tldr_prompt(info: Mapping[str, Any]) -> str:
    """The TL;DR prompt; news rows (``article``, no ``post``) omit absent subreddit/title lines."""
    if info.get("post") is not None:
        _require_type(info["post"], str, "info.post")
        for name in ("subreddit", "title"):
            if info.get(name) is None:
                raise BadRow(f"missing_field:info.{name}")
            _require_type(info[name], str, f"info.{name}")
        return TLDR_TEMPLATE.format(**{k: info[k] for k in ("subreddit", "title", "post")})
    if not isinstance(info.get("article"), str):
        raise BadRow("missing_field:info.post")
    lines = [f"SUBREDDIT: r/{info['subreddit']}"] if info.get("subreddit") else []
    lines += [f"TITLE: {info['title']}"] if info.get("title") else []
    return "\n".join([*lines, f"POST: {info['article']}", "TL;DR:"])


# --- sft --------------------------------------------------------------------------------------


def parse_sft(row: Row) -> dict[str, Any]:
    """prompt/completion (text or messages), or a ``messages`` conversation ending in a reply."""
    if row.get("messages") is not None:
        messages = check_messages(row["messages"], "messages")
        if not messages or messages[-1]["role"] != "assistant":
            raise BadRow("conversation_no_assistant_turn")
        prompt, completion = messages[:-1], messages[-1:]
    else:
        _require(row, "prompt", "completion")
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list) or isinstance(completion, list):
            prompt = _as_messages(prompt, "prompt", "user")
            completion = _completion_messages(_as_messages(completion, "completion"), prompt)
        else:
            _require_type(prompt, str, "prompt")
            _require_type(completion, str, "completion")
    if is_blank(completion):
        raise BadRow("empty_completion")
    extras = {k: v for k, v in _extras(row).items() if k in ("id", "metadata")}
    return {"prompt": prompt, "completion": completion, **extras}


# --- unpaired ---------------------------------------------------------------------------------

#: The field that says whether a completion is desirable: ``desirable``, or TRL's ``label``.
LABEL_FIELDS = ("desirable", "label")


def parse_unpaired(row: Row) -> dict[str, Any]:
    """A demonstration (as :func:`parse_sft`) with a boolean ``desirable`` (or TRL's
    ``label``; when a row has both they must agree)."""
    labels = [row[name] for name in LABEL_FIELDS if row.get(name) is not None]
    if not labels:
        raise BadRow("missing_field:desirable")
    if not all(isinstance(label, bool) for label in labels):
        raise BadRow("wrong_type:desirable")
    if len(set(labels)) > 1:
        raise BadRow("conflicting_labels")
    return {**parse_sft(row), "desirable": labels[0]}


def pairs_to_unpaired(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each preference record as two unpaired ones: its chosen completion desirable, then its
    rejected completion undesirable (both keep the pair's ``index``, ``id`` and
    ``metadata``)."""
    out = []
    for pair in records:
        rest = {k: pair[k] for k in ("index", "id", "metadata") if k in pair}
        for key, desirable in (("chosen", True), ("rejected", False)):
            completion = {"completion": pair[key], "desirable": desirable}
            out.append({"prompt": pair["prompt"], **completion, **rest})
    return out


# --- helpers ----------------------------------------------------------------------------------


def _conversation_pair(prompt: Any, chosen: Any, rejected: Any) -> tuple[list[Message], ...]:
    """Split chat-message pairs into (prompt messages, chosen messages, rejected messages)."""
    c = _as_messages(chosen, "chosen")
    r = _as_messages(rejected, "rejected")
    if prompt is None:
        if not c or not r or c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
            raise BadRow("conversation_no_assistant_turn")
        if c[:-1] != r[:-1]:
            raise BadRow("conversation_prompt_mismatch")
        return c[:-1], c[-1:], r[-1:]
    p = _as_messages(prompt, "prompt", "user")
    return p, _completion_messages(c, p), _completion_messages(r, p)


def _as_messages(value: Any, name: str, text_role: str = "assistant") -> list[Message]:
    if isinstance(value, str):
        return [{"role": text_role, "content": value}]
    return check_messages(value, name)


def _completion_messages(messages: list[Message], prompt: list[Message]) -> list[Message]:
    """Drop a repeated prompt prefix; what is left must start with the assistant's reply."""
    if messages[: len(prompt)] == prompt:
        messages = messages[len(prompt) :]
    if messages and messages[0]["role"] != "assistant":
        raise BadRow("conversation_prompt_mismatch")
    return messages


def _check_pair(chosen: Any, rejected: Any) -> None:
    if is_blank(chosen):
        raise BadRow("empty_chosen")
    if is_blank(rejected):
        raise BadRow("empty_rejected")
    if chosen == rejected:
        raise BadRow("chosen_equals_rejected")


def _extras(row: Row) -> dict[str, Any]:
    """Optional fields: margin (always present, may be None), id, scores, metadata."""
    out: dict[str, Any] = {"margin": _margin(row.get("margin"))}
    if row.get("id") is not None:
        out["id"] = row["id"]
    for name, types in (("scores", (Mapping, list)), ("metadata", Mapping)):
        if row.get(name) is not None:
            _require_type(row[name], types, name)
            out[name] = row[name]
    return out


def _margin(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRow("wrong_type:margin")
    return float(value)


def _require(row: Row, *names: str) -> None:
    for name in names:
        if row.get(name) is None:
            raise BadRow(f"missing_field:{name}")


def _require_type(value: Any, types: type | tuple[type, ...], name: str) -> None:
    if not isinstance(value, types):
        raise BadRow(f"wrong_type:{name}")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; expected one of {', '.join(allowed)}")
