"""Run any recipe: a single recipe (its ``world:*`` models resolved first) or a staged one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefopt.config import ConfigError, Recipe, validate_recipe
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
    check_data_for_world_tokenizer(recipe)
    return train_one(resolve_world_models(recipe), run_dir, saved=recipe)


def check_data_for_world_tokenizer(recipe: Recipe) -> None:
    """A recipe that starts from a world model (``world:sft``) reads its own data with the
    world's tokenizer: check that data (its first 1000 rows) before the world's models are
    trained for it, as the trainer checks every run's data (``data.max_unknown_fraction``)."""
    model, data = recipe.model, recipe.data
    on_world_tokenizer = str(model.name_or_path).startswith("world:") and not model.tokenizer
    if data.source == "world" or not on_world_tokenizer:
        return
    from prefopt.data import load_records
    from prefopt.data.loaders import records_kind
    from prefopt.data.tokenize import unknown_tokens_problem
    from prefopt.paths import cache_dir
    from prefopt.registry import get_loss
    from prefopt.world import build_world

    tokenizer = build_world(recipe.world, cache_dir=cache_dir()).tokenizer()
    records, _ = load_records(
        data.source,
        kind=records_kind(get_loss(recipe.loss.name).kind, data.unpaired),
        format=data.format,
        split=data.split,
        data_dir=data.data_dir,
        max_rows=1000,
        on_bad_row=data.on_bad_row,
        tokenizer=tokenizer,
        max_field_chars=data.max_field_chars,
        allow_empty_prompt=data.allow_empty_prompt,
    )
    problem = unknown_tokens_problem(
        records,
        tokenizer,
        data.max_unknown_fraction,
        where=f"data.source={data.source}",
        tokenizer_name=f"the world's, of model.name_or_path={model.name_or_path}",
    )
    if problem:
        raise ConfigError([problem])
