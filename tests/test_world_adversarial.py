"""The gold reward cannot be gamed by degenerate text (issue "Ground truth you can trust")."""

from __future__ import annotations

import pytest

from prefopt.world import WorldConfig, build_world
from prefopt.world.adversarial import GENERATORS, hill_climb
from prefopt.world.diagnostics import adversarial_table, distinct_test_prompts


@pytest.fixture(scope="module")
def table():
    return {r["name"]: r for r in adversarial_table(build_world(WorldConfig()))}


def test_suite_has_at_least_eight_degenerate_generators(table):
    degenerate = [r for r in table.values() if r["kind"] == "degenerate"]
    assert len(degenerate) >= 8
    assert {r["name"] for r in table.values()} >= set(GENERATORS)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_every_generator_scores_well_below_an_honest_mediocre_answer(table, name):
    honest = table["behaviour q=0.5"]
    row = table[name]
    if row["kind"] == "short":
        assert row["gold"] < honest["gold"]
    else:  # separated by more than two standard errors on each side
        assert row["gold"] + 2 * row["se"] < honest["gold"] - 2 * honest["se"], row


def test_without_informativeness_the_same_suite_games_the_gold_reward():
    # the format-1 world (rho = 1): most generators beat the honest mediocre answer, which is
    # why the factor exists; this keeps the suite an attack rather than a formality
    rows = {
        r["name"]: r for r in adversarial_table(build_world(WorldConfig(informativeness=False)))
    }
    honest = rows["behaviour q=0.5"]["gold"]
    winners = [n for n, r in rows.items() if r["kind"] == "degenerate" and r["gold"] > honest]
    assert len(winners) >= 8, winners


def test_the_oracle_is_the_best_response_set(table):
    others = [r for n, r in table.items() if n != "oracle"]
    assert all(table["oracle"]["gold"] > r["gold"] + 2 * r["se"] for r in others)


def test_black_box_search_does_not_beat_the_oracle_and_needs_varied_text():
    world = build_world(WorldConfig())
    lang, scale = world.language, world.config.reward_scale
    prompts = distinct_test_prompts(world, 8)
    starts = {
        "oracle": world.oracle_responses(prompts),
        "behaviour": [r[0] for r in world.sample_responses(prompts, 1, quality=1.0, seed=3)],
    }
    oracle_gold = world.gold_reward(prompts, starts["oracle"]).tolist()
    for kind, texts in starts.items():
        for prompt, start, best in zip(prompts, texts, oracle_gold, strict=True):
            text, gold = hill_climb(lang, lang.parse_prompt(prompt), start, scale, passes=2)
            assert gold <= best + 1e-6, (kind, prompt, text, gold, best)
            if gold > best - 1e-6:  # reaching the top takes honest, varied text
                assert float(world.informativeness([prompt], [text])[0]) == 1.0
                assert len(set(text.split())) >= 0.6 * len(text.split())


def test_informativeness_is_one_for_varied_text_and_zero_for_loops():
    world = build_world(WorldConfig())
    prompt = distinct_test_prompts(world, 1)[0]
    oracle = world.oracle_responses([prompt])[0]
    words = oracle.split()
    looped = " ".join((words[:2] * 12)[: len(words)])
    rho = world.informativeness([prompt] * 3, [oracle, looped, ""]).tolist()
    assert rho[0] == 1.0 and rho[1] == 0.0 and rho[2] == 0.0


def test_black_box_search_from_degenerate_starts_finds_only_varied_text():
    from collections import Counter

    world = build_world(WorldConfig())
    lang, scale = world.language, world.config.reward_scale
    prompts = distinct_test_prompts(world, 8)
    honest = world.gold_reward(
        prompts, [r[0] for r in world.sample_responses(prompts, 1, quality=0.5, seed=3)]
    )
    for name in ("restated_answer", "function_filler"):
        for prompt, start, bar in zip(
            prompts, world.adversarial_responses(prompts, name), honest.tolist(), strict=True
        ):
            text, gold = hill_climb(lang, lang.parse_prompt(prompt), start, scale, 2, 48)
            words = text.split()
            if gold > bar:
                assert Counter(words).most_common(1)[0][1] <= max(2, 0.15 * len(words)), text


def test_every_generator_is_below_the_honest_answer_on_every_instruction_type():
    # a reward hacker optimises per prompt, so the mean over instructions is not enough: on the
    # prompts of each instruction type, every generator stays below behaviour q = 0.5
    import numpy as np

    world = build_world(WorldConfig())
    prompts = distinct_test_prompts(world, 96)
    kinds = np.array([world.language.parse_prompt(p).instruction for p in prompts])
    honest = np.mean(
        [
            world.gold_reward(prompts, list(s)).numpy()
            for s in zip(*world.sample_responses(prompts, 4, 0.5, 7), strict=True)
        ],
        axis=0,
    )
    for name in GENERATORS:
        gold = np.mean(
            [
                world.gold_reward(
                    prompts, world.adversarial_responses(prompts, name, seed=s)
                ).numpy()
                for s in range(4)
            ],
            axis=0,
        )
        for kind in set(kinds.tolist()):
            mask = kinds == kind
            assert gold[mask].mean() < honest[mask].mean(), (name, kind)
