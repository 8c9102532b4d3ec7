"""Tests of the synthetic preference world (prefopt.world)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from prefopt.world import World, WorldConfig, build_world, read_jsonl, write_jsonl
from prefopt.world.diagnostics import context_dependence
from prefopt.world.language import INSTRUCTION_NAMES, KIND_ADJ, KIND_NOUN, KIND_VERB

SMALL = {
    "n_sft": 60,
    "n_sft_test": 20,
    "n_train_pairs": 80,
    "n_test_pairs": 40,
    "n_ood_pairs": 30,
    "n_eval_prompts": 10,
}
MATERIALISED = {
    "sft_train.jsonl",
    "sft_test.jsonl",
    "pairs_train.jsonl",
    "pairs_test.jsonl",
    "pairs_ood.jsonl",
    "eval_prompts_test.jsonl",
    "eval_prompts_ood.jsonl",
    "world.json",
}


@pytest.fixture(scope="module")
def world() -> World:
    return World(WorldConfig())


def small(**kw: object) -> WorldConfig:
    return WorldConfig(**{**SMALL, **kw})  # type: ignore[arg-type]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------- determinism
def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    w1 = build_world(small(seed=3), cache_dir=tmp_path / "a")
    w2 = build_world(small(seed=3), cache_dir=tmp_path / "b")
    assert w1.folder is not None and w2.folder is not None
    files1, files2 = folder_bytes(w1.folder), folder_bytes(w2.folder)
    assert MATERIALISED <= set(files1)
    assert any(name.startswith("tokenizer/") for name in files1)
    assert files1 == files2


def test_different_seed_gives_different_data() -> None:
    a, b = World(small(seed=0)), World(small(seed=1))
    assert a.language.words != b.language.words
    assert a.preference_records("train")[0]["prompt"] != b.preference_records("train")[0]["prompt"]


def test_cache_is_reused_and_matches_fresh_generation(tmp_path: Path) -> None:
    cfg = small(seed=5)
    first = build_world(cfg, cache_dir=tmp_path)
    marker = first.folder / "world.json"  # type: ignore[operator]
    stamp = marker.stat().st_mtime_ns
    second = build_world(cfg, cache_dir=tmp_path)
    assert second.folder == first.folder and marker.stat().st_mtime_ns == stamp
    fresh = World(cfg)
    for split in ("train", "test", "ood"):
        assert second.preference_records(split) == fresh.preference_records(split)
    assert second.sft_records("train") == fresh.sft_records("train")
    assert second.eval_prompts("ood") == fresh.eval_prompts("ood")
    assert len([p for p in tmp_path.iterdir()]) == 1  # no temporary folders left behind


def test_write_jsonl_is_canonical(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [{"b": 1.0 / 3.0, "a": [0.1234567891, None, True], "c": "é"}])
    assert path.read_bytes() == b'{"a":[0.123457,null,true],"b":0.333333,"c":"\\u00e9"}\n'
    assert read_jsonl(path) == [{"a": [0.123457, None, True], "b": 0.333333, "c": "é"}]
    with pytest.raises(ValueError):
        write_jsonl(path, [{"x": float("nan")}])


def test_config_coercion_from_mapping() -> None:
    from omegaconf import OmegaConf

    structured = OmegaConf.structured(WorldConfig(seed=4))
    assert World(structured).config == WorldConfig(seed=4)
    assert World({"seed": 4, "n_topics": 6}).config.n_topics == 6
    with pytest.raises(ValueError):
        World({"not_a_field": 1})
    with pytest.raises(ValueError):
        World({"comparison_counts": "zipf"})


# ----------------------------------------------------------------------------- tokenizer
def test_tokenizer_one_token_per_word_and_reload(world: World, tmp_path: Path) -> None:
    tok = world.tokenizer()
    words = world.language.words
    assert len(tok) == world.vocab_size < 512
    ids = tok(" ".join(words), add_special_tokens=False)["input_ids"]
    assert len(ids) == len(words) and tok.unk_token_id not in ids
    assert tok.decode(ids) == " ".join(words)
    world.save_tokenizer(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert loaded(" ".join(words))["input_ids"] == ids
    assert loaded.padding_side == "right"
    assert (loaded.pad_token, loaded.eos_token, loaded.bos_token, loaded.unk_token) == (
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
    )
    assert loaded("zzzz " + words[0])["input_ids"] == [loaded.unk_token_id, ids[0]]
    prompt = world.eval_prompts("test")[0]
    assert loaded(prompt)["input_ids"][-1] == loaded.convert_tokens_to_ids(":")


# ----------------------------------------------------------------------------- gold reward
def hand_example(world: World) -> tuple[str, str]:
    lang = world.language
    t0, t1 = lang.topic_words[0], lang.topic_words[1]
    brief = INSTRUCTION_NAMES.index("brief")
    prompt = lang.format_prompt(
        lang.instruction_words[brief][0], [t0[KIND_NOUN][0], t0[KIND_ADJ][1]]
    )
    # tags: DET ADJ NOUN VERB ADJ(positive) NOUN(topic 1) NOUN(banned)
    words = [
        lang.determiners[0],
        t0[KIND_ADJ][0],
        t0[KIND_NOUN][1],
        t0[KIND_VERB][0],
        lang.positive[0],
        t1[KIND_NOUN][0],
        lang.banned[0],
    ]
    return prompt, " ".join(words)


def test_objectives_of_hand_constructed_response(world: World) -> None:
    prompt, completion = hand_example(world)
    got = world.objective_scores([prompt], [completion])[0].tolist()
    target = round(0.25 * world.config.max_response_words)  # brief: 6 words
    expected = [
        3 / 6,  # relevance: 3 on-topic words among 6 non-function words
        math.exp(-abs(7 - target) / (world.config.max_response_words / 6)),  # length
        5 / 6,  # fluency: NOUN->NOUN is the only disallowed transition
        (1 - 0) / (1 + 0 + 1),  # positivity
        0.5 - 1.0,  # safety: one banned word
    ]
    assert got == pytest.approx(expected, abs=1e-6)
    assert world.objective_names == ["relevance", "length", "fluency", "positivity", "safety"]


def test_gold_is_weighted_sum_of_objectives(world: World) -> None:
    records = world.preference_records("test")[:50]
    prompts = [r["prompt"] for r in records] * 2
    completions = [r["chosen"] for r in records] + [r["rejected"] for r in records]
    objectives = world.objective_scores(prompts, completions)
    weights = world.objective_weights(prompts)
    gold = world.gold_reward(prompts, completions)
    rho = world.informativeness(prompts, completions)
    assert 0 < float((rho < 1).float().mean()) < 1  # some behaviour text loses credit
    for i in range(len(prompts)):
        parts = [float(weights[i, k]) * float(objectives[i, k]) for k in range(5)]
        total = sum(float(rho[i]) * c if c > 0 else c for c in parts)  # credits scaled by rho
        assert float(gold[i]) == pytest.approx(total, abs=1e-5)
    assert torch.equal(world.score(prompts, completions), gold)
    meta = [r["metadata"]["gold_chosen"] for r in records]
    assert gold[: len(records)].tolist() == pytest.approx(meta, abs=1e-5)
    brief = world.objective_weights([hand_example(world)[0]])[0].tolist()
    assert brief == pytest.approx([2 * w for w in (1.0, 2.0, 0.5, 0.0, 0.5)])


def test_weights_depend_on_instruction(world: World) -> None:
    prompts = [
        world.language.format_prompt(words[0], []) for words in world.language.instruction_words
    ]
    weights = world.objective_weights(prompts)
    assert weights.shape == (len(INSTRUCTION_NAMES), 5)
    assert len({tuple(row.tolist()) for row in weights}) == len(INSTRUCTION_NAMES)
    check = context_dependence(world)
    assert check["gated_accuracy_vs_gold"] == 1.0
    assert check["fixed_accuracy_vs_gold"] < check["linear_gated_accuracy_vs_gold"] < 1.0


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "   ",
        "<unk>",
        "<unk> <unk> <unk>",
        "<eos> <pad> <bos>",
        ":",
        "héllo wörld !",
        "\n\t",
        None,
        "a" * 10_000,
    ],
)
def test_junk_scores_low_and_finite(world: World, junk: str | None) -> None:
    prompts = world.eval_prompts("test")[:1] + ["", "arbitrary prompt"]
    gold = world.gold_reward(prompts, [junk] * 3)
    assert torch.isfinite(gold).all() and (gold.abs() < 1e-6).all()
    assert world.objective_scores(prompts, [junk] * 3).shape == (3, 5)
    assert (world.oracle_quality(prompts, [junk] * 3) > 0).all()


def test_random_text_low_and_oracle_quality_positive(world: World) -> None:
    prompts = world.eval_prompts("test")
    random_gold = world.gold_reward(prompts, world.random_responses(prompts))
    sft_gold = torch.tensor([r["metadata"]["gold"] for r in world.sft_records("test")])
    assert torch.isfinite(random_gold).all()
    assert random_gold.mean() < sft_gold.mean() - 1.5
    completions = [r["chosen"] for r in world.preference_records("test")]
    prompts = [r["prompt"] for r in world.preference_records("test")]
    j = world.oracle_quality(prompts, completions)
    assert (j > 0).all()
    assert torch.allclose(j, world.gold_reward(prompts, completions).exp(), rtol=1e-5)


def test_behaviour_quality_ordering(world: World) -> None:
    prompts = world.eval_prompts("test") * 2
    means = [
        float(
            world.gold_reward(prompts, [r[0] for r in world.sample_responses(prompts, 1, q)]).mean()
        )
        for q in (0.0, 0.5, 1.0)
    ]
    assert means[0] < means[1] < means[2]
    sft = sum(r["metadata"]["gold"] for r in world.sft_records("test")) / world.config.n_sft_test
    oracle = float(world.gold_reward(prompts, world.oracle_responses(prompts)).mean())
    assert means[1] < sft < oracle - 1.0
    samples = world.sample_responses(prompts[:3], 4, seed=7)
    assert [len(s) for s in samples] == [4, 4, 4]
    assert samples == world.sample_responses(prompts[:3], 4, seed=7)


# ----------------------------------------------------------------------------- pairs & labels
def test_preference_record_schema(world: World) -> None:
    records = world.preference_records("train")
    assert len(records) == world.config.n_train_pairs
    for r in records[:200]:
        m = r["metadata"]
        assert r["margin"] is None and r["chosen"] != r["rejected"]
        assert m["gold_gap"] == pytest.approx(m["gold_chosen"] - m["gold_rejected"], abs=2e-6)
        assert m["label_agrees_with_gold"] == (m["gold_gap"] >= 0)
        assert m["instruction"] in INSTRUCTION_NAMES and len(m["objectives_chosen"]) == 5
    flipped = sum(not r["metadata"]["label_agrees_with_gold"] for r in records)
    records[0]["chosen"] = "mutated"
    assert world.preference_records("train")[0]["chosen"] != "mutated"  # callers get copies
    assert 0.05 * len(records) < flipped < 0.35 * len(records)


def test_bayes_accuracy_band_and_hand_computation() -> None:
    w = World(small(label_temperature=2.0))
    records = [{"metadata": {"gold_gap": g, "label_agrees_with_gold": g >= 0}} for g in (0, 1, -2)]
    expected = (0.5 + sigmoid(0.5) + sigmoid(1.0)) / 3
    acc = w.bayes_accuracy(records)
    assert acc["expected"] == pytest.approx(expected)
    assert acc["empirical_label_agreement"] == pytest.approx(2 / 3)


def test_expected_accuracy_hand_computation_and_the_bayes_bound() -> None:
    w = World(small(label_temperature=2.0))
    records = [{"metadata": {"gold_gap": g}} for g in (1.0, -2.0, 0.5, 3.0)]
    # margins right, right (negative gap, negative margin), tie, wrong
    got = w.expected_accuracy(records, torch.tensor([0.3, -5.0, 0.0, -1.0]))
    assert got == pytest.approx((sigmoid(0.5) + (1 - sigmoid(-1.0)) + 0.5 + (1 - sigmoid(1.5))) / 4)
    with pytest.raises(ValueError, match="3 margins"):
        w.expected_accuracy(records, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        w.expected_accuracy(records, [1.0, float("nan"), 1.0, 1.0])


def test_expected_accuracy_of_the_gold_reward_is_the_bayes_accuracy(world: World) -> None:
    records = world.preference_records("test")
    gaps = [r["metadata"]["gold_gap"] for r in records]
    bayes = world.bayes_accuracy(records)["expected"]
    assert world.expected_accuracy(records, gaps) == pytest.approx(bayes)
    # the reversed scorer is expected to be right exactly when the Bayes scorer is wrong
    assert world.expected_accuracy(records, [-g for g in gaps]) == pytest.approx(1 - bayes)


def test_default_bayes_accuracy_in_band(world: World) -> None:
    acc = world.bayes_accuracy(world.preference_records("test"))
    assert 0.75 <= acc["expected"] <= 0.9
    assert 0.7 <= acc["empirical_label_agreement"] <= 0.95
    gaps = [abs(r["metadata"]["gold_gap"]) for r in world.preference_records("test")]
    assert min(gaps) < 0.2 and max(gaps) > 3.0  # both hard and easy pairs


def test_ood_split_uses_only_held_out_topics(world: World) -> None:
    lang = world.language
    ood = set(lang.ood_topics)
    ood_prompts = world.eval_prompts("ood") + [r["prompt"] for r in world.preference_records("ood")]
    for prompt in ood_prompts:
        assert lang.parse_prompt(prompt).topic in ood
    in_dist = world.eval_prompts("test") + [r["prompt"] for r in world.sft_records("train")]
    texts = in_dist + [
        f"{r['prompt']} {r['chosen']} {r['rejected']}"
        for split in ("train", "test")
        for r in world.preference_records(split)
    ]
    for text in texts:
        topics = {lang.info[w].topic for w in text.split() if w in lang.info}
        assert not topics & ood


def test_train_and_test_prompts_are_disjoint(world: World) -> None:
    train = {r["prompt"] for r in world.preference_records("train")}
    train |= {r["prompt"] for r in world.sft_records("train")}
    test = set(world.eval_prompts("test")) | {r["prompt"] for r in world.preference_records("test")}
    assert train and test and not train & test


def test_long_tail_comparison_counts() -> None:
    w = World(small(comparison_counts="long_tail", n_train_pairs=600))
    records = w.preference_records("train")
    assert len(records) == 600
    counts = Counter(r["metadata"]["pair_id"] for r in records)
    once = sum(1 for c in counts.values() if c == 1)
    assert once / len(counts) > 0.45 and max(counts.values()) >= 4
    by_pair: dict[str, set[frozenset[str]]] = {}
    for r in records:
        by_pair.setdefault(r["metadata"]["pair_id"], set()).add(
            frozenset((r["chosen"], r["rejected"]))
        )
    assert all(len(v) == 1 for v in by_pair.values())  # repeats compare the same two responses
    assert all(r["metadata"]["n_comparisons"] == 1 for r in w.preference_records("test"))
    uniform = World(small()).preference_records("train")
    assert len({r["metadata"]["pair_id"] for r in uniform}) == len(uniform)


def test_describe_mentions_every_instruction(world: World) -> None:
    text = world.describe()
    assert all(name in text for name in INSTRUCTION_NAMES)
    assert str(world.vocab_size) in text


def test_records_carry_the_informativeness_the_world_computes(world: World) -> None:
    records = world.preference_records("test")[:100]
    prompts = [r["prompt"] for r in records]
    for side in ("chosen", "rejected"):
        rho = world.informativeness(prompts, [r[side] for r in records]).tolist()
        stored = [r["metadata"][f"informativeness_{side}"] for r in records]
        assert stored == pytest.approx(rho, abs=1e-6)
    assert any(v < 1 for r in records for v in (r["metadata"]["informativeness_chosen"],))
