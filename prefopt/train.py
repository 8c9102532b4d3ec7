"""Run a validated recipe: pick the trainer from the loss's kind, make the run directory, train."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from prefopt.config import (
    RESUMABLE_CHANGES,
    ConfigError,
    Recipe,
    load_recipe,
    recipe_differences,
    save_recipe,
)
from prefopt.paths import FolderInUse, is_main_process, run_dir_for, run_folder_lock
from prefopt.registry import get_loss


def trainer_class(recipe: Recipe) -> type:
    kind = get_loss(recipe.loss.name).kind
    if kind == "sft":
        from prefopt.trainers.sft import SFTTrainer

        return SFTTrainer
    if kind == "pairwise":
        from prefopt.trainers.preference import PreferenceTrainer

        return PreferenceTrainer
    if kind == "unpaired":
        from prefopt.trainers.unpaired import UnpairedTrainer

        return UnpairedTrainer
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
    `recipe`), the unresolved one there.

    The folder belongs to one run: its lock makes a second run asking for it fail at once. A
    fresh run (no `resume`) refuses a folder that already holds checkpoints, so a later
    `resume: auto` can never pick up weights of another run; a resumed one must be the run
    stored in the folder (:func:`check_same_run`). Both checks come before any model loads
    and before anything in the folder is written."""
    from prefopt.trainers.base import TrainingError

    run_dir = run_dir or run_directory(recipe)
    created = not run_dir.exists()
    try:
        with run_folder_lock(run_dir):
            return _train_locked(recipe, run_dir, saved or recipe, created), run_dir
    except FolderInUse as exc:
        raise TrainingError(str(exc)) from None


def _train_locked(recipe: Recipe, run_dir: Path, saved: Recipe, created: bool) -> dict[str, Any]:
    from prefopt.trainers.base import TrainingError, list_checkpoints

    if recipe.resume is None and list_checkpoints(run_dir):
        raise TrainingError(
            f"{run_dir} already holds checkpoints of an earlier run: set resume=auto to continue "
            "it, or choose another output_dir"
        )
    try:
        if recipe.resume is not None:
            check_same_run(run_dir, saved, recipe.resume)
        check_model_sources(recipe)
        check_engines(recipe)
        trainer = trainer_class(recipe)(recipe, run_dir)
        trainer.resume_checkpoint()  # a resume that cannot work fails before the recipe is written
    except BaseException:
        if created:  # nothing was trained: leave no empty run folder behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    save_recipe(saved, run_dir / "recipe.yaml")
    summary = trainer.train()
    if is_main_process():
        from prefopt.eval.html import run_report

        run_report(run_dir)
    return summary


def check_model_sources(recipe: Recipe) -> None:
    """Model and tokenizer folders that cannot load, refused in one line each before any model
    loads (a missing local path, an empty folder, one with only config.json...)."""
    from prefopt.models.loading import model_source_problem

    model = recipe.model
    sources = [
        ("model.name_or_path", model.name_or_path, not model.tokenizer),
        ("model.tokenizer", model.tokenizer, True),
        ("reference.name_or_path", recipe.reference.name_or_path, False),
    ]
    problems = [
        model_source_problem(name, key, tokenizer=needs_tokenizer)
        for key, name, needs_tokenizer in sources
        if name and not str(name).startswith("world:")
    ]
    if any(problems):
        raise ConfigError([p for p in problems if p])


def check_engines(recipe: Recipe) -> None:
    """The rollout engines the run will build (``rollout.engine``, ``eval.engine``), refused in
    one line each before any model loads (an engine not installed, a policy it cannot load)."""
    from prefopt.models.engines import recipe_engine_problems

    problems = recipe_engine_problems(recipe, online=get_loss(recipe.loss.name).kind == "online")
    if problems:
        raise ConfigError(problems)


def check_same_run(run_dir: Path, recipe: Recipe, resume: str) -> None:
    """A resume continues the run stored beside its checkpoint: refuse a recipe that differs
    from that run's ``recipe.yaml`` in anything but :data:`RESUMABLE_CHANGES` (naming each
    difference). Without a stored recipe there is nothing to compare (the checkpoint checks
    still apply)."""
    from prefopt.trainers.base import TrainingError

    source = run_dir if resume == "auto" else Path(resume)
    stored_file = next(
        (p / "recipe.yaml" for p in (source, source.parent) if (p / "recipe.yaml").is_file()),
        None,
    )
    if stored_file is None:
        return
    try:
        stored = load_recipe(stored_file)
    except ConfigError as exc:
        raise TrainingError(
            f"resume: the run's stored recipe {stored_file} no longer loads ({exc.problems[0]}); "
            "continue it with the prefopt version that wrote it, or start a new output_dir"
        ) from None
    allowed: tuple[str, ...] = RESUMABLE_CHANGES
    before, now = _checkpoint_processes(source), int(os.environ.get("WORLD_SIZE", "1") or 1)
    same_batch = _global_batch(stored, before) == _global_batch(recipe, now)
    if same_batch:
        # another process count with the per-process batch scaled to keep the global batch
        # (2 processes x 4 resumed as 1 x 8): the same trajectory (docs/scaling.md)
        allowed = (*allowed, "trainer.batch_size", "trainer.grad_accum")
    differences = recipe_differences(stored, recipe, allowed)
    if not same_batch and before != now:
        differences.append(
            f"global batch (trainer.batch_size x grad_accum x processes): "
            f"{_global_batch(stored, before)} over {before} process(es) -> "
            f"{_global_batch(recipe, now)} over {now}"
        )
    if differences:
        shown = "; ".join(differences[:6]) + ("; ..." if len(differences) > 6 else "")
        raise TrainingError(
            f"resume: {stored_file.parent} holds another run ({stored.name}): the recipe differs "
            f"in {len(differences)} setting(s) a resume may not change ({shown}). Resume it with "
            f"its own recipe (prefopt train {stored_file} resume=auto output_dir="
            f"{stored_file.parent}), or train this one in another output_dir"
        )


def _global_batch(recipe: Recipe, processes: int) -> int:
    return recipe.trainer.batch_size * recipe.trainer.grad_accum * processes


def _checkpoint_processes(source: Path) -> int:
    """How many processes wrote the checkpoint a resume from ``source`` (a run folder or a
    checkpoint) would continue: its ``trainer_state.json`` says so (1 when it does not)."""
    from prefopt.trainers.base import list_checkpoints

    states = [source / "trainer_state.json"] if (source / "trainer_state.json").is_file() else [
        c / "trainer_state.json" for c in list_checkpoints(source)[-1:]
    ]  # fmt: skip
    try:
        return int(json.loads(states[0].read_text()).get("processes", 1)) if states else 1
    except (OSError, ValueError, AttributeError):
        return 1  # an unreadable checkpoint is reported by the trainer's own checks
