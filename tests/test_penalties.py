"""Presence / frequency penalties (vLLM's and OpenAI's definition; ExPO's alpha selection
sampled with both at 0.1): hand-computed logits, the order of the sampling chain, and
`generate` with them."""

from dataclasses import dataclass

import pytest
import torch
from torch.testing import assert_close

from prefopt.models.generation import generate
from prefopt.models.penalties import (
    PresenceFrequencyPenalty,
    completion_counts,
    penalise_logits,
    sampling_processors,
)
from prefopt.world import WorldConfig, build_world
from tests.test_expo import tiny_gpt2


@dataclass
class Sampling:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    samples_per_prompt: int = 2
    max_new_tokens: int = 12
    batch_size: int = 16


def test_hand_computed_penalties_count_only_the_completion():
    """Prompt [3, 1] (width 2), completion so far [1, 1, 2]; vocabulary of 4, logits
    [1, 2, 0.5, 0]. Counts: token 1 twice, token 2 once, token 3 only in the prompt (0).
    presence 0.1, frequency 0.1: token 1: 2 - 0.1 * 2 - 0.1 = 1.7; token 2: 0.5 - 0.1 - 0.1 =
    0.3; tokens 0 and 3 unchanged."""
    ids = torch.tensor([[3, 1, 1, 1, 2]])
    logits = torch.tensor([[1.0, 2.0, 0.5, 0.0]])
    assert_close(completion_counts(ids, 2, 4), torch.tensor([[0.0, 2.0, 1.0, 0.0]]))
    expected = torch.tensor([[1.0, 1.7, 0.3, 0.0]])
    assert_close(penalise_logits(logits, completion_counts(ids, 2, 4), 0.1, 0.1), expected)
    assert_close(PresenceFrequencyPenalty(0.1, 0.1, 2)(ids, logits), expected)
    # presence alone: a flat 0.5 on every token used, whatever its count
    assert_close(
        PresenceFrequencyPenalty(0.5, 0.0, 2)(ids, logits), torch.tensor([[1.0, 1.5, 0.0, 0.0]])
    )
    # nothing generated yet: nothing changes
    assert_close(PresenceFrequencyPenalty(0.1, 0.1, 5)(ids, logits), logits)


def test_chain_runs_penalties_before_temperature_and_top_k():
    """vLLM's order: penalties, then / T, then top-k. From the logits above: [1, 1.7, 0.3, 0]
    / 0.5 = [2, 3.4, 0.6, 0]; top-2 keeps tokens 1 and 0."""
    chain = sampling_processors(Sampling(temperature=0.5, top_k=2, presence_penalty=0.1,
                                         frequency_penalty=0.1), prompt_width=2)  # fmt: skip
    assert chain is not None and len(chain) == 3
    scores = torch.tensor([[1.0, 2.0, 0.5, 0.0]])
    ids = torch.tensor([[3, 1, 1, 1, 2]])
    for processor in chain:
        scores = processor(ids, scores)
    inf = float("inf")
    assert_close(scores, torch.tensor([[2.0, 3.4, -inf, -inf]]))
    assert sampling_processors(Sampling(temperature=0.7, top_k=50), prompt_width=2) is None


def test_generate_with_a_large_frequency_penalty_never_repeats_a_token():
    """With a penalty of 1e4 per use, a token once generated is never sampled again in that
    completion; without penalties the same model repeats tokens."""
    world = build_world(WorldConfig())
    tokenizer = world.tokenizer()
    model = tiny_gpt2(0, len(tokenizer), tokenizer=tokenizer)
    prompts = world.eval_prompts("test")[:4]

    def repeats(cfg) -> int:
        samples = generate(model, tokenizer, prompts, cfg, torch.device("cpu"), seed=3)
        start = samples.prompt_width
        count = 0
        for row, mask in zip(samples.sequences, samples.completion_mask, strict=True):
            tokens = row[start:][mask[start:].bool()].tolist()
            count += len(tokens) - len(set(tokens))
        return count

    assert repeats(Sampling()) > 0
    assert repeats(Sampling(frequency_penalty=1e4)) == 0
    with pytest.raises(ValueError, match="penalties"):
        generate(model, tokenizer, prompts, Sampling(presence_penalty=0.1), torch.device("cpu"),
                 seed=3, with_logps=True)  # fmt: skip
