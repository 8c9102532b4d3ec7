"""Record-level pieces shared by the loaders and the tokenizers.

Real preference data is messy: fields go missing, completions are empty, a dialogue's two
branches disagree on the prompt. Training on such rows silently corrupts a run, and crashing on
the first one makes a 160k-row dataset unusable, so every bad row is *counted by reason* in a
`BadRows` and skipped (or raises `DataError` when the user asks for strictness). The counts go
to the run's summary.json, so a reader can see what was dropped and why.

Conversational records (lists of ``{"role", "content"}`` messages) are turned into text here,
through the tokenizer's chat template, so that the loaders and the tokenizers agree exactly on
where the prompt ends and the completion begins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]

#: the roles chat templates know (OpenAI's and Hugging Face's conventions); a message with any
#: other role is a bad row ``unknown_role:<field>``: a template that accepts any role would
#: render it silently as text the model never saw in that place, one that refuses it would stop
#: the run with a template traceback
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "ipython")


class DataError(ValueError):
    """A data row or file that cannot be used (raised when ``on_bad_row="error"``)."""


@dataclass
class BadRows:
    """Counts of dropped rows by reason, with the first few row indices of each reason.

    Reasons are short strings such as ``missing_field:chosen`` or ``empty_rejected``; see
    docs/data.md for the full list.
    """

    max_examples: int = 5
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)
    # rows kept but cut to data.max_length / max_prompt_length (not dropped, so not in total)
    truncated: int = 0
    kept: int = 0  # rows that reached tokenization and were kept, truncated or not

    def add(self, reason: str, row_index: int) -> None:
        """Record that row `row_index` was dropped because of `reason`."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self.max_examples:
            shown.append(row_index)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: BadRows) -> BadRows:
        """Add the counts of `other` into this one (in place) and return self."""
        for reason, count in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count
            shown = self.examples.setdefault(reason, [])
            room = self.max_examples - len(shown)
            shown.extend(other.examples.get(reason, [])[: max(room, 0)])
        self.truncated += other.truncated
        self.kept += other.kept
        return self

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for summary.json: total, counts by reason and example indices."""
        reasons = sorted(self.counts)
        return {
            "total": self.total,
            "by_reason": {r: self.counts[r] for r in reasons},
            "examples": {r: list(self.examples.get(r, [])) for r in reasons},
            "truncated": self.truncated,
        }

    def report(self, source: str | None = None) -> str:
        """A human-readable multi-line summary for the log."""
        where = f" from {source}" if source else ""
        lines = [
            f"dropped {self.total} bad row(s){where}:" if self.total else f"no bad rows{where}"
        ]
        for reason in sorted(self.counts, key=lambda r: (-self.counts[r], r)):
            rows = ", ".join(str(i) for i in self.examples.get(reason, []))
            more = ", ..." if self.counts[reason] > len(self.examples.get(reason, [])) else ""
            lines.append(f"  {reason}: {self.counts[reason]} (rows {rows}{more})")
        if self.truncated:
            share = f" of {self.kept}" if self.kept else ""
            every = " (every row: raise data.max_length?)" if self.truncated == self.kept else ""
            lines.append(
                f"truncated {self.truncated}{share} kept row(s) to data.max_length / "
                f"data.max_prompt_length{every}"
            )
        return "\n".join(lines)

    @property
    def noteworthy(self) -> bool:
        """Something to report: dropped rows or truncated ones."""
        return bool(self.total or self.truncated)


class BadRow(Exception):
    """Internal signal: the row being parsed is bad for `reason` (caught by the loaders)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def is_blank(value: str | Sequence[Message]) -> bool:
    """True for an empty or whitespace-only completion (text, or messages with blank content)."""
    if isinstance(value, str):
        return not value.strip()
    return all(not m["content"].strip() for m in value)


def check_messages(value: Any, name: str) -> list[Message]:
    """Validate a list of chat messages; raise `BadRow("wrong_type:<name>")` if it is not one."""
    if not isinstance(value, list) or not all(_is_message(m) for m in value):
        raise BadRow(f"wrong_type:{name}")
    if any(m["role"] not in CHAT_ROLES for m in value):
        raise BadRow(f"unknown_role:{name}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _is_message(m: Any) -> bool:
    if not isinstance(m, Mapping):
        return False
    return isinstance(m.get("role"), str) and isinstance(m.get("content"), str)


def render_conversation(
    tokenizer: Any, prompt: Sequence[Message], completion: Sequence[Message]
) -> tuple[str, str]:
    """Render prompt and completion messages to (prompt_text, completion_text).

    The prompt is rendered with the generation prompt; the completion is the rendering of the
    whole conversation minus that prefix. A chat template whose full rendering does not start
    with the rendered prompt (e.g. one that rewrites earlier turns) cannot give a clean
    boundary, so it raises `DataError` instead of guessing.
    """
    prompt_text = render_prompt(tokenizer, prompt)
    full_text = tokenizer.apply_chat_template(
        [*prompt, *completion], tokenize=False, add_generation_prompt=False
    )
    if not full_text.startswith(prompt_text):
        raise DataError(
            "the chat template's rendering of the full conversation does not start with its "
            "rendering of the prompt (with generation prompt), so the prompt/completion "
            f"boundary is ambiguous.\n  prompt: {prompt_text!r}\n  full:   {full_text!r}"
        )
    return prompt_text, full_text[len(prompt_text) :]


def render_prompt(tokenizer: Any, prompt: str | Sequence[Message]) -> str:
    """Prompt text: as is for text, the chat template with generation prompt for messages."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("conversational records need a tokenizer with a chat template")
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def render_record(
    record: Mapping[str, Any], tokenizer: Any, completion_keys: Sequence[str]
) -> dict[str, Any]:
    """Return a copy of `record` with conversational prompt/completions rendered to text.

    A text prompt paired with message completions is treated as one user message. Records that
    are already text are returned as a plain copy.
    """
    out = dict(record)
    prompt = record["prompt"]
    if isinstance(prompt, str) and all(isinstance(record[k], str) for k in completion_keys):
        return out
    prompt_msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    for key in completion_keys:
        completion = record[key]
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        out["prompt"], out[key] = render_conversation(tokenizer, prompt_msgs, completion)
    return out


def text_size(value: Any, limit: int) -> int:
    """Characters of text in a field (a string, or the strings inside lists and mappings, such
    as chat messages), counted until ``limit`` is passed: a row's fields are measured against
    ``data.max_field_chars`` before anything tokenizes them."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, list | tuple):
        total = 0
        for item in value:
            total += text_size(item, limit - total)
            if total > limit:
                break
        return total
    return 0
