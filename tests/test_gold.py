"""Gold evaluation internals: samples, masks and log-probs of left-padded batches."""

from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from prefopt.models.generation import completion_logps, generate
from prefopt.models.loading import load_pretrained
from prefopt.models.logps import sequence_logps
from prefopt.world import WorldConfig, build_world


def test_batched_samples_and_logps_match_one_sequence_at_a_time(tiny_pretrained):
    model = load_pretrained(str(tiny_pretrained)).eval()
    world = build_world(WorldConfig())
    tokenizer = world.tokenizer()
    prompts = world.eval_prompts("test")[:3] + ["keda :"]  # a shorter prompt: left padding
    cfg = SimpleNamespace(
        samples_per_prompt=2, batch_size=8, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=6
    )
    samples = generate(model, tokenizer, prompts, cfg, torch.device("cpu"), seed=0)
    assert [len(g) for g in samples.completions] == [2, 2, 2, 2]
    batched = completion_logps(model, samples, torch.device("cpu"))
    eos = tokenizer.eos_token_id
    for row in range(samples.sequences.shape[0]):
        keep = samples.attention_mask[row].bool()
        ids = samples.sequences[row][keep].unsqueeze(0)  # no padding at all
        comp = samples.completion_mask[row][keep].unsqueeze(0)
        alone, n = sequence_logps(model, ids, torch.ones_like(ids), comp)
        assert_close(batched[row : row + 1], alone, rtol=1e-5, atol=1e-5)
        completion = ids[0][comp[0].bool()].tolist()
        # the completion stops at (and includes) the first EOS, or runs to max_new_tokens
        assert eos not in completion[:-1] and 1 <= n.item() <= cfg.max_new_tokens
        text = tokenizer.decode(completion, skip_special_tokens=True).strip()
        assert text == samples.completions[row // 2][row % 2]


def test_split_summary_standard_errors_are_over_prompts_and_the_gain_is_paired():
    """Three prompts, two samples each.
    policy gold [[3, 5], [1, 1], [6, 4]] -> per prompt 4, 1, 5: mean 10/3,
      sd = sqrt(((2/3)^2 + (7/3)^2 + (5/3)^2) / 2) = sqrt(13/3), SE = sqrt(13/9) = 1.2019
    reference gold [[2, 4], [0, 1], [5, 3]] -> 3, 0.5, 4: per-prompt gain 1, 0.5, 1:
      mean 5/6, sd = sqrt((1/36 + 4/36 + 1/36) / 2) = sqrt(1/12), SE = 1/6
    wins: prompt 0: 3>2, 5>4 -> 1; prompt 1: 1>0, 1=1 -> 0.75; prompt 2: 1 -> mean 11/12
    """
    import math

    from prefopt.eval.gold import PromptStats, split_summary

    def stats(gold, log_ratio=None):
        g = torch.tensor(gold, dtype=torch.float64)
        lr = None if log_ratio is None else torch.tensor(log_ratio, dtype=torch.float64)
        return PromptStats(g, torch.ones_like(g), torch.zeros(3), torch.zeros(2), lr)

    pol = stats([[3, 5], [1, 1], [6, 4]], log_ratio=[[0.5, 1.5], [0.0, 0.0], [1.0, 1.0]])
    ref = stats([[2, 4], [0, 1], [5, 3]])
    out = split_summary(pol, ref, ["a", "b"])
    assert out["gold_reward"] == pytest.approx(10 / 3)
    assert out["gold_reward_se"] == pytest.approx(math.sqrt(13 / 9))
    assert out["gold_gain"] == pytest.approx(5 / 6)
    assert out["gold_gain_se"] == pytest.approx(1 / 6)
    assert out["win_rate"] == pytest.approx(11 / 12)
    assert out["kl"] == pytest.approx(2 / 3)  # per prompt 1, 0, 1
    assert out["kl_se"] == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))


def test_a_checkpoints_own_generation_settings_do_not_reshape_the_samples(tiny_pretrained):
    # a hub chat model ships e.g. repetition_penalty: samples must still come from the model's
    # own distribution, the one the recomputed log-probs describe
    model = load_pretrained(str(tiny_pretrained)).eval()
    world = build_world(WorldConfig())
    tokenizer = world.tokenizer()
    prompts = world.eval_prompts("test")[:8]
    cfg = SimpleNamespace(
        samples_per_prompt=2, batch_size=16, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=32
    )
    plain = generate(model, tokenizer, prompts, cfg, torch.device("cpu"), seed=0)
    model.generation_config.repetition_penalty = 5.0
    model.generation_config.no_repeat_ngram_size = 1
    shaped = generate(model, tokenizer, prompts, cfg, torch.device("cpu"), seed=0)
    assert torch.equal(plain.sequences, shaped.sequences)
    assert model.generation_config.repetition_penalty == 5.0  # restored afterwards
