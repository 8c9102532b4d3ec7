"""The closing comparison of a pipeline: its policies side by side on the world.

Every policy of ``report.policies`` samples the same held-out prompts with the same seeds
(:func:`prefopt.eval.gold.compare_policies`); the table gives gold reward, KL to the
reference, win rate against it, per-input EAD and out-of-distribution gold, each with its
standard error over prompts, and the paired gold difference against each baseline. Written to
``comparison.md``, ``comparison.json`` and ``comparison.png`` (gold reward against KL, error
bars both ways) in the pipeline's run directory, and printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefopt.config import Recipe
from prefopt.paths import cache_dir


def pipeline_report(pipeline: Any, run_dir: Path) -> dict[str, Any]:
    import torch

    from prefopt.eval.gold import compare_policies
    from prefopt.models.loading import load_pretrained
    from prefopt.pipeline.world_models import world_model
    from prefopt.world import build_world

    report = pipeline.report
    names = list(dict.fromkeys(report.policies))
    reference = report.reference or names[0]
    if reference not in names:
        names.insert(0, reference)
    recipes = {s.name: s.settings for s in pipeline.stages if s.kind == "train"}
    first = recipes[next(n for n in names if n in recipes)]
    paths = {}
    for name in names:
        if name.startswith("world:"):
            paths[name] = str(world_model(first, name))
        else:
            paths[name] = str(pipeline.stage(name).folder / "model")
    world = build_world(first.world, cache_dir=cache_dir())
    cfg = first.eval
    cfg.n_prompts, cfg.samples_per_prompt = report.n_prompts, report.samples_per_prompt
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = {n: load_pretrained(p).to(device).eval() for n, p in paths.items()}
    result = compare_policies(
        models, reference, world.tokenizer(), world, cfg, device,
        baselines=report.baselines, seed=pipeline.seed,
        max_prompt_length=first.data.max_prompt_length,
    )  # fmt: skip
    result["steps"] = {n: _steps(pipeline, n) for n in names}
    table = format_report(result, names, report.baselines)
    (run_dir / "comparison.md").write_text(table + "\n")
    (run_dir / "comparison.json").write_text(json.dumps(result, indent=2))
    plot_report(result, names, run_dir / "comparison.png")
    print(table, flush=True)
    return result


def _steps(pipeline: Any, name: str) -> int | None:
    try:
        stage = pipeline.stage(name)
    except StopIteration:
        return None
    settings = stage.settings
    return settings.trainer.max_steps if isinstance(settings, Recipe) else None


def format_report(result: dict[str, Any], names: list[str], baselines: list[str]) -> str:
    """Markdown table of :func:`prefopt.eval.gold.compare_policies`."""
    test, ood = result["test"], result["ood"]
    ref = result["reference"]
    head = ["policy", "steps", "gold (SE)", f"KL to {ref}", f"win rate vs {ref}", "EAD",
            "OOD gold", *[f"gold - {b} (paired SE)" for b in baselines]]  # fmt: skip
    lines = [
        f"{result['n_prompts']} prompts x {result['samples_per_prompt']} samples per split, "
        "the same prompts and sampling seeds for every policy; standard errors over prompts.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name in names:
        t, o = test[name], ood[name]
        cells = [
            name,
            str(result["steps"].get(name) or ""),
            f"{t['gold_reward']:.3f} ({t['gold_reward_se']:.3f})",
            f"{t['kl']:.2f} ({t['kl_se']:.2f})",
            f"{t['win_rate']:.3f} ({t['win_rate_se']:.3f})",
            f"{t['ead']:.3f} ({t['ead_se']:.3f})",
            f"{o['gold_reward']:.3f} ({o['gold_reward_se']:.3f})",
        ]
        for b in baselines:
            vs = t["vs"].get(b)
            cells.append("" if vs is None else f"{vs['diff']:+.3f} ({vs['se']:.3f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_report(result: dict[str, Any], names: list[str], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name in names:
        t = result["test"][name]
        ax.errorbar(
            t["kl"], t["gold_reward"], xerr=t["kl_se"], yerr=t["gold_reward_se"],
            fmt="o", capsize=3, label=name,
        )  # fmt: skip
    ax.set_xlabel(f"KL to {result['reference']} (nats per completion)")
    ax.set_ylabel("gold reward (test prompts)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
