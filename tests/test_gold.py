"""Gold evaluation internals: samples, masks and log-probs of left-padded batches."""

from types import SimpleNamespace

import torch
from torch.testing import assert_close

from prefopt.eval.gold import completion_logps, generate
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
