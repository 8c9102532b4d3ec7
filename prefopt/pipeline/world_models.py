"""The world's models that recipes start from, as cached stages: ``world:sft`` and ``world:rm``.

``model.name_or_path: world:sft`` names the SFT policy of the recipe's world: the `sft` recipe
run with the same world, tiny architecture and seed; ``world:rm`` likewise names the `rm`
recipe's Bradley-Terry reward model (ArmoRM's frozen backbone, PPO's default reward). Each is a
stage of :mod:`prefopt.pipeline.cache`: trained on first use into ``<cache>/stages/<stage>-<id>``
and reused afterwards, keyed by the resolved stage recipe, so a change of the world or of the
architecture trains a new one. Trainers never see these names: :func:`resolve_world_models`
replaces them by model folders before a recipe is trained.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

from prefopt.config import ConfigError, Recipe, load_recipe
from prefopt.paths import clock, say
from prefopt.pipeline.cache import run_in_folder, stage_identity, stages_dir
from prefopt.registry import get_loss
from prefopt.world.config import PAIR_ONLY_FIELDS

WORLD_MODEL_STAGES = {"world:sft": "sft", "world:rm": "rm"}


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
    # how it runs (not what it learns) follows the recipe; it stays out of the identity
    base.trainer.device = recipe.trainer.device
    base.trainer.progress_bar = recipe.trainer.progress_bar
    return base


def sft_recipe_for(recipe: Recipe) -> Recipe:
    return stage_recipe_for(recipe, "sft")


def world_model_folder(recipe: Recipe, name: str) -> Path:
    """The cache folder of world model ``name`` ("world:sft" or "world:rm") for ``recipe``
    (the same folder as a pipeline stage with the same settings: they share it)."""
    if name not in WORLD_MODEL_STAGES:
        raise ConfigError([f"{name}: not one of {', '.join(WORLD_MODEL_STAGES)}"])
    staged = stage_recipe_for(recipe, WORLD_MODEL_STAGES[name])
    return stages_dir() / f"{staged.name}-{stage_identity(name_folders(staged))}"


#: rough build times in seconds on 2 free CPU cores at the shipped sizes (sft: measured 10 s
#: for its 300 steps, plus the world's generation; rm: the `rm` recipe's 12 CPU-minutes; a
#: loaded machine takes several times longer): said before a build starts
BUILD_SECONDS = {"sft": 20, "rm": 720}
WHAT = {"sft": "SFT policy", "rm": "Bradley-Terry reward model"}


def world_model(recipe: Recipe, name: str, needed_by: str = "") -> Path:
    """The model folder of ``name`` for ``recipe``, trained first if the cache lacks it (with
    a notice of what is built, for which setting, and roughly how long it takes)."""
    if name not in WORLD_MODEL_STAGES:
        raise ConfigError([f"{name}: not one of {', '.join(WORLD_MODEL_STAGES)}"])
    stage = WORLD_MODEL_STAGES[name]
    staged = stage_recipe_for(recipe, stage)
    folder = world_model_folder(recipe, name)
    if not (folder / "summary.json").exists():
        say(build_notice(name, staged, folder, needed_by))
    staged = resolve_world_models(staged)
    run_in_folder(staged, folder, f"the world's {stage} model")
    return folder / "model"


def build_notice(name: str, staged: Recipe, folder: Path, needed_by: str) -> str:
    stage = WORLD_MODEL_STAGES[name]
    steps, full = staged.trainer.max_steps, load_recipe(stage).trainer.max_steps
    seconds = BUILD_SECONDS[stage] * steps / max(1, full)
    why = f" for {needed_by}" if needed_by else ""
    resumed = " (resuming its checkpoint)" if any(folder.glob("checkpoint-*")) else ""
    return (
        f"building {name}{why}: the world's {WHAT[stage]} (the `{stage}` recipe, {steps} steps, "
        f"roughly {clock(seconds)} on 2 free CPU cores){resumed}. It is trained once and cached in "
        f"{folder}; later runs on this world reuse it. Ctrl-C keeps its last checkpoint: the "
        "same command resumes it."
    )


def world_sft_model(recipe: Recipe) -> Path:
    return world_model(recipe, "world:sft")


def world_rm_model(recipe: Recipe) -> Path:
    return world_model(recipe, "world:rm")


def _resolve(spec: str, recipe: Recipe, train: bool, key: str = "") -> str:
    parts = [p.strip() for p in spec.split(",")]
    if not any(p.startswith("world:") for p in parts):
        return spec

    def one(p: str) -> str:
        if not p.startswith("world:"):
            return p
        if train:
            return str(world_model(recipe, p, needed_by=f"{key}={spec}" if key else ""))
        return str(world_model_folder(recipe, p) / "model")

    return ",".join(one(p) for p in parts)


def resolve_world_models(recipe: Recipe) -> Recipe:
    """A copy of ``recipe`` whose ``world:*`` model names (policy, tokenizer, reference, and
    the reward of an online recipe) are the cached models' folders, trained first if needed."""
    return _named(recipe, train=True)


def name_folders(recipe: Recipe) -> Recipe:
    """As :func:`resolve_world_models`, but only naming the folders (nothing is trained)."""
    return _named(recipe, train=False)


def _named(recipe: Recipe, train: bool) -> Recipe:
    out = copy.deepcopy(recipe)
    for section, key in (
        ("model", "name_or_path"),
        ("model", "tokenizer"),
        ("reference", "name_or_path"),
    ):
        value = getattr(getattr(out, section), key)
        if isinstance(value, str):
            setattr(getattr(out, section), key, _resolve(value, recipe, train, f"{section}.{key}"))
    if uses_scorer(recipe) and recipe.reward.scorer:
        out.reward.scorer = _resolve(recipe.reward.scorer, recipe, train, "reward.scorer")
    if get_loss(recipe.loss.name).kind == "online":  # several rewards (reward.components)
        for component in out.reward.components:
            component.scorer = _resolve(component.scorer, recipe, train, "reward.components")
    return out


def uses_scorer(recipe: Recipe) -> bool:
    """Whether ``reward.scorer`` is used: by online training, or by a best-of-n evaluation."""
    online = get_loss(recipe.loss.name).kind == "online"
    return bool(recipe.reward.scorer) and (online or recipe.eval.best_of_n > 1)


def has_world_models(recipe: Recipe) -> bool:
    names = [recipe.model.name_or_path, recipe.model.tokenizer, recipe.reference.name_or_path]
    if uses_scorer(recipe):
        names += (recipe.reward.scorer or "").split(",")
    if get_loss(recipe.loss.name).kind == "online":
        names += [p for c in recipe.reward.components for p in c.scorer.split(",")]
    return any(isinstance(n, str) and n.strip().startswith("world:") for n in names)
