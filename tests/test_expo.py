"""ExPO: the extrapolation arithmetic (state dicts, modules, tied weights, buffers, LoRA), the
folder-level load / check / save, and the alpha search on two tiny GPT-2 models."""

from __future__ import annotations

import copy
import csv
import json
import math
from typing import Any

import pytest
import torch
from torch.testing import assert_close

from prefopt.config import EvalConfig
from prefopt.models.expo import (
    extrapolate_lora,
    extrapolate_model,
    extrapolate_state,
    load_and_extrapolate,
)
from prefopt.models.loading import load_pretrained, save_model
from prefopt.pipeline.expo import alpha_grid, alpha_search, best_alpha, curve_rows


def tiny_gpt2(seed: int, vocab_size: int = 50, tie: bool = True, tokenizer=None):
    from transformers import GPT2Config, GPT2LMHeadModel

    special = {}
    if tokenizer is not None:
        special = dict(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    config = GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=64,
        vocab_size=vocab_size,
        n_positions=32,
        tie_word_embeddings=tie,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **(special or dict(bos_token_id=0, eos_token_id=1)),
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def world_tokenizer():
    from prefopt.world import WorldConfig, build_world

    return build_world(WorldConfig()).tokenizer()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


# ---------------------------------------------------------------------------- state dicts
def test_extrapolate_state_matches_hand_computed_values():
    sft = {
        "w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        "b": torch.tensor([0.5]),
        "steps": torch.tensor([3]),
    }
    aligned = {
        "w": torch.tensor([[2.0, 2.0], [1.0, 5.0]]),
        "b": torch.tensor([1.5]),
        "steps": torch.tensor([7]),
    }
    out = extrapolate_state(sft, aligned, 0.5)
    # aligned + 0.5 * (aligned - sft)
    assert torch.equal(out["w"], torch.tensor([[2.5, 2.0], [0.0, 5.5]]))
    assert torch.equal(out["b"], torch.tensor([2.0]))
    assert torch.equal(out["steps"], torch.tensor([7]))  # not floating: copied from aligned
    # alpha = -1 is the SFT model
    back = extrapolate_state(sft, aligned, -1.0)
    assert torch.equal(back["w"], sft["w"]) and torch.equal(back["b"], sft["b"])
    # the inputs are untouched
    assert torch.equal(aligned["w"], torch.tensor([[2.0, 2.0], [1.0, 5.0]]))


def test_extrapolate_state_computes_in_float32_and_keeps_the_aligned_dtype():
    sft = {"w": torch.tensor([1.0, 0.25, -3.0], dtype=torch.bfloat16)}
    aligned = {"w": torch.tensor([1.00390625, 0.5, -2.0], dtype=torch.bfloat16)}
    out = extrapolate_state(sft, aligned, 0.3)
    assert out["w"].dtype == torch.bfloat16
    a, s = aligned["w"].float(), sft["w"].float()
    assert torch.equal(out["w"], (a + 0.3 * (a - s)).bfloat16())


def test_alpha_zero_returns_the_aligned_state_exactly():
    torch.manual_seed(0)
    sft = {"w": torch.randn(4, 3), "h": torch.randn(5).half()}
    aligned = {"w": torch.randn(4, 3), "h": torch.randn(5).half()}
    out = extrapolate_state(sft, aligned, 0.0)
    assert all(torch.equal(out[k], aligned[k]) and out[k].dtype == aligned[k].dtype for k in out)


def test_mismatched_keys_and_shapes_are_refused_with_the_key_named():
    w = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"'c' is in the aligned model but not in the SFT"):
        extrapolate_state({"a": w, "b": w}, {"a": w, "c": w}, 0.5)
    with pytest.raises(ValueError, match=r"'b' is in the SFT model but not in the aligned"):
        extrapolate_state({"a": w, "b": w}, {"a": w}, 0.5)
    with pytest.raises(ValueError, match=r"'w': shapes differ \(SFT \(2, 3\) vs aligned \(3, 3\)"):
        extrapolate_state({"w": w}, {"w": torch.zeros(3, 3)}, 0.5)
    with pytest.raises(ValueError, match=r"'model.embed_tokens.weight': vocabulary sizes differ"):
        extrapolate_state(
            {"model.embed_tokens.weight": torch.zeros(50, 8)},
            {"model.embed_tokens.weight": torch.zeros(51, 8)},
            0.5,
        )
    with pytest.raises(ValueError, match=r"vocabulary sizes differ \(50 vs 51"):
        extrapolate_model(tiny_gpt2(0, vocab_size=50), tiny_gpt2(1, vocab_size=51), 0.5)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        extrapolate_state({"w": w}, {"w": w}, float("nan"))


