"""Models of the synthetic world that recipes can start from, trained once and cached.

``model.name_or_path: world:sft`` names the SFT policy of the recipe's world: the `sft` recipe
run with the same world, tiny architecture and seed. It is trained on first use (about a minute
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
from prefopt.world.config import WorldConfig


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
)


def sft_recipe_for(recipe: Recipe) -> Recipe:
    """The `sft` recipe on the same world, architecture and seed as `recipe`."""
    sft = load_recipe("sft")
    defaults = WorldConfig()
    sft.world = replace(recipe.world, **{f: getattr(defaults, f) for f in PAIR_ONLY_FIELDS})
    sft.model.tiny = recipe.model.tiny
    sft.seed = recipe.seed
    sft.eval.enabled = False  # `make train RECIPE=sft` reports the SFT model's own evaluation
    sft.output_dir = None
    return sft


def world_sft_model(recipe: Recipe) -> Path:
    from prefopt.train import train

    sft = sft_recipe_for(recipe)
    key = hashlib.sha256(to_yaml(sft).encode()).hexdigest()[:12]
    # how it runs (not what it learns) stays out of the cache key
    sft.trainer.device = recipe.trainer.device
    sft.trainer.progress_bar = recipe.trainer.progress_bar
    folder = world_cache_dir() / f"world-sft-{key}"
    model = folder / "model"
    if (model / "config.json").exists():
        return model
    print(f"training the world's SFT policy once (cached in {folder})")
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    sft.output_dir = str(tmp)
    train(sft)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return model
