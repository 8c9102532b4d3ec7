"""Run any recipe: a single recipe (its ``world:*`` models resolved first) or a staged one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefopt.config import Recipe, validate_recipe
from prefopt.pipeline.world_models import resolve_world_models


def train(recipe: Recipe | Any, run_dir: Path | None = None) -> tuple[dict[str, Any], Path]:
    """Train ``recipe``; a :class:`~prefopt.pipeline.stages.Pipeline` runs its stages. Its
    ``world:sft`` / ``world:rm`` models are found in (or trained into) the stage cache first,
    then the recipe is trained with their folders; the run directory's ``recipe.yaml`` keeps
    the names, so the run stays portable. Returns (summary, run dir)."""
    from prefopt.pipeline.stages import Pipeline, run_pipeline
    from prefopt.train import train as train_one

    if isinstance(recipe, Pipeline):
        return run_pipeline(recipe, run_dir)
    recipe = validate_recipe(recipe)  # what Python code changed is checked as a YAML file is
    return train_one(resolve_world_models(recipe), run_dir, saved=recipe)
