"""The cache of finished stages: one folder per stage identity, safe when several processes
start at once.

A stage is a recipe trained in its own folder. Its **identity** is a hash of its resolved
recipe (which names its inputs by their folders, themselves named by identity) and of the
world's format version; its folder is ``<cache>/stages/<name>-<identity>/``. It is **finished** when
``summary.json`` is written (the trainer writes it last, after the model). Running a stage:

* finished: nothing to do, the summary is read back;
* started but not finished (a crash, Ctrl-C, a killed job): resumed from its newest intact
  checkpoint (``resume: auto``);
* otherwise trained from scratch.

An exclusive ``fcntl`` lock on ``<folder>.lock`` is held while a stage trains, so a second
process asking for the same stage waits for the first and then finds it finished instead of
training it again.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from prefopt.config import RUNTIME_ONLY_KEYS, Device, EngineSettings, Recipe
from prefopt.paths import (
    cache_dir,
    exclusive_lock,
    launched_processes,
    say,
    single_process_environment,
)
from prefopt.world.config import WORLD_FORMAT_VERSION

SUMMARY = "summary.json"
#: ``rollout.engine`` and ``eval.engine`` at their defaults (the hf engine: what every stage used)
ENGINE_DEFAULTS: dict[str, Any] = asdict(EngineSettings())

#: Settings added to the recipe after stages were first cached, at the value that does what
#: every stage did before they existed: left out of the identity at that value, so adding an
#: option does not orphan every cached stage (a changed value is in the identity as usual).
LATER_SETTINGS: dict[str, dict[str, Any]] = {
    "eval": {
        "shifts": [],
        "best_of_n": 1,
        "embedding_model": None,
        "nli_model": None,
        "engine": ENGINE_DEFAULTS,
    },
    "rollout": {
        "logps_from_generation": False,
        "engine": ENGINE_DEFAULTS,
        "tis_cap": 0.0,
        "dynamic_sampling": False,
        "dynamic_sampling_tries": 3,
        "mask_truncated": False,
    },
    "reward": {
        "ensemble": "mean",
        "ensemble_coef": 0.5,
        "components": [],
        "overlong_buffer": None,
        "overlong_penalty": 1.0,
    },
    "data": {
        "label_noise": 0.0,
        "unpaired": "rows",
        "max_field_chars": 1_000_000,
        "allow_empty_prompt": False,
    },
    "trainer": {"project": "prefopt", "epochs": None},
    "loss": {
        "f_divergence": "reverse_kl",
        "f_alpha": 0.5,
        "ld_alpha": None,
        "wpo_weighting": False,
        "per_token": True,  # IPO's per-token log-ratios: what it always used
    },
}
#: Settings renamed after stages were first cached: their new key is written under the old
#: name in the identity, so the rename alone does not orphan a cached stage. The advantage
#: section of every recipe had ``grpo_scale: group`` before the estimators owned their config.
RENAMED_SETTINGS: dict[str, tuple[str, str, Any]] = {
    "advantage": ("scale_rewards", "grpo_scale", "group"),
}


def stage_identity(recipe: Recipe) -> str:
    """12 hex digits of the hash of what a stage learns from: its resolved recipe (without
    where it runs, how it reports and `RUNTIME_ONLY_KEYS`) and the world's format version."""
    learnt = replace(recipe, output_dir=None, resume=None)
    learnt.trainer = replace(recipe.trainer, device=Device.auto, progress_bar=True)
    node = cast(DictConfig, OmegaConf.create(OmegaConf.to_container(OmegaConf.structured(learnt))))
    # left out, so that adding such a setting keeps old caches; also from the defaults of the
    # later settings, so that e.g. an engine at its defaults but for its memory share is still
    # the default engine
    later = copy.deepcopy(LATER_SETTINGS)
    for key in RUNTIME_ONLY_KEYS:
        drop_key(node, key)
        drop_key(later, key)
    for section, defaults in later.items():
        part = cast(DictConfig, node[section])
        for key, value in defaults.items():
            if key in part and part[key] == value:
                part.pop(key)
    for section, (new_key, old_key, old_default) in RENAMED_SETTINGS.items():
        part = cast(DictConfig, node[section])
        part[old_key] = part.pop(new_key) if new_key in part else old_default
    # the world's format version is in the key: a world whose generation or gold reward
    # changed must not reuse a model trained on the old one
    payload = f"world-format-{WORLD_FORMAT_VERSION}\n{OmegaConf.to_yaml(node)}"
    return hashlib.sha256(portable(payload).encode()).hexdigest()[:12]


