"""Sanity diagnostics of a world: is it a useful, honest benchmark?

``sanity_report(world)`` returns the numbers quoted in ``docs/world.md``:

* generation time of all datasets;
* Bayes-optimal accuracy of each pair split (not 1.0, not 0.5: labels are informative but noisy);
* mean gold reward of behaviour policies by quality q, of random text, of SFT demonstrations and
  of near-optimal oracle responses (SFT must leave room for improvement);
* a context-dependence check: the best *fixed* linear weighting of the objectives (logistic
  regression on objective differences of the train pairs) versus the true instruction-dependent
  weights, both measured as agreement with the sign of the gold gap on test pairs;
* gold reward of junk strings (what an untrained model may emit).

Run ``python -m prefopt.world.diagnostics`` to print the report for the default world.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from prefopt.world.config import WorldConfig
from prefopt.world.world import World

JUNK = ["", "<unk>", "<unk> <unk> <unk>", "<eos>", "<pad> <bos>", ":", "hello world !", "  "]


def objective_differences(records: list[dict[str, Any]]) -> np.ndarray:
    """``[N, K]`` objective vector of chosen minus rejected."""
    chosen = np.array([r["metadata"]["objectives_chosen"] for r in records], dtype=np.float64)
    rejected = np.array([r["metadata"]["objectives_rejected"] for r in records], dtype=np.float64)
    return chosen - rejected


def fit_fixed_weighting(diffs: np.ndarray, iters: int = 50, l2: float = 1e-4) -> np.ndarray:
    """Logistic regression (no intercept) of 'chosen beats rejected' on objective differences,
    by Newton's method; the pairs are symmetrised so the problem is balanced."""
    x = np.concatenate([diffs, -diffs])
    y = np.concatenate([np.ones(len(diffs)), np.zeros(len(diffs))])
    beta = np.zeros(x.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        grad = x.T @ (y - p) - l2 * beta
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(beta))
        beta = beta + np.linalg.solve(hess, grad)
    return beta


def context_dependence(world: World) -> dict[str, Any]:
    """Accuracy vs the gold sign on test pairs: best fixed weighting vs true gated weights."""
    beta = fit_fixed_weighting(objective_differences(world.preference_records("train")))
    test = world.preference_records("test")
    diffs = objective_differences(test)
    gold_sign = np.sign([r["metadata"]["gold_gap"] for r in test])
    weights = world.objective_weights([r["prompt"] for r in test]).double().numpy()
    gated = np.sign((diffs * weights).sum(axis=1))
    return {
        "fixed_weights": [round(float(b), 4) for b in beta],
        "fixed_accuracy_vs_gold": float(np.mean(np.sign(diffs @ beta) == gold_sign)),
        "gated_accuracy_vs_gold": float(np.mean(gated == gold_sign)),
        "fixed_accuracy_vs_labels": float(np.mean(diffs @ beta > 0)),
        "gold_accuracy_vs_labels": float(np.mean(gold_sign > 0)),
    }


def quality_curve(
    world: World, qualities: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
) -> dict[str, float]:
    """Mean gold reward on test eval prompts of behaviour policies, random text, SFT, oracle."""
    prompts = world.eval_prompts("test") * 4
    out = {
        f"q={q:g}": float(
            world.gold_reward(
                prompts, [r[0] for r in world.sample_responses(prompts, 1, quality=q, seed=1)]
            ).mean()
        )
        for q in qualities
    }
    out["random_text"] = float(world.gold_reward(prompts, world.random_responses(prompts)).mean())
    out["oracle"] = float(world.gold_reward(prompts, world.oracle_responses(prompts)).mean())
    sft = world.sft_records("test")
    out["sft_test"] = float(np.mean([r["metadata"]["gold"] for r in sft]))
    return out


def sanity_report(world: World | None = None) -> dict[str, Any]:
    """All sanity numbers of a world (built from the default config if none is given)."""
    start = time.perf_counter()
    world = world if world is not None else World(WorldConfig())
    for split in ("train", "test", "ood"):
        world.preference_records(split)
    for split in ("train", "test"):
        world.sft_records(split)
    world.tokenizer()
    seconds = time.perf_counter() - start
    prompts = world.eval_prompts("test")
    junk = world.gold_reward([prompts[i % len(prompts)] for i in range(len(JUNK))], JUNK)
    return {
        "generation_seconds": seconds,
        "bayes_accuracy": {
            s: world.bayes_accuracy(world.preference_records(s)) for s in ("train", "test", "ood")
        },
        "gold_by_policy": quality_curve(world),
        "context_dependence": context_dependence(world),
        "junk_gold": {s: float(v) for s, v in zip(JUNK, junk, strict=True)},
    }


if __name__ == "__main__":
    print(json.dumps(sanity_report(), indent=2))
