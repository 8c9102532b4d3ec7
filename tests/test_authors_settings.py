"""The authors' readings as recipes (issue 25): MPO's stage 1, ExPO's alpha selection, PM's
update schedule; the project's first readings stay as they were."""

import pytest

from prefopt.config import ConfigError, load_recipe
from prefopt.pipeline.stages import expo_prompts, load_pipeline
from prefopt.world import WorldConfig, build_world


def _stage(pipeline, name):
    return next(s for s in pipeline.stages if s.name == name).settings


def test_mpo_authors_changes_stage_one_only():
    authors, ours = load_pipeline("mpo_authors"), load_pipeline("mpo")
    dpo = _stage(authors, "dpo")
    # one epoch of the easy set whatever tau makes its size (steps known once it is loaded)
    assert (dpo.loss.beta, dpo.trainer.epochs, dpo.trainer.warmup_steps) == (0.2, 1.0, 2)
    first = _stage(ours, "dpo")
    assert (first.loss.beta, first.trainer.max_steps, first.trainer.epochs) == (0.1, 63, None)
    for name in ("sft", "rm", "split", "dpo_all", "ppo_all"):
        assert _stage(authors, name) == _stage(ours, name), name


def test_expo_authors_selects_with_the_proxy_on_held_out_prompts():
    expo = _stage(load_pipeline("expo_authors"), "expo")
    assert expo.scorer == "world:rm" and expo.prompts == "heldout"
    assert (expo.temperature, expo.top_k, expo.top_p) == (0.7, 50, 0.9)
    assert (expo.presence_penalty, expo.frequency_penalty) == (0.1, 0.1)
    first = _stage(load_pipeline("expo"), "expo")
    assert (first.scorer, first.prompts, first.temperature) == ("world", "train", 1.0)
    with pytest.raises(ConfigError, match="stages.expo.prompts"):
        load_pipeline("expo", ["stages.expo.prompts=test"])


def test_held_out_prompts_are_neither_trained_on_nor_evaluated():
    world = build_world(WorldConfig())
    heldout = expo_prompts(world, "heldout", 10_000)
    train = {r["prompt"] for r in world.preference_records("train")}
    evaluated = set(world.eval_prompts("test")) | set(world.eval_prompts("ood"))
    assert heldout and not set(heldout) & train and not set(heldout) & evaluated
    assert len(heldout) == len(set(heldout))
    assert expo_prompts(world, "heldout", 5) == heldout[:5]


@pytest.mark.parametrize("name", ["ppo_pm_authors", "ppo_cpm_authors"])
def test_pm_authors_schedule(name):
    recipe = load_recipe(name)
    assert recipe.loss.epochs == 1 and recipe.loss.minibatch_size == recipe.trainer.batch_size
    assert recipe.trainer.lr == 1e-6 and recipe.advantage.whiten is False
    assert recipe.rollout.top_p == 0.9
    first = load_recipe(name.removesuffix("_authors"))
    assert first.regulariser == recipe.regulariser
    assert (first.loss.epochs, first.trainer.lr) == (4, 5e-5)


def test_length_normalised_dpo_uses_tulu_3s_beta():
    # open-instruct's Tulu 3 DPO: --dpo_loss_type dpo_norm --dpo_beta 5 (TRL's default is 0.1)
    from prefopt.config import load_recipe

    loss = load_recipe("sigmoid_norm").loss
    assert (loss.name, loss.beta) == ("sigmoid_norm", 5.0)
