"""The cached `world:sft` policy: keyed by what shapes it, shared across pair-only settings."""

from dataclasses import replace
from pathlib import Path

import pytest

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


def test_the_world_models_cache_key_changes_with_the_worlds_format_version(monkeypatch, tmp_path):
    # a world whose generation or gold reward changed must not reuse a model of the old one
    import prefopt.world_models as wm
    from prefopt.config import load_recipe

    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path))  # an empty cache: nothing to reuse
    seen = []

    def fake_train(recipe):  # record the folder the stage would be trained into, train nothing
        seen.append(Path(recipe.output_dir).name.split(".tmp-")[0])
        raise RuntimeError("stop")

    import sys

    import prefopt.train  # noqa: F401  (the module; the package attribute is the function)

    monkeypatch.setattr(sys.modules["prefopt.train"], "train", fake_train)
    recipe = load_recipe("dpo")
    for version in (wm.WORLD_FORMAT_VERSION, wm.WORLD_FORMAT_VERSION + 1):
        monkeypatch.setattr(wm, "WORLD_FORMAT_VERSION", version)
        with pytest.raises(RuntimeError, match="stop"):
            wm.world_sft_model(recipe)
    assert len(seen) == 2 and seen[0] != seen[1]
