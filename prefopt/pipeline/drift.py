"""Length drift of trained policies on the world: ``python -m prefopt.pipeline.drift RUN ...``.

Samples every run's policy (and the world's SFT policy of the first run's recipe, as the
baseline) on the same evaluation prompts with the same seed, and prints a table of mean
completion length in tokens, the share of completions ending in EOS and the gold reward, each
with its standard error over prompts (:func:`prefopt.eval.completions.completion_summary`);
``--json FILE`` writes them. With a run's ``metrics.jsonl`` it also prints the training
trajectory of the same three figures (rollout means of the first and last ``--window``
batches). docs/algorithms/pm.md: the evidence for PM RLHF's length incentive.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from prefopt.config import EvalConfig, load_recipe
from prefopt.eval.completions import completion_summary
from prefopt.models.engines import sample_once
from prefopt.models.loading import load_pretrained
from prefopt.pipeline.world_models import world_sft_model
from prefopt.world import build_world


def drift_table(runs: list[Path], n_prompts: int, samples: int, seed: int) -> dict[str, Any]:
    """``{name: completion_summary}`` for ``sft`` and every run (its ``model/``)."""
    recipe = load_recipe(runs[0] / "recipe.yaml")
    world = build_world(recipe.world)
    tokenizer = world.tokenizer()
    prompts = world.eval_prompts("test")[:n_prompts]
    cfg = EvalConfig(n_prompts=n_prompts, samples_per_prompt=samples,
                     max_new_tokens=recipe.rollout.max_new_tokens,
                     engine=recipe.eval.engine)  # fmt: skip
    models = {"sft": world_sft_model(recipe)} | {run.name: run / "model" for run in runs}
    table = {}
    for name, folder in models.items():
        policy = load_pretrained(str(folder))
        drawn = sample_once(policy, tokenizer, prompts, cfg, torch.device("cpu"), seed)
        gold = world.gold_reward(drawn.flat_prompts, drawn.flat_completions)
        table[name] = completion_summary(drawn, gold, tokenizer.eos_token_id)
    return table


def trajectory(run: Path, window: int) -> dict[str, dict[str, float]]:
    """Rollout means (length in tokens, EOS completions per batch, gold) of the first and last
    ``window`` logged batches of ``run/metrics.jsonl``."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, filter(None, lines)) if "objective/length" in r]
    out = {}
    for name, part in (("first", records[:window]), ("last", records[-window:])):
        out[name] = {
            "steps": f"{part[0]['step']}-{part[-1]['step']}",
            "length": sum(r["objective/length"] for r in part) / len(part),
            "eos": sum(r["val/num_eos_tokens"] for r in part) / len(part),
            "gold": sum(r.get("objective/gold", float("nan")) for r in part) / len(part),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prefopt.pipeline.drift")
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--n-prompts", type=int, default=640)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    table = drift_table(args.runs, args.n_prompts, args.samples, args.seed)
    print("| policy | tokens | ends in EOS | gold |\n|---|---|---|---|")
    for name, row in table.items():
        print(f"| {name} | {row['mean_tokens']:.1f} ({row['mean_tokens_se']:.2f}) | "
              f"{row['eos_share']:.3f} ({row['eos_share_se']:.3f}) | "
              f"{row['gold']:.3f} ({row['gold_se']:.3f}) |")  # fmt: skip
    paths = {}
    for run in args.runs:
        if (run / "metrics.jsonl").exists():
            paths[run.name] = trajectory(run, args.window)
            for part, row in paths[run.name].items():
                print(f"{run.name} {part} batches {row['steps']}: length {row['length']:.1f}, "
                      f"EOS {row['eos']:.1f} per batch, gold {row['gold']:.3f}")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps({"table": table, "trajectory": paths}, indent=2) + "\n")


if __name__ == "__main__":
    main()
