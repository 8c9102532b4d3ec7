"""The `prefopt` command line.

    prefopt train RECIPE [key=value ...]   train a recipe (a name in recipes/ or a YAML path)
    prefopt recipes                        list the shipped recipes
    prefopt eval RUN_DIR                   evaluate a finished run again

A bad recipe exits with status 2 and the list of problems, without a traceback. The last line
of `train` is ``run directory: <path>``; scripts rely on it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from prefopt.config import ConfigError, list_recipes, load_recipe, recipe_path

EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prefopt", description="preference optimisation")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train a recipe")
    p_train.add_argument("recipe", help="a recipe name (see `prefopt recipes`) or a YAML path")
    p_train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. loss.beta=0.2")
    sub.add_parser("recipes", help="list shipped recipes")
    p_eval = sub.add_parser("eval", help="evaluate a finished run")
    p_eval.add_argument("run_dir", type=Path)
    p_eval.add_argument("overrides", nargs="*", help="key=value overrides of the eval section")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.command == "recipes":
            return _recipes()
        if args.command == "train":
            return _train(args.recipe, args.overrides)
        if args.command == "eval":
            return _eval(args.run_dir, args.overrides)
    except ConfigError as exc:
        print(f"prefopt: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 1


def _recipes() -> int:
    names = list_recipes()
    width = max(len(n) for n in names) if names else 0
    for name in names:
        try:
            description = load_recipe(name).description
        except ConfigError as exc:
            description = f"(invalid: {exc.problems[0]})"
        print(f"{name:<{width}}  {description}")
    return 0


def _train(recipe_name: str, overrides: list[str]) -> int:
    recipe = load_recipe(recipe_name, overrides)  # validates before anything heavy loads
    from prefopt.train import run_directory, train
    from prefopt.trainers.base import TrainingError

    try:
        summary, run_dir = train(recipe)
    except TrainingError as exc:
        print(f"prefopt: training failed: {exc}", file=sys.stderr)
        print(f"run directory: {run_directory(recipe)}")
        return 1
    _print_summary(summary)
    print(f"run directory: {run_dir}")
    return 0


def _eval(run_dir: Path, overrides: list[str]) -> int:
    from prefopt.evaluate import evaluate_run

    if not (run_dir / "recipe.yaml").exists():
        raise ConfigError([f"{run_dir} is not a run directory (no recipe.yaml)"])
    recipe_path(run_dir / "recipe.yaml")
    summary = evaluate_run(run_dir, overrides)
    _print_summary(summary)
    print(f"run directory: {run_dir}")
    return 0


def _print_summary(summary: dict) -> None:
    ev = summary.get("eval", {})
    keys = ["gold_reward", "reference_gold_reward", "kl", "win_rate", "ead", "ood_gold_reward",
            "mean_length", "accuracy", "ece", "bayes_accuracy", "rewards/accuracies", "loss"]
    shown = [f"{k}={ev[k]:.4f}" for k in keys if isinstance(ev.get(k), int | float)]
    if shown:
        print("eval: " + " ".join(shown))


if __name__ == "__main__":
    sys.exit(main())
