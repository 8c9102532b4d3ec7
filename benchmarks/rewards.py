"""The Python reward both sides' GRPO and RLOO optimise: deterministic, from the text alone."""

from __future__ import annotations


def distinct_words(completions: list[str]) -> list[float]:
    """A tenth of the number of distinct whitespace-separated words of each completion."""
    return [len(set(text.split())) / 10.0 for text in completions]
