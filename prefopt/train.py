"""Run a validated recipe: pick the trainer from the loss's kind, make the run directory, train."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefopt.config import Recipe, save_recipe
from prefopt.paths import is_main_process, run_dir_for
from prefopt.registry import get_loss


def trainer_class(recipe: Recipe) -> type:
    kind = get_loss(recipe.loss.name).kind
    if kind == "sft":
        from prefopt.trainers.sft import SFTTrainer

        return SFTTrainer
    if kind == "pairwise":
        from prefopt.trainers.preference import PreferenceTrainer

        return PreferenceTrainer
    if kind == "reward":
        from prefopt.trainers.reward import RewardTrainer

        return RewardTrainer
    if kind == "online":
        from prefopt.trainers.online import OnlineTrainer

        return OnlineTrainer
    if kind == "armorm":
        from prefopt.trainers.armorm import ArmoRMTrainer

        return ArmoRMTrainer
    raise ValueError(f"no trainer for loss kind {kind!r}")


def run_directory(recipe: Recipe) -> Path:
    return run_dir_for(recipe.name, recipe.output_dir)


def train(
    recipe: Recipe, run_dir: Path | None = None, saved: Recipe | None = None
) -> tuple[dict[str, Any], Path]:
    """Train `recipe` in `run_dir` (default: `run_directory(recipe)`); returns (summary, run
    directory). Its model names must be folders or hub names: ``world:sft`` and the other
    pipeline names are resolved by :func:`prefopt.pipeline.run.train` (what ``prefopt.train``
    and ``prefopt train`` call); ``saved`` is the recipe written to ``recipe.yaml`` (default:
    `recipe`), the unresolved one there. A fresh run (no `resume`) refuses a folder that
    already holds checkpoints, so a later `resume: auto` can never pick up weights of another
    run."""
    from prefopt.trainers.base import TrainingError, list_checkpoints

    run_dir = run_dir or run_directory(recipe)
    if recipe.resume is None and list_checkpoints(run_dir):
        raise TrainingError(
            f"{run_dir} already holds checkpoints of an earlier run: set resume=auto to continue "
            "it, or choose another output_dir"
        )
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        trainer = trainer_class(recipe)(recipe, run_dir)
        trainer.resume_checkpoint()  # a resume that cannot work fails before the recipe is written
    except BaseException:
        if created:  # nothing was trained: leave no empty run folder behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    save_recipe(saved or recipe, run_dir / "recipe.yaml")
    summary = trainer.train()
    if is_main_process():
        from prefopt.eval.html import run_report

        run_report(run_dir)
    return summary, run_dir
