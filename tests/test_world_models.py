"""The cached `world:sft` policy: keyed by what shapes it, shared across pair-only settings."""

from dataclasses import replace

from prefopt.world import build_world
from prefopt.world_models import PAIR_ONLY_FIELDS, sft_recipe_for
from tests.conftest import tiny_recipe


def test_pair_only_settings_do_not_change_the_sft_data_or_its_recipe():
    base = tiny_recipe("dpo", None)
    changed = tiny_recipe("rm_ids", None, "world.n_train_pairs=64", "world.label_temperature=2.0")
    assert changed.world.comparison_counts == "long_tail"
    assert sft_recipe_for(base) == sft_recipe_for(changed)
    world_a, world_b = build_world(base.world), build_world(changed.world)
    assert world_a.sft_records("train") == world_b.sft_records("train")
    assert world_a.eval_prompts("test") == world_b.eval_prompts("test")
    assert set(PAIR_ONLY_FIELDS) <= set(vars(base.world))


def test_settings_that_shape_the_language_do_change_it():
    base = tiny_recipe("dpo", None)
    other = replace(base.world, seed=base.world.seed + 1)
    assert build_world(other).sft_records("train") != build_world(base.world).sft_records("train")
    assert sft_recipe_for(tiny_recipe("dpo", None, "world.seed=1")) != sft_recipe_for(base)
