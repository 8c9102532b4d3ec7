"""Length, EOS share and gold per prompt (the PM length-drift evidence), hand-computed."""

import math

import pytest
import torch

from prefopt.eval.completions import completion_summary
from prefopt.models.generation import Samples

EOS, PAD = 2, 0


def test_hand_computed_summary():
    """Prompt width 1; completions (tokens after the prompt, EOS = 2):
    prompt a: [5, 2] (2 tokens, EOS) and [5, 6, 7] (3 tokens, cut off);
    prompt b: [2] (1 token, EOS) and [6, 2] (2 tokens, EOS).
    Per prompt: tokens 2.5 and 1.5 -> mean 2.0, SE = sd([2.5, 1.5]) / sqrt 2 = 0.5;
    EOS share 0.5 and 1.0 -> 0.75, SE 0.25; gold [1, 3] and [0, 0] -> 2 and 0 -> 1.0, SE 1.0."""
    sequences = torch.tensor([[9, 5, 2, PAD], [9, 5, 6, 7], [9, 2, PAD, PAD], [9, 6, 2, PAD]])
    completion = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1], [0, 1, 0, 0], [0, 1, 1, 0]])
    attention = completion.clone()
    attention[:, 0] = 1
    samples = Samples(["a", "b"], [["x", "y"], ["z", "w"]], sequences, attention, completion, 1)
    out = completion_summary(samples, torch.tensor([1.0, 3.0, 0.0, 0.0]), EOS)
    assert out["mean_tokens"] == pytest.approx(2.0)
    assert out["mean_tokens_se"] == pytest.approx(0.5)
    assert out["eos_share"] == pytest.approx(0.75)
    assert out["eos_share_se"] == pytest.approx(0.25)
    assert out["gold"] == pytest.approx(1.0)
    assert out["gold_se"] == pytest.approx(1.0)
    assert (out["n_prompts"], out["samples_per_prompt"]) == (2, 2)
    with pytest.raises(ValueError, match="gold rewards"):
        completion_summary(samples, torch.tensor([1.0]), EOS)
    one = completion_summary(samples.select([0]), torch.tensor([1.0, 3.0]), EOS)
    assert math.isnan(one["gold_se"])  # one prompt: no standard error
