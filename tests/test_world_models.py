"""The cached `world:sft` policy: keyed by what shapes it, shared across pair-only settings."""

from dataclasses import replace

from prefopt.pipeline.world_models import sft_recipe_for
from prefopt.world import build_world
from prefopt.world.config import PAIR_ONLY_FIELDS
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
    import prefopt.pipeline.cache as cache
    from prefopt.config import load_recipe
    from prefopt.pipeline.world_models import world_model_folder

    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path))  # an empty cache: nothing to reuse
    recipe = load_recipe("dpo")
    seen = []
    for version in (cache.WORLD_FORMAT_VERSION, cache.WORLD_FORMAT_VERSION + 1):
        monkeypatch.setattr(cache, "WORLD_FORMAT_VERSION", version)
        seen.append(world_model_folder(recipe, "world:sft").name)
    assert len(set(seen)) == 2 and all(s.startswith("sft-") for s in seen)


def test_how_a_stage_runs_stays_out_of_its_identity():
    from prefopt.pipeline.cache import stage_identity

    a = tiny_recipe("sft", None)
    b = tiny_recipe("sft", None, "trainer.device=cpu", "trainer.progress_bar=false", "output_dir=x")
    assert stage_identity(a) == stage_identity(b)
    c = tiny_recipe("sft", None, "rollout.gather_zero3_weights=false")
    assert stage_identity(a) == stage_identity(c)
    d = tiny_recipe("sft", None, "data.max_unknown_fraction=1")  # a check, nothing learnt
    assert stage_identity(a) == stage_identity(d)
    assert stage_identity(a) != stage_identity(tiny_recipe("sft", None, "trainer.lr=0.1"))
