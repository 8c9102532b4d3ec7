"""Models of the synthetic world that recipes can start from, trained once and cached.

``model.name_or_path: world:sft`` names the SFT policy of the recipe's world: the `sft` recipe
run with the same world, tiny architecture and seed; ``world:rm`` likewise names the `rm`
recipe's Bradley-Terry reward model. It is trained on first use (about a minute
on 2 CPU cores) into the cache folder and reused afterwards, keyed by a hash of the resolved SFT
recipe, so a change of the world or of the architecture trains a new one.

Cache folder: ``$PREFOPT_CACHE`` or ``~/.cache/prefopt``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import replace
from pathlib import Path

from prefopt.config import Recipe, load_recipe, to_yaml
from prefopt.world.config import WORLD_FORMAT_VERSION


def world_cache_dir() -> Path:
    root = Path(os.environ.get("PREFOPT_CACHE", Path.home() / ".cache" / "prefopt"))
    root.mkdir(parents=True, exist_ok=True)
    return root


# World settings that shape only the preference pairs, never the language, prompts or
# demonstrations: they stay out of the SFT model's cache key (test_world_models checks this).
PAIR_ONLY_FIELDS = (
    "n_train_pairs",
    "n_test_pairs",
    "n_ood_pairs",
    "label_temperature",
    "comparison_counts",
    "long_tail_exponent",
    "long_tail_max_count",
    "pair_quality_min",
    "pair_quality_max",
    "hard_pair_fraction",
    "n_eval_prompts",  # evaluation prompts only: they never reach training
)


def stage_recipe_for(recipe: Recipe, stage: str) -> Recipe:
    """The shipped `stage` recipe ("sft" or "rm") on the same language, architecture and seed as
    `recipe`. The stage keeps its own pair settings (e.g. how many pairs an RM trains on)."""
    base = load_recipe(stage)
    shared = {f: getattr(base.world, f) for f in PAIR_ONLY_FIELDS}
    base.world = replace(recipe.world, **shared)
    base.model.tiny = recipe.model.tiny
    base.seed = recipe.seed
    base.eval.enabled = False  # `make train RECIPE=sft` reports the SFT model's own evaluation
    base.output_dir = None
    base.resume = None
    return base


def sft_recipe_for(recipe: Recipe) -> Recipe:
    return stage_recipe_for(recipe, "sft")


def world_sft_model(recipe: Recipe) -> Path:
    """The world's SFT policy for `recipe` (``model.name_or_path: world:sft``)."""
    return world_stage_model(recipe, "sft")


def world_rm_model(recipe: Recipe) -> Path:
    """The world's Bradley-Terry reward model (``world:rm``), e.g. ArmoRM's frozen backbone as
    in the paper, whose backbone was a Bradley-Terry reward model."""
    return world_stage_model(recipe, "rm")


WORLD_MODELS = {"world:sft": world_sft_model, "world:rm": world_rm_model}


def world_stage_model(recipe: Recipe, stage: str) -> Path:
    from prefopt.train import train

    staged = stage_recipe_for(recipe, stage)
    # the world's format version is in the key: a world whose generation or gold reward
    # changed must not reuse a model trained on the old one
    payload = f"world-format-{WORLD_FORMAT_VERSION}\n{to_yaml(staged)}"
    key = hashlib.sha256(payload.encode()).hexdigest()[:12]
    # how it runs (not what it learns) stays out of the cache key
    staged.trainer.device = recipe.trainer.device
    staged.trainer.progress_bar = recipe.trainer.progress_bar
    folder = world_cache_dir() / f"world-{stage}-{key}"
    model = folder / "model"
    if (model / "config.json").exists():
        return model
    print(f"training the world's {stage} model once (cached in {folder})")
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    staged.output_dir = str(tmp)
    train(staged)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return model