# ---------------------------------------------------------------------------- modules
def test_every_parameter_is_extrapolated_and_tied_weights_once():
    sft, aligned = tiny_gpt2(0), tiny_gpt2(1)
    assert aligned.lm_head.weight is aligned.transformer.wte.weight
    sft_before, aligned_before = snapshot(sft), snapshot(aligned)
    alpha = 0.5
    out: Any = extrapolate_model(sft, aligned, alpha)

    assert out is not aligned
    assert out.lm_head.weight is out.transformer.wte.weight  # still tied
    sft_params = dict(sft.named_parameters(remove_duplicate=False))
    out_params = dict(out.named_parameters(remove_duplicate=False))
    for name, param in aligned.named_parameters(remove_duplicate=False):
        expected = param + alpha * (param - sft_params[name])
        assert_close(out_params[name], expected, rtol=0, atol=0)
    # applied twice to the shared tensor, the embedding would have moved by 2 * alpha
    wte_a, wte_s = aligned.transformer.wte.weight, sft.transformer.wte.weight
    twice = wte_a + 2 * alpha * (wte_a - wte_s)
    assert not torch.allclose(out.transformer.wte.weight, twice)
    assert_unchanged(sft, sft_before)
    assert_unchanged(aligned, aligned_before)


def test_alpha_zero_model_equals_aligned_exactly():
    sft, aligned = tiny_gpt2(0), tiny_gpt2(1)
    out = extrapolate_model(sft, aligned, 0.0)
    expected = aligned.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in out.state_dict().items())


def test_buffers_stay_as_in_the_aligned_model():
    sft, aligned = tiny_gpt2(0), tiny_gpt2(1)
    # float buffers that differ between the two: a state-dict update would extrapolate them
    sft.transformer.register_buffer("marker", torch.tensor([1.0, 2.0]))
    aligned.transformer.register_buffer("marker", torch.tensor([3.0, 5.0]))
    sft.transformer.register_buffer("scratch", torch.ones(3), persistent=False)
    aligned.transformer.register_buffer("scratch", torch.full((3,), 4.0), persistent=False)
    out: Any = extrapolate_model(sft, aligned, 0.5)
    assert torch.equal(out.transformer.marker, torch.tensor([3.0, 5.0]))
    assert torch.equal(out.transformer.scratch, torch.full((3,), 4.0))
    assert out.transformer.marker is not aligned.transformer.marker  # a copy


def test_models_that_tie_different_weights_are_refused():
    with pytest.raises(ValueError, match="shares its tensor"):
        extrapolate_model(tiny_gpt2(0, tie=False), tiny_gpt2(1, tie=True), 0.5)


# ---------------------------------------------------------------------------- LoRA
def lora_model(base: torch.nn.Module, seed: int = 3, **options):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn", "c_fc", "wte"], lora_dropout=0.0, **options
    )
    peft_model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:  # B (A for embeddings) is zero at init: make the delta real
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return peft_model


def merged_state(peft_model) -> dict[str, torch.Tensor]:
    return copy.deepcopy(peft_model).merge_and_unload().state_dict()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_scaling_lora_b_is_exactly_expo_on_the_merged_weights():
    base = tiny_gpt2(0, tie=False)
    base_state = snapshot(base)
    sft = copy.deepcopy(base)
    peft_model = lora_model(base)
    adapter_before = snapshot(peft_model)
    alpha = 0.7

    scaled = extrapolate_lora(peft_model, alpha)
    merged, merged_scaled = merged_state(peft_model), merged_state(scaled)
    changed = 0
    for key, theta_base in base_state.items():
        expected = theta_base + (1 + alpha) * (merged[key] - theta_base)
        assert_close(merged_scaled[key], expected, rtol=0, atol=1e-5)
        changed += not torch.equal(merged[key], theta_base)
    assert changed == 3  # c_attn, c_fc and wte carry an adapter: the check is not vacuous
    assert_unchanged(peft_model, adapter_before)

    # extrapolate_model sees that the adapter sits on the SFT weights and takes this route
    from peft import PeftModel

    routed = extrapolate_model(sft, peft_model, alpha)
    assert isinstance(routed, PeftModel)
    routed_state = merged_state(routed)
    assert all(torch.equal(routed_state[k], merged_scaled[k]) for k in merged_scaled)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lora_on_another_base_is_merged_and_extrapolated_in_full():
    other_sft = tiny_gpt2(5, tie=False)
    peft_model = lora_model(tiny_gpt2(0, tie=False))
    out = extrapolate_model(other_sft, peft_model, 0.4)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    expected = extrapolate_model(other_sft, merged, 0.4)
    assert not hasattr(out, "peft_config")
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in out.state_dict().items())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dora_is_refused_by_the_lora_route():
    peft_model = lora_model(tiny_gpt2(0, tie=False), use_dora=True)
    with pytest.raises(ValueError, match="DoRA"):
        extrapolate_lora(peft_model, 0.5)


