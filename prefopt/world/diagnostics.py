"""Sanity diagnostics of a world: is it a useful, honest benchmark?

``sanity_report(world)`` returns the numbers quoted in ``docs/world.md``:

* generation time of all datasets;
* Bayes-optimal accuracy of each pair split (not 1.0, not 0.5: labels are informative but noisy);
* mean gold reward of behaviour policies by quality q, of random text, of SFT demonstrations and
  of near-optimal oracle responses (SFT must leave room for improvement);
* a context-dependence check: the best *fixed* linear weighting of the objectives (logistic
  regression on objective differences of the train pairs) versus the true instruction-dependent
  weights (linear alone, and with the informativeness factor, which is the gold reward), all
  measured as agreement with the sign of the gold gap on test pairs;
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


def _credit_weighted(records: list[dict[str, Any]], side: str, weights: np.ndarray) -> np.ndarray:
    """The gold reward rebuilt from a side's stored objectives and informativeness."""
    objectives = np.array([r["metadata"][f"objectives_{side}"] for r in records], dtype=np.float64)
    rho = np.array([r["metadata"][f"informativeness_{side}"] for r in records], dtype=np.float64)
    c = objectives * weights
    return (rho[:, None] * np.clip(c, 0, None) + np.clip(c, None, 0)).sum(axis=1)


def _sign(x: np.ndarray, tol: float = 1e-5) -> np.ndarray:
    """Sign with a tolerance for the 6-decimal rounding of the stored objectives (a tie of two
    degenerate responses, both at gold 0, must not read as a preference)."""
    return np.where(np.abs(x) < tol, 0.0, np.sign(x))


def context_dependence(world: World) -> dict[str, Any]:
    """Accuracy vs the gold sign on test pairs: best fixed weighting vs true gated weights."""
    beta = fit_fixed_weighting(objective_differences(world.preference_records("train")))
    test = world.preference_records("test")
    diffs = objective_differences(test)
    gold_sign = np.sign([r["metadata"]["gold_gap"] for r in test])
    weights = world.objective_weights([r["prompt"] for r in test]).double().numpy()
    linear = _sign((diffs * weights).sum(axis=1))
    gated = _sign(
        _credit_weighted(test, "chosen", weights) - _credit_weighted(test, "rejected", weights)
    )
    return {
        "fixed_weights": [round(float(b), 4) for b in beta],
        "fixed_accuracy_vs_gold": float(np.mean(np.sign(diffs @ beta) == gold_sign)),
        "linear_gated_accuracy_vs_gold": float(np.mean(linear == gold_sign)),
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


#: Generators that give a (too) short answer rather than degenerate text: below behaviour
#: q = 0.5 through the length objective, not through informativeness.
SHORT_ANSWERS = ("single_word",)


def distinct_test_prompts(world: World, n: int = 96) -> list[str]:
    """``n`` distinct in-distribution test prompts (those of the test pairs, in order)."""
    seen: dict[str, None] = {}
    for record in world.preference_records("test"):
        seen.setdefault(record["prompt"], None)
    return list(seen)[:n]


def _mean_se(values: Any) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def adversarial_table(world: World, n_prompts: int = 96, samples: int = 4) -> list[dict[str, Any]]:
    """Mean gold (and its standard error over prompts) of every degenerate-text generator of
    ``prefopt.world.adversarial`` beside the oracle, behaviour q = 1 / 0.75 / 0.5 (0.75 is the
    SFT demonstrations' quality) and random text, on ``n_prompts`` test prompts."""
    from prefopt.world.adversarial import GENERATORS

    prompts = distinct_test_prompts(world, n_prompts)

    def row(name: str, kind: str, completions: list[list[str]]) -> dict[str, Any]:
        flat_prompts = [p for p, cs in zip(prompts, completions, strict=True) for _ in cs]
        flat = [c for cs in completions for c in cs]
        gold = world.gold_reward(flat_prompts, flat).double().numpy().reshape(len(prompts), -1)
        rho = world.informativeness(flat_prompts, flat).double().numpy()
        mean, se = _mean_se(gold.mean(axis=1))
        return {"name": name, "kind": kind, "gold": mean, "se": se, "rho": float(rho.mean())}

    rows = [row("oracle", "reference", [[c] for c in world.oracle_responses(prompts)])]
    for q in (1.0, 0.75, 0.5):
        rows.append(
            row(f"behaviour q={q:g}", "reference", world.sample_responses(prompts, samples, q, 7))
        )
    rows.append(row("random text", "reference", [[c] for c in world.random_responses(prompts)]))
    for name in GENERATORS:
        completions = [world.adversarial_responses(prompts, name, seed=s) for s in range(samples)]
        kind = "short" if name in SHORT_ANSWERS else "degenerate"
        rows.append(row(name, kind, [list(cs) for cs in zip(*completions, strict=True)]))
    return rows


def format_adversarial_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`adversarial_table`."""
    lines = ["| response set | kind | mean gold (SE) | mean rho |", "|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['gold']:.2f} ({r['se']:.2f}) | {r['rho']:.2f} |"
        )
    return "\n".join(lines)


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
    _world = World(WorldConfig())
    print(json.dumps(sanity_report(_world), indent=2))
    print(format_adversarial_table(adversarial_table(_world)))
