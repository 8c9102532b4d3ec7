"""`prefopt eval RUN_DIR`: evaluate a finished run again (e.g. with more samples).

A policy run on the world gets the gold evaluation (gold reward, KL, win rate, diversity, in and
out of distribution) against its reference: the initial model for SFT, the reference policy for
the DPO family. On real data without a gold reward it reports what can be measured: the
held-out implicit-reward accuracy and log-probs of a policy, the accuracy and calibration of a
reward model. Results are merged into the run's summary.json under ``eval``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefopt.config import ConfigError, load_recipe
from prefopt.registry import get_loss


def evaluate_run(run_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    run_dir = Path(run_dir)
    recipe = load_recipe(
        run_dir / "recipe.yaml",
        [f"eval.{o}" if not o.startswith("eval.") else o for o in overrides or []],
    )
    model_dir = run_dir / "model"
    if not model_dir.exists():
        raise ConfigError([f"{run_dir} has no trained model (model/); did the run finish?"])
    kind = get_loss(recipe.loss.name).kind
    if kind == "armorm":
        return _update_summary(run_dir, evaluate_armorm(recipe, model_dir))
    original_init = recipe.model.name_or_path
    if original_init is not None and original_init.startswith("world:"):
        from prefopt.world_models import WORLD_MODELS

        original_init = str(WORLD_MODELS[original_init](recipe))
    initial = run_dir / "initial_model"
    reference_path = (
        recipe.reference.name_or_path
        or original_init
        or (str(initial) if initial.exists() else None)
    )
    recipe.model.name_or_path = str(model_dir)
    recipe.model.lora = None  # an adapter folder loads with its base through peft
    recipe.reference.mode = "copy"
    recipe.reference.name_or_path = reference_path
    recipe.resume = None
    from prefopt.train import trainer_class

    eval_dir = run_dir / "eval"
    trainer = trainer_class(recipe)(recipe, eval_dir, for_eval=True)
    if kind in ("sft", "pairwise") and reference_path is None:
        raise ConfigError([f"{run_dir}: no reference to compare with (no initial_model/)"])
    results = {**trainer.evaluate(), **trainer.final_evaluation()}
    report = eval_dir / "eval_report.md"
    if report.exists():
        report.replace(run_dir / "eval_report.md")
    return _update_summary(run_dir, results)


def _update_summary(run_dir: Path, results: dict[str, Any]) -> dict[str, Any]:
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["eval"] = {**summary.get("eval", {}), **results}
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    return summary


def evaluate_armorm(recipe: Any, model_dir: Path) -> dict[str, Any]:
    """Held-out accuracy and calibration of a saved ArmoRM (its trained gate, not a refit)."""
    from prefopt.data import load_records
    from prefopt.rewards.armorm_model import ArmoRMScorer
    from prefopt.trainers.reward import reward_metrics

    scorer = ArmoRMScorer.from_pretrained(model_dir)
    data = recipe.data
    world = None
    if data.source == "world":
        from prefopt.world import build_world
        from prefopt.world_models import world_cache_dir

        world = build_world(recipe.world, cache_dir=world_cache_dir())
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