# ---------------------------------------------------------------------------- folders
def test_load_and_extrapolate_saves_a_plain_hf_model_with_the_tokenizer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = world_tokenizer()
    sft = tiny_gpt2(0, len(tokenizer), tokenizer=tokenizer)
    aligned = tiny_gpt2(1, len(tokenizer), tokenizer=tokenizer)
    save_model(sft, tokenizer, tmp_path / "sft")
    save_model(aligned, tokenizer, tmp_path / "aligned")
    out = tmp_path / "expo"
    load_and_extrapolate(str(tmp_path / "sft"), str(tmp_path / "aligned"), 0.3, out)

    loaded = AutoModelForCausalLM.from_pretrained(out)
    expected = extrapolate_model(sft, aligned, 0.3).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    assert len(AutoTokenizer.from_pretrained(out)) == len(tokenizer)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_load_and_extrapolate_scales_a_lora_folder(tmp_path):
    from peft import AutoPeftModelForCausalLM

    tokenizer = world_tokenizer()
    save_model(
        tiny_gpt2(0, len(tokenizer), tie=False, tokenizer=tokenizer), tokenizer, tmp_path / "sft"
    )
    base = load_pretrained(str(tmp_path / "sft"))
    base_state = snapshot(base)
    peft_model = lora_model(base)
    save_model(peft_model, tokenizer, tmp_path / "lora")
    out = tmp_path / "expo"
    load_and_extrapolate(str(tmp_path / "sft"), str(tmp_path / "lora"), 1.5, out)

    assert (out / "adapter_config.json").exists()
    loaded = AutoPeftModelForCausalLM.from_pretrained(out)
    merged, merged_scaled = merged_state(peft_model), merged_state(loaded)
    for key, theta_base in base_state.items():
        expected = theta_base + 2.5 * (merged[key] - theta_base)
        assert_close(merged_scaled[key], expected, rtol=0, atol=1e-5)


def test_vocabulary_mismatch_between_folders_names_both_paths(tmp_path):
    tokenizer = world_tokenizer()
    n = len(tokenizer)
    save_model(tiny_gpt2(0, n, tokenizer=tokenizer), tokenizer, tmp_path / "sft")
    # a tokenizer with one more token
    bigger = copy.deepcopy(tokenizer)
    bigger.add_tokens(["extra_token"])
    save_model(tiny_gpt2(1, n, tokenizer=tokenizer), bigger, tmp_path / "aligned_tok")
    sft, aligned = str(tmp_path / "sft"), str(tmp_path / "aligned_tok")
    with pytest.raises(ValueError, match=rf"vocabulary sizes differ \({n} vs {n + 1}\)") as err:
        load_and_extrapolate(sft, aligned, 0.5, None)
    assert sft in str(err.value) and aligned in str(err.value)
    # a resized embedding, no tokenizer saved with it
    save_model(tiny_gpt2(1, n + 2, tokenizer=tokenizer), None, tmp_path / "aligned_emb")
    aligned = str(tmp_path / "aligned_emb")
    with pytest.raises(ValueError, match=rf"vocabulary sizes differ \({n} vs {n + 2}\)") as err:
        load_and_extrapolate(sft, aligned, 0.5, None)
    assert sft in str(err.value) and aligned in str(err.value)


# ---------------------------------------------------------------------------- alpha search
def test_alpha_grid_and_best_alpha_rules():
    assert alpha_grid([1.0, -0.5, 2, 1.0, -0.0]) == [-0.5, 0.0, 1.0, 2.0]
    rows = [
        {"alpha": -1.0, "mean": 1.0},
        {"alpha": 0.0, "mean": 0.5},
        {"alpha": 0.5, "mean": 1.0},
        {"alpha": 2.0, "mean": float("nan")},
    ]
    assert best_alpha(rows) == 0.5  # a tie goes to the alpha closest to 0; NaN never wins
    with pytest.raises(ValueError, match="finite"):
        alpha_grid([float("inf")])


