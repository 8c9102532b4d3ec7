"""Prompt + completion ids for scoring, shared by every model-based scorer."""

from __future__ import annotations

from typing import Any

from prefopt.data import tokenize_sft


def encode_pairs(
    tokenizer: Any,
    prompts: list[str],
    completions: list[str],
    max_length: int,
    max_prompt_length: int,
) -> list[dict[str, Any]]:
    """Prompt + completion ids exactly as in training (separate tokenization, EOS appended).
    Empty completions are kept (scored as EOS alone) so that outputs align with inputs."""
    examples = tokenize_sft(
        [
            {"prompt": p, "completion": c if c.strip() else " "}
            for p, c in zip(prompts, completions, strict=True)
        ],
        tokenizer,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
    )
    if len(examples) != len(prompts):
        raise ValueError(
            "some prompts fill max_length on their own; raise max_length to score them"
        )
    return examples
