"""Models: LoRA DPO with the adapter-disabled reference, QLoRA on CPU, cached reference."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from prefopt.config import ConfigError
from prefopt.models.loading import load_pretrained
from prefopt.trainers.preference import PreferenceTrainer, pair_logps
from tests.conftest import tiny_recipe

LORA = ["model.lora.r=4", "model.lora.alpha=8", "trainer.lr=0.01"]


def test_lora_dpo_moves_adapter_keeps_base_and_uses_disabled_adapter_as_reference(
    tmp_path, tiny_pretrained
):
    recipe = tiny_recipe(
        "dpo",
        tmp_path / "lora",
        f"model.name_or_path={tiny_pretrained}",
        "trainer.max_steps=4",
        *LORA,
    )
    trainer = PreferenceTrainer(recipe, tmp_path / "lora")
    # no second copy of the weights: the reference is the same module, adapter disabled
    assert trainer.reference is None and trainer.reference_uses_adapter
    model = trainer.unwrapped()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    after = dict(model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    assert lora and base
    assert all(torch.equal(before[n], after[n].detach()) for n in base)
    assert any(not torch.equal(before[n], after[n].detach()) for n in lora)

    # the reference log-probs equal those of the untouched pretrained model
    batch = trainer.collate(trainer.train_examples[:4])
    plain = load_pretrained(str(tiny_pretrained))
    with torch.no_grad():
        expected = pair_logps(plain, batch)
    ref = trainer.reference_logps(batch)
    assert_close(ref.chosen, expected.chosen)
    assert_close(ref.rejected, expected.rejected)
    policy = pair_logps(model, batch)
    assert not torch.allclose(policy.chosen, expected.chosen)  # the adapter is active again

    # the saved adapter loads with plain peft
    from peft import AutoPeftModelForCausalLM

    loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "lora" / "model")
    with torch.no_grad():
        assert_close(pair_logps(loaded, batch).chosen, policy.chosen.detach())


def test_qlora_4bit_dpo_runs_on_cpu(tmp_path, tiny_pretrained_4bit):
    recipe = tiny_recipe(
        "dpo",
        tmp_path / "q",
        f"model.name_or_path={tiny_pretrained_4bit}",
        "model.quantization=4bit",
        "trainer.max_steps=3",
        *LORA,
    )
    trainer = PreferenceTrainer(recipe, tmp_path / "q")
    import bitsandbytes as bnb

    layers = [m for m in trainer.unwrapped().modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers, "the base model was not loaded in 4 bit"
    summary = trainer.train()
    assert summary["steps"] == 3
    assert torch.isfinite(torch.tensor(summary["train"]["loss"]))


def test_4bit_model_narrower_than_the_block_size_is_refused_on_every_cpu(tmp_path, tiny_pretrained):
    # hidden 32 < bitsandbytes' block size 64: refused by prefopt with the layer named, before
    # any 4-bit kernel runs (which crashes only on CPUs with AVX512-BF16)
    recipe = tiny_recipe(
        "dpo",
        tmp_path / "q",
        f"model.name_or_path={tiny_pretrained}",
        "model.quantization=4bit",
        *LORA,
    )
    # a ConfigError: the CLI prints it as one line (exit 2), not a traceback
    with pytest.raises(ConfigError, match=r"layer '.*c_attn'.*in_features=32.*block size 64"):
        PreferenceTrainer(recipe, tmp_path / "q")


def test_cached_reference_matches_live_reference_and_is_reused(tmp_path, tiny_pretrained):
    common = [
        f"model.name_or_path={tiny_pretrained}",
        "trainer.max_steps=2",
        f"reference.cache_dir={tmp_path / 'cache'}",
    ]
    live = PreferenceTrainer(tiny_recipe("dpo", tmp_path / "live", *common), tmp_path / "live")
    cached = PreferenceTrainer(
        tiny_recipe("dpo", tmp_path / "c", *common, "reference.mode=cached"), tmp_path / "c"
    )
    assert cached.reference is None  # the cache replaces the reference model
    batch = cached.collate(cached.train_examples[:8])
    live_ref = live.reference_logps(live.collate(live.train_examples[:8]))
    cached_ref = cached.reference_logps(batch)
    assert_close(cached_ref.chosen, live_ref.chosen)
    assert_close(cached_ref.rejected_tokens, live_ref.rejected_tokens)
    files = list((tmp_path / "cache").glob("ref-logps-*.pt"))
    assert len(files) == 2  # train and eval splits
    stamp = [f.stat().st_mtime_ns for f in files]
    PreferenceTrainer(
        tiny_recipe("dpo", tmp_path / "c2", *common, "reference.mode=cached"), tmp_path / "c2"
    )
    assert [f.stat().st_mtime_ns for f in files] == stamp  # reused, not recomputed


def test_reference_free_loss_builds_no_reference(tmp_path):
    trainer = PreferenceTrainer(
        tiny_recipe("simpo", tmp_path / "s", "model.name_or_path=null", "trainer.max_steps=1"),
        tmp_path / "s",
    )
    assert trainer.reference is None and not trainer.reference_uses_adapter
    batch = trainer.collate(trainer.train_examples[:4])
    assert trainer.reference_logps(batch) is None


def test_tiny_llama_family_trains(tmp_path):
    from prefopt.pipeline.run import train

    summary, _ = train(
        tiny_recipe("sft", tmp_path / "l", "model.tiny.family=llama", "trainer.max_steps=2")
    )
    assert summary["steps"] == 2


def test_weights_load_in_the_recipe_dtype_not_the_checkpoints(tmp_path, tiny_pretrained):
    half = load_pretrained(str(tiny_pretrained)).to(torch.float16)
    half.save_pretrained(tmp_path / "fp16")
    assert next(load_pretrained(str(tmp_path / "fp16")).parameters()).dtype == torch.float32
    auto = load_pretrained(str(tmp_path / "fp16"), dtype="auto")
    assert next(auto.parameters()).dtype == torch.float16


def test_gradient_checkpointing_reaches_policies_and_reward_models():
    from prefopt.config import load_recipe
    from prefopt.models.loading import load_policy, load_reward_backbone
    from prefopt.world import build_world

    recipe = load_recipe("dpo", ["model.gradient_checkpointing=true"])
    tokenizer = build_world(recipe.world).tokenizer()
    for load in (load_policy, load_reward_backbone):
        model = load(recipe.model, tokenizer, None)
        assert model.is_gradient_checkpointing, load.__name__
        recipe.model.gradient_checkpointing = False
        assert not load(recipe.model, tokenizer, None).is_gradient_checkpointing
        recipe.model.gradient_checkpointing = True