def drop_key(node: Any, key: str) -> None:
    """Remove the dotted ``key`` (``rollout.engine.sleep``) from nested mappings (dicts or
    DictConfigs), if it is there."""
    *path, name = key.split(".")
    for part in path:
        if not hasattr(node, "keys") or part not in node:
            return
        node = node[part]
    if hasattr(node, "keys") and name in node:
        node.pop(name)


def stages_dir() -> Path:
    """``<cache>/stages``: one folder per finished (or started) stage."""
    return cache_dir() / "stages"


def portable(text: str) -> str:
    """Stage folders appear in a later stage's settings: hash them by identity (the folder's
    name), not by where the cache lives."""
    return text.replace(str(stages_dir()) + "/", "stage:")


def is_finished(folder: Path) -> bool:
    return (folder / SUMMARY).exists()


def read_summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / SUMMARY).read_text())


@contextlib.contextmanager
def stage_lock(folder: Path, label: str) -> Iterator[None]:
    """Hold ``<folder>.lock`` exclusively; says so when another process holds it."""

    def waiting(holder: str) -> None:
        say(f"waiting for another process to finish {label} ({folder}; held by {holder})")

    with exclusive_lock(folder.with_name(folder.name + ".lock"), on_busy=waiting):
        yield


def run_once(
    folder: Path, label: str, work: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], bool]:
    """``work()`` in ``folder`` unless the folder is finished; returns ``(summary, ran)``. One
    process at a time (the lock); one that waited finds the work done. ``work`` returns the
    summary, and writes ``summary.json`` itself or has it written here, last."""
    if is_finished(folder):
        return read_summary(folder), False
    with stage_lock(folder, label):
        if is_finished(folder):  # another process finished it while we waited
            return read_summary(folder), False
        folder.mkdir(parents=True, exist_ok=True)
        summary = work()
        if not is_finished(folder):
            (folder / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
        return summary, True


def run_in_folder(recipe: Recipe, folder: Path, label: str) -> tuple[dict[str, Any], bool]:
    """Train ``recipe`` (already resolved) in ``folder`` unless it is finished there; returns
    ``(summary, ran)``. Resumes a started stage from its checkpoint."""

    def work() -> dict[str, Any]:
        from prefopt.train import train
        from prefopt.trainers.base import list_checkpoints

        staged = replace(recipe, output_dir=str(folder))
        staged.resume = "auto" if list_checkpoints(folder) else None
        if staged.resume:
            say(f"resuming {label} from its checkpoint in {folder}")
        if launched_processes() > 1:
            return _train_alone(staged, folder)
        return train(staged, folder)[0]

    return run_once(folder, label, work)


def _train_alone(recipe: Recipe, folder: Path) -> dict[str, Any]:
    """Train ``recipe`` in a child process outside the launch (its variables removed). A
    multi-process launch that needs a stage nobody trained yet (``world:sft`` on a fresh
    cache) gets the same model as a single process would: the stage's identity, and so its
    result, does not depend on how the run that asked for it was launched. The other
    processes wait on the stage's lock meanwhile."""
    import subprocess
    import sys

    from prefopt.config import save_recipe
    from prefopt.trainers.base import TrainingError

    path = folder / "launch-recipe.yaml"
    save_recipe(recipe, path)
    command = [sys.executable, "-m", "prefopt.cli", "train", str(path)]
    # its output is shown only if it fails: the launch's own lines stay the last ones
    done = subprocess.run(
        command, env=single_process_environment(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or not is_finished(folder):
        raise TrainingError(
            f"training the stage in {folder} alone failed:\n{(done.stdout + done.stderr)[-3000:]}"
        )
    return read_summary(folder)
