"""`prefopt eval RUN_DIR`: evaluate a finished run again (e.g. with more samples).

A policy run on the world gets the gold evaluation (gold reward, KL, win rate, diversity, in and
out of distribution) against its reference: the initial model for SFT, the reference policy for
the DPO family. On real data without a gold reward it reports what can be measured: the
held-out implicit-reward accuracy and log-probs of a policy, the accuracy and calibration of a
reward model. Each evaluation is written beside the run's own, into a new folder
``RUN_DIR/eval-<timestamp>/`` (``summary.json`` with the results and the settings changed,
``eval_report.md`` for a world policy, ``report.html``); the training-time ``summary.json``
and ``eval_report.md`` are never changed.

A run trained on files has no held-out data unless its recipe named some: ``data.eval_source``
(and ``data.eval_split``, ``data.max_eval_rows``) may be given on the command line, e.g.
``prefopt eval RUN data.eval_source=held_out.jsonl``; the evaluation then reports the held-out
loss, the implicit-reward (reference log-prob) margins and accuracy of a policy, or a reward
model's accuracy and calibration, and a few held-out prompts' completions from the policy and
from its reference. Without held-out data it refuses, saying how to give some.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from prefopt.config import ConfigError, load_recipe
from prefopt.paths import stamped_dir
from prefopt.registry import get_loss

# the held-out data of a run may be given to `prefopt eval` (any other key is an eval. key)
HELD_OUT_KEYS = ("data.eval_source=", "data.eval_split=", "data.max_eval_rows=")


def evaluate_run(run_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Evaluate the finished run ``run_dir`` again, into a new ``eval-<timestamp>/`` folder in
    it; returns what that folder's summary.json holds (``eval``, ``overrides``, ``eval_dir``)."""
    run_dir = Path(run_dir)
    overrides = [
        o if o.startswith(("eval.", *HELD_OUT_KEYS)) else f"eval.{o}" for o in overrides or []
    ]
    recipe = load_recipe(run_dir / "recipe.yaml", overrides)
    from prefopt.models.engines import recipe_engine_problems

    problems = recipe_engine_problems(recipe, online=False)  # eval.engine: before any model loads
    if problems:
        raise ConfigError(problems)
    model_dir = run_dir / "model"
    if not model_dir.exists():
        raise ConfigError([f"{run_dir} has no trained model (model/); did the run finish?"])
    eval_dir = stamped_dir(run_dir, "eval")
    eval_dir.mkdir()
    try:
        results = _evaluate(run_dir, recipe, model_dir, eval_dir)
    except BaseException:
        shutil.rmtree(eval_dir, ignore_errors=True)  # no empty folder left behind
        raise
    summary = {"eval": results, "overrides": overrides, "eval_dir": str(eval_dir)}
    (eval_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    from prefopt.eval.html import run_report

    run_report(eval_dir)
    return summary


def _evaluate(run_dir: Path, recipe: Any, model_dir: Path, eval_dir: Path) -> dict[str, Any]:
    kind = get_loss(recipe.loss.name).kind
    if kind == "armorm":
        return evaluate_armorm(recipe, model_dir)
    reference_path = run_reference_path(run_dir, recipe)
    if kind in ("sft", "pairwise", "unpaired") and reference_path is None:
        raise ConfigError([f"{run_dir}: no reference to compare with (no initial_model/)"])
    recipe.model.name_or_path = str(model_dir)
    recipe.model.lora = None  # an adapter folder loads with its base through peft
    recipe.reference.mode = "copy"
    recipe.reference.name_or_path = reference_path
    recipe.resume = None
    from prefopt.pipeline.world_models import resolve_world_models
    from prefopt.train import trainer_class

    recipe = resolve_world_models(recipe)  # e.g. an online run's reward model (world:rm)
    trainer = trainer_class(recipe)(recipe, eval_dir, for_eval=True)
    on_files = getattr(trainer, "world", None) is None
    if on_files and kind != "online" and not trainer.eval_examples:
        raise ConfigError(
            [
                f"{run_dir} was trained on data.source={recipe.data.source} and has no held-out "
                "data to evaluate on: give some, e.g. prefopt eval "
                f"{run_dir} data.eval_source=held_out.jsonl (data.eval_split for a folder or "
                "hub dataset)"
            ]
        )
    results = {**trainer.evaluate(), **trainer.final_evaluation()}  # the report: in eval_dir
    if on_files and kind in ("sft", "pairwise"):
        results["samples"] = held_out_samples(trainer)
    return results


def held_out_samples(trainer: Any, n: int = 4) -> list[dict[str, str]]:
    """A completion of the policy and one of its reference for each of the first ``n``
    held-out prompts (sampled as ``eval`` says), for a run without a gold reward."""
    from dataclasses import replace

    from prefopt.models.engines import sample_once

    recipe = trainer.recipe
    prompts = [
        trainer.tokenizer.decode(e["prompt_ids"], skip_special_tokens=True)
        for e in trainer.eval_examples[:n]
    ]
    cfg = replace(recipe.eval, samples_per_prompt=1)
    args = (trainer.tokenizer, prompts, cfg, trainer.device, recipe.seed,
            recipe.data.max_prompt_length)  # fmt: skip
    policy = sample_once(trainer.unwrapped(), *args)
    with trainer.reference_forward():
        reference = sample_once(trainer.reference_model(), *args)
    return [
        {"prompt": p, "policy": a[0], "reference": b[0]}
        for p, a, b in zip(prompts, policy.completions, reference.completions, strict=True)
    ]


def _resolve_model(name: str | None, recipe: Any) -> str | None:
    """A model folder for a recipe's ``name_or_path`` (``world:sft`` trains or finds the
    world's cached model)."""
    if name is not None and name.startswith("world:"):
        from prefopt.pipeline.world_models import world_model

        return str(world_model(recipe, name))
    return name


def run_reference_path(run_dir: Path, recipe: Any) -> str | None:
    """The model a policy run was measured against: ``reference.name_or_path``, else its
    initial model (``world:sft`` for the DPO family on the world, ``initial_model/`` for SFT)."""
    initial = run_dir / "initial_model"
    return (
        recipe.reference.name_or_path
        or _resolve_model(recipe.model.name_or_path, recipe)
        or (str(initial) if initial.exists() else None)
    )


def evaluate_armorm(recipe: Any, model_dir: Path) -> dict[str, Any]:
    """Held-out accuracy and calibration of a saved ArmoRM (its trained gate, not a refit)."""
    from prefopt.data import load_records
    from prefopt.rewards.armorm_model import ArmoRMScorer
    from prefopt.trainers.reward import reward_metrics

    scorer = ArmoRMScorer.from_pretrained(model_dir)
    data = recipe.data
    world = None
    if data.source == "world":
        from prefopt.paths import cache_dir
        from prefopt.world import build_world

        world = build_world(recipe.world, cache_dir=cache_dir())
        records = world.preference_records(data.eval_split or "test")
        records = records[: data.max_eval_rows] if data.max_eval_rows else records
    else:
        from prefopt.data.loaders import file_builder
        from prefopt.trainers.policy import held_out_split

        if not data.eval_source and file_builder(data.source) is not None:
            raise ConfigError(["data.source is a file (no held-out split): set data.eval_source"])
        split = held_out_split(data) if data.eval_source else (data.eval_split or "test")
        records, _ = load_records(
            data.eval_source or data.source,
            split=split,
            format=data.format,
            data_dir=data.data_dir,
            max_rows=data.max_eval_rows,
            on_bad_row=data.on_bad_row,
            tokenizer=scorer.features.tokenizer,
            max_field_chars=data.max_field_chars,
            allow_empty_prompt=data.allow_empty_prompt,
        )
    if not records:
        raise ConfigError(["no held-out pairs to evaluate (data.eval_split / data.eval_source)"])
    prompts = [r["prompt"] for r in records]
    chosen = scorer.score(prompts, [r["chosen"] for r in records])
    rejected = scorer.score(prompts, [r["rejected"] for r in records])
    results: dict[str, Any] = reward_metrics(chosen, rejected)
    if world is not None:
        results["bayes_accuracy"] = world.bayes_accuracy(records)["expected"]
        results["expected_accuracy"] = world.expected_accuracy(records, chosen - rejected)
    return results


# --------------------------------------------------------------------------- compare
def compare_policies(
    a: str,
    b: str,
    reference: str | None = None,
    n_prompts: int | None = None,
    samples_per_prompt: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """`prefopt compare A B`: two policies of one world, paired on the same prompts and the same
    sampling seeds (see ``prefopt.eval.gold.paired_policy_comparison``).

    A and B are policy run directories, model folders or ``world:sft``; at least one must be a
    run trained on the world (its recipe names the world and the evaluation settings). KL is
    measured against one reference for both (``reference``, default A's run reference, else
    B's), so that the KL difference compares like with like."""
    import torch

    from prefopt.eval.gold import format_policy_comparison, paired_policy_comparison
    from prefopt.models.loading import load_pretrained
    from prefopt.paths import cache_dir
    from prefopt.world import build_world
    from prefopt.world.config import PAIR_ONLY_FIELDS

    runs = {m: load_recipe(Path(m) / "recipe.yaml") for m in (a, b) if _is_run(m)}
    if not runs:
        raise ConfigError(["compare: A or B must be a policy run directory trained on the world"])
    for name, run in runs.items():
        if run.data.source != "world":
            raise ConfigError([f"compare: {name} was not trained on the world"])
        if get_loss(run.loss.name).kind not in ("sft", "pairwise", "unpaired", "online"):
            raise ConfigError([f"compare: {name} is not a policy (loss.name={run.loss.name})"])
    worlds = {
        json.dumps(
            {k: v for k, v in vars(r.world).items() if k not in PAIR_ONLY_FIELDS}, sort_keys=True
        )
        for r in runs.values()
    }
    if len(worlds) > 1:
        raise ConfigError(["compare: A and B were trained on different worlds"])
    recipe = next(iter(runs.values()))
    cfg = recipe.eval
    if n_prompts is not None:
        cfg.n_prompts = n_prompts
    if samples_per_prompt is not None:
        cfg.samples_per_prompt = samples_per_prompt
    if cfg.n_prompts < 1 or cfg.samples_per_prompt < 1:
        raise ConfigError(["compare: need --n-prompts >= 1 and --samples >= 1"])
    candidates = (run_reference_path(Path(m), runs[m]) for m in (a, b) if m in runs)
    ref_name = reference or next((c for c in candidates if c is not None), None)

    def folder(spec: str) -> str:
        if spec in runs:
            model = Path(spec) / "model"
            if not model.exists():
                raise ConfigError([f"compare: {spec} has no trained model (model/)"])
            return str(model)
        resolved = _resolve_model(spec, recipe)
        assert resolved is not None
        folder_path = Path(resolved)
        if not any((folder_path / f).exists() for f in ("config.json", "adapter_config.json")):
            raise ConfigError(
                [f"compare: {spec} is neither a run directory nor a model folder (config.json)"]
            )
        return resolved

    paths = {"a": folder(a), "b": folder(b)}
    ref_path = folder(ref_name) if ref_name is not None else None
    world = build_world(recipe.world, cache_dir=cache_dir())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = {k: load_pretrained(p).to(device).eval() for k, p in paths.items()}
    ref_model = load_pretrained(ref_path).to(device).eval() if ref_path is not None else None
    result = paired_policy_comparison(
        models["a"],
        models["b"],
        ref_model,
        world.tokenizer(),
        world,
        cfg,
        device,
        seed=seed,
        max_prompt_length=recipe.data.max_prompt_length,
    )
    result.update(a=a, b=b, reference=ref_name, seed=seed)
    result["table"] = format_policy_comparison(result, a, b)
    return result


def _is_run(spec: str) -> bool:
    return (Path(spec) / "recipe.yaml").exists()
