"""The fast paths give the plain paths' numbers: the packed pair layout (data.layout packed:
the same log-probs, rewards and training trajectory as the padded layout, and a mask that
hides each chosen completion from its rejected twin), the fused GELU, logits from the first
completion column online, and the fused AdamW."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from prefopt.data.collate import PackedPairCollator, PreferenceCollator
from prefopt.models.logps import pair_logps
from prefopt.pipeline.run import train
from prefopt.trainers.reward import pair_rewards
from tests.conftest import read_metrics, tiny_recipe

PAD = 0


def pairs(seed: int = 0, n: int = 7) -> list[dict]:
    """Pairs of varied lengths; some completions end in the pad id (pad = EOS, as GPT-2)."""
    g = torch.Generator().manual_seed(seed)

    def ids(k: int) -> list[int]:
        return torch.randint(1, 50, (k,), generator=g).tolist()

    out = []
    for i in range(n):
        p, c, r = (int(x) for x in torch.randint(1, 12, (3,), generator=g))
        out.append(
            {
                "prompt_ids": ids(p),
                "chosen_ids": ids(c) + ([PAD] if i % 2 else []),
                "rejected_ids": ids(r) + ([PAD] if i % 3 else []),
                "margin": float(i),
                "index": i,
            }
        )
    return out


def config(**kw) -> GPT2Config:
    torch.manual_seed(0)
    return GPT2Config(
        vocab_size=50, n_layer=2, n_embd=32, n_head=4, n_positions=64, pad_token_id=PAD, **kw
    )


def test_the_mask_hides_chosen_from_rejected_and_restarts_positions():
    example = {"prompt_ids": [5, 6], "chosen_ids": [7, 8], "rejected_ids": [9, 10, 11]}
    batch = PackedPairCollator(PAD, row_length=64)([example])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2, 3, 4]]
    mask = batch["attention_mask"][0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],  # rejected: the prompt and itself, never the chosen tokens
        [1, 1, 0, 0, 1, 1, 0],
        [1, 1, 0, 0, 1, 1, 1],
    ]
    # the prompt's last position (1) predicts both first completion tokens
    kept = batch["logits_mask"][0].nonzero().squeeze(1).tolist()
    assert kept == [1, 2, 4, 5]
    scored = list(
        zip(
            [kept[i] for i in batch["target_index"].tolist()],
            batch["target_ids"].tolist(),
            batch["target_segment"].tolist(),
            strict=True,
        )
    )
    assert scored == [(1, 7, 0), (2, 8, 0), (1, 9, 1), (4, 10, 1), (5, 11, 1)]
    assert batch["last_index"].tolist() == [3, 6]


def test_rows_are_filled_first_fit_decreasing_and_padding_attends_to_itself():
    lengths = [(3, 1, 1), (1, 1, 1), (2, 1, 1), (4, 2, 2)]  # segment lengths 5, 3, 4, 8
    examples = [
        {"prompt_ids": [1] * p, "chosen_ids": [2] * c, "rejected_ids": [3] * r}
        for p, c, r in lengths
    ]
    batch = PackedPairCollator(PAD, row_length=9)(examples)
    # 8 | 5+4 | 3  -> three rows of width 9
    assert batch["input_ids"].shape == (3, 9)
    assert batch["input_ids"][2].tolist() == [1, 2, 3, PAD, PAD, PAD, PAD, PAD, PAD]
    mask = batch["attention_mask"][2, 0]
    assert mask[5].tolist() == [False] * 5 + [True] + [False] * 3


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_log_probs_equal_the_padded_ones(attention):
    model = GPT2LMHeadModel(config(attn_implementation=attention)).eval()
    examples = pairs()
    padded = pair_logps(model, PreferenceCollator(PAD)(examples))
    for row_length in (1, 24, 200):  # one pair per row, a few, all in one row
        packed = pair_logps(model, PackedPairCollator(PAD, row_length)(examples))
        for name in ("chosen", "rejected", "chosen_tokens", "rejected_tokens"):
            assert_close(getattr(packed, name), getattr(padded, name), atol=2e-5, rtol=0)


def test_packed_gradients_equal_the_padded_ones():
    model = GPT2LMHeadModel(config()).eval()  # no dropout; gradients still flow
    examples = pairs(1)

    def grads(collator):
        model.zero_grad()
        logps = pair_logps(model, collator(examples))
        (logps.chosen - 2 * logps.rejected).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(
        grads(PreferenceCollator(PAD)), grads(PackedPairCollator(PAD, 40)), strict=True
    ):
        assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_packed_rewards_equal_the_padded_ones_where_the_model_pools():
    model = GPT2ForSequenceClassification(config(num_labels=1)).eval()
    examples = pairs(2)
    chosen, rejected = pair_rewards(model, PreferenceCollator(PAD)(examples))
    p_chosen, p_rejected = pair_rewards(model, PackedPairCollator(PAD, 30)(examples))
    assert_close(p_chosen, chosen, atol=1e-5, rtol=0)
    assert_close(p_rejected, rejected, atol=1e-5, rtol=0)


def test_an_empty_prompt_scores_what_the_padded_layout_scores():
    model = GPT2LMHeadModel(config()).eval()
    examples = [{"prompt_ids": [], "chosen_ids": [4, 5, 6], "rejected_ids": [7, 8]}, *pairs(3, 2)]
    padded = pair_logps(model, PreferenceCollator(PAD)(examples))
    packed = pair_logps(model, PackedPairCollator(PAD, 64)(examples))
    assert packed.chosen_tokens.tolist() == padded.chosen_tokens.tolist()
    assert_close(packed.chosen, padded.chosen, atol=2e-5, rtol=0)
    assert_close(packed.rejected, padded.rejected, atol=2e-5, rtol=0)


def losses(run_dir) -> list[float]:
    return [m["loss"] for m in read_metrics(run_dir) if "loss" in m]


@pytest.mark.parametrize("recipe", ["dpo", "rm"])
def test_packed_training_follows_the_padded_trajectory(tmp_path, recipe):
    common = ["model.name_or_path=null", "trainer.max_steps=6", "trainer.lr=5e-3"]
    runs = {
        layout: losses(
            train(tiny_recipe(recipe, tmp_path / layout, *common, f"data.layout={layout}"))[1]
        )
        for layout in ("padded", "packed")
    }
    assert len(runs["packed"]) == 6
    assert_close(torch.tensor(runs["packed"]), torch.tensor(runs["padded"]), atol=1e-5, rtol=1e-5)
    # not a trajectory that stands still: the model learnt something in 6 steps
    assert abs(runs["packed"][-1] - runs["packed"][0]) > 1e-3


def test_fused_gelu_is_gpt2s_gelu_new_in_one_kernel():
    from transformers.activations import NewGELUActivation

    from prefopt.models.loading import fuse_activations

    model = GPT2LMHeadModel(config()).eval()
    ids = torch.randint(1, 50, (2, 9))
    before = model(input_ids=ids).logits
    assert any(type(m) is NewGELUActivation for m in model.modules())
    fuse_activations(model)
    assert not any(type(m) is NewGELUActivation for m in model.modules())
    assert_close(model(input_ids=ids).logits, before, atol=1e-5, rtol=0)
    assert model.config.activation_function == "gelu_new"  # the saved model is the same model


def test_rollout_log_probs_from_the_first_completion_column_equal_the_full_ones():
    from prefopt.models.generation import rollout_token_logps

    model = GPT2LMHeadModel(config()).eval()
    ids = torch.randint(2, 50, (3, 12))
    attn = torch.ones_like(ids)
    attn[0, :3] = 0  # left padding of a shorter prompt
    full = rollout_token_logps(model, ids, attn, temperature=0.7)
    part = rollout_token_logps(model, ids, attn, temperature=0.7, first=5)
    assert part.shape == full.shape
    assert_close(part[:, 5:], full[:, 5:], atol=1e-5, rtol=0)
    assert (part[:, :5] == 0).all()


def test_fused_adamw_makes_the_per_tensor_loops_updates():
    from accelerate import Accelerator

    from prefopt.trainers.engines import adamw_kernel

    torch.manual_seed(0)
    plain = GPT2LMHeadModel(config()).eval()  # no dropout: the same gradients both ways
    fused = GPT2LMHeadModel(config()).eval()
    fused.load_state_dict(plain.state_dict())
    kernel = adamw_kernel(Accelerator(cpu=True), list(fused.parameters()))
    assert kernel == {"fused": True}
    optimisers = [
        torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.1),
        torch.optim.AdamW(fused.parameters(), lr=1e-2, weight_decay=0.1, **kernel),
    ]
    ids = torch.randint(1, 50, (4, 10))
    for _ in range(3):
        for model, opt in zip((plain, fused), optimisers, strict=True):
            opt.zero_grad()
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
    # the same update up to float rounding: Adam's step m / (sqrt(v) + eps) of a near-zero
    # gradient is sensitive to it, so allow 1% of one step (lr 1e-2) per parameter
    for a, b in zip(plain.parameters(), fused.parameters(), strict=True):
        assert_close(a, b, atol=1e-4, rtol=1e-5)
    start = GPT2LMHeadModel(config()).transformer.wte.weight
    assert not torch.equal(plain.transformer.wte.weight, start)  # the updates did something


def test_log_probs_from_generation_equal_the_full_forwards():
    from types import SimpleNamespace

    from prefopt.models.generation import generate, rollout_token_logps

    class Tok:  # the least of a tokenizer that generate needs
        pad_token_id, eos_token_id = PAD, 1

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[int(w) for w in t.split()] for t in texts]}

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))

    model = GPT2LMHeadModel(config(eos_token_id=1, bos_token_id=1)).eval()
    cfg = SimpleNamespace(
        samples_per_prompt=2, batch_size=4, temperature=0.8, top_k=0, top_p=1.0, max_new_tokens=6
    )
    prompts = ["5 6 7", "8 9", "10 11 12 13"]
    samples = generate(model, Tok(), prompts, cfg, torch.device("cpu"), seed=3, with_logps=True)
    full = rollout_token_logps(model, samples.sequences, samples.attention_mask, temperature=0.8)
    mask = samples.completion_mask[:, 1:].float()
    assert samples.logps is not None and mask.sum() > 6
    assert_close(samples.logps * mask, full * mask, atol=1e-4, rtol=0)
    assert (samples.logps[mask == 0] == 0).all()


def test_a_group_of_samples_prefills_its_prompt_once_and_draws_the_same_samples():
    from types import SimpleNamespace

    from prefopt.models.generation import _generate_batch

    model = GPT2LMHeadModel(config(eos_token_id=1, bos_token_id=1)).eval()
    ids = torch.tensor([[PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = (ids != PAD).long()
    cfg = SimpleNamespace(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=7)
    tok = SimpleNamespace(pad_token_id=PAD, eos_token_id=1)
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        out, rows_mask, width, _ = _generate_batch(model, batch, cfg, 3, tok, "cpu", seed=11)
        torch.manual_seed(11)
        plain = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=7,
            num_return_sequences=3, pad_token_id=PAD, eos_token_id=1,
        )  # fmt: skip
    assert out.shape == plain.shape and width == 5
    assert torch.equal(out, plain)  # the same samples, the prompt computed once per group
    assert torch.equal(rows_mask, mask.repeat_interleave(3, 0))


def test_a_groups_prompt_computed_once_gives_every_rows_log_probs():
    from prefopt.models.generation import rollout_token_logps, shared_prompt_logits
    from prefopt.models.logps import token_logps

    model = GPT2LMHeadModel(config()).eval()
    g = torch.Generator().manual_seed(4)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    rows, width = [], 4
    for p in prompts:  # 3 samples of each prompt, left-padded to the prompt block's width
        for _ in range(3):
            completion = torch.randint(2, 50, (6,), generator=g).tolist()
            rows.append([PAD] * (width - len(p)) + p + completion)
    seq = torch.tensor(rows)
    attn = (seq != PAD).long()
    order = torch.randperm(len(rows), generator=g)  # a shuffled minibatch
    seq, attn = seq[order], attn[order]
    full = rollout_token_logps(model, seq, attn, temperature=0.7)
    kept, index, targets = shared_prompt_logits(model, seq, attn, width)
    assert kept.shape[0] == 3 * (1 + 3 * 5)  # per prompt: its last position + 5 per sample
    per_token = token_logps((kept / 0.7)[index], targets)
    assert_close(per_token, full[:, width - 1 :], atol=2e-5, rtol=0)


def test_grpo_with_shared_prompts_follows_the_padded_trajectory(tmp_path, tiny_pretrained):
    from tests.test_online import online_trainer

    losses = {}
    for layout in ("padded", "packed"):
        trainer = online_trainer(
            tmp_path / layout, tiny_pretrained, "trainer.max_steps=2", "trainer.batch_size=4",
            f"data.layout={layout}", recipe="grpo",
        )  # fmt: skip
        trainer.train()
        losses[layout] = [r["loss"] for r in read_metrics(tmp_path / layout / "run") if "loss" in r]
    assert len(losses["packed"]) >= 2
    assert_close(
        torch.tensor(losses["packed"]), torch.tensor(losses["padded"]), atol=1e-5, rtol=1e-4
    )


def test_train_attention_switches_only_for_the_duration_and_refuses_kernels_without_masks():
    from prefopt.config import ConfigError, load_recipe
    from prefopt.models.loading import attention_implementation
    from prefopt.models.value import ValueModel, zero_head

    policy = GPT2LMHeadModel(config())
    critic = ValueModel(GPT2LMHeadModel(config()).transformer, zero_head(32))
    assert policy.config._attn_implementation == "sdpa"
    with attention_implementation([policy, critic, None], "eager"):
        assert policy.config._attn_implementation == "eager"
        assert critic.body.config._attn_implementation == "eager"
    assert policy.config._attn_implementation == "sdpa"
    assert critic.body.config._attn_implementation == "sdpa"
    with attention_implementation([policy], None):  # null: the model's own
        assert policy.config._attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match="model.train_attention"):
        load_recipe("dpo", ["model.train_attention=flash_attention_2"])


@pytest.mark.parametrize("recipe", ["dpo", "rm", "ppo", "grpo"])
def test_eager_training_attention_follows_the_sdpa_trajectory(
    tmp_path, tiny_pretrained, recipe, monkeypatch
):
    from prefopt.trainers.base import Trainer

    seen: list[str] = []  # the attention each training forward ran with
    step = Trainer.check_finite

    def spy(self, loss, where):
        seen.append(self.unwrapped().config._attn_implementation)
        return step(self, loss, where)

    monkeypatch.setattr(Trainer, "check_finite", spy)
    if recipe in ("dpo", "rm"):
        common = ["model.name_or_path=null", "trainer.max_steps=4", "trainer.lr=5e-3"]
        run = {
            impl: losses(
                train(
                    tiny_recipe(recipe, tmp_path / impl, *common, f"model.train_attention={impl}")
                )[1]
            )
            for impl in ("sdpa", "eager")
        }
    else:
        from tests.test_online import online_trainer

        run = {}
        for impl in ("sdpa", "eager"):
            trainer = online_trainer(
                tmp_path / impl, tiny_pretrained, "trainer.max_steps=2", "trainer.batch_size=4",
                f"model.train_attention={impl}", recipe=recipe,
            )  # fmt: skip
            trainer.train()
            assert trainer.unwrapped().config._attn_implementation == "sdpa"  # back after
            run[impl] = losses(tmp_path / impl / "run")
    assert "eager" in seen and "sdpa" in seen
    assert len(run["eager"]) >= 2
    assert_close(torch.tensor(run["eager"]), torch.tensor(run["sdpa"]), atol=1e-5, rtol=1e-4)