def test_curve_rows_hand_computed():
    per_prompt = {
        0.0: torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
        1.0: torch.tensor([2.0, 2.0, 5.0], dtype=torch.float64),
    }
    base, plus = curve_rows(per_prompt)
    assert base == {
        "alpha": 0.0,
        "mean": 2.0,
        "se": 1 / math.sqrt(3),
        "diff_vs_0": 0.0,
        "diff_se": 0.0,
    }
    # scores 2, 2, 5: sd sqrt(3); differences 1, 0, 2: mean 1, sd 1
    assert plus["alpha"] == 1.0 and plus["mean"] == 3.0
    assert plus["se"] == pytest.approx(1.0, abs=1e-12)
    assert plus["diff_vs_0"] == 1.0
    assert plus["diff_se"] == pytest.approx(1 / math.sqrt(3), abs=1e-12)


TARGET_ID = 10  # a plain word of the world's vocabulary


class CountWord:
    """Toy scorer: how many times one word appears in a completion."""

    def __init__(self, word: str):
        self.word = word

    def score(self, prompts, completions):
        return torch.tensor([float(c.split().count(self.word)) for c in completions])


def test_alpha_search_writes_the_curve_and_picks_the_best_alpha(tmp_path):
    from transformers import AutoModelForCausalLM

    from prefopt.models.generation import generate
    from prefopt.world import WorldConfig, build_world

    world = build_world(WorldConfig())
    tokenizer = world.tokenizer()
    word = tokenizer.convert_ids_to_tokens(TARGET_ID)
    sft = tiny_gpt2(0, len(tokenizer), tokenizer=tokenizer)
    aligned = copy.deepcopy(sft)
    # the "alignment update": raise the target word's logit by 3 through the final norm's bias
    # (logit_j += bias . wte_j); extrapolating scales that shift to 3 (1 + alpha)
    with torch.no_grad():
        direction = sft.transformer.wte.weight[TARGET_ID]
        aligned.transformer.ln_f.bias.add_(3.0 * direction / direction.pow(2).sum())
    save_model(sft, tokenizer, tmp_path / "sft")
    save_model(aligned, tokenizer, tmp_path / "aligned")

    prompts = world.eval_prompts("test")[:4]
    gen = EvalConfig(samples_per_prompt=2, max_new_tokens=8, batch_size=8)
    scorer = CountWord(word)
    sft_path, aligned_path = str(tmp_path / "sft"), str(tmp_path / "aligned")
    result = alpha_search(
        sft_path,
        aligned_path,
        [1.0, -0.5, 2.0, 1.0],
        scorer,
        prompts,
        gen,
        "cpu",
        tmp_path / "out",
        seed=7,
    )

    assert result["alphas"] == [-0.5, 0.0, 1.0, 2.0]  # alpha 0 added, sorted, de-duplicated
    assert result["best_alpha"] == 2.0
    by_alpha = {row["alpha"]: row for row in result["curve"]}
    assert by_alpha[2.0]["mean"] > by_alpha[1.0]["mean"] > by_alpha[0.0]["mean"]
    assert by_alpha[0.0]["diff_vs_0"] == 0.0 and by_alpha[0.0]["diff_se"] == 0.0
    for row in result["curve"]:
        assert row["diff_vs_0"] == pytest.approx(row["mean"] - by_alpha[0.0]["mean"], abs=1e-12)

    # alpha 0 is the aligned model, sampled with the same seed: recompute its mean directly
    direct = generate(
        load_pretrained(aligned_path), tokenizer, prompts, gen, torch.device("cpu"), 7
    )
    counts = scorer.score(direct.flat_prompts, direct.flat_completions).view(4, 2).mean(1)
    assert by_alpha[0.0]["mean"] == pytest.approx(float(counts.double().mean()), abs=1e-12)

    out = tmp_path / "out"
    with open(out / "expo_curve.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["alpha", "mean", "se", "diff_vs_0", "diff_se"]
    assert [float(r["alpha"]) for r in table] == [-0.5, 0.0, 1.0, 2.0]
    assert [float(r["mean"]) for r in table] == [r["mean"] for r in result["curve"]]
    assert json.loads((out / "expo.json").read_text()) == result
    assert (out / "expo_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the saved model is the alpha = 2 extrapolation, loadable with plain transformers
    saved = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    expected = extrapolate_model(sft, aligned, 2.0).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in saved.items())
    assert (out / "model" / "tokenizer.json").exists()

    # deterministic: a second search gives the same curve
    again = alpha_search(
        sft_path,
        aligned_path,
        [-0.5, 1.0, 2.0],
        scorer,
        prompts,
        gen,
        "cpu",
        tmp_path / "again",
        seed=7,
    )
    assert again["curve"] == result["curve"]
