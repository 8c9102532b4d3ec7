"""`prefopt eval-rm`: the RETA reliability curve of reward models (Chen et al. 2025, arXiv
2504.14838; ALGORITHMS.md section 9).

For Q prompts, N responses each from a reference policy with oracle qualities J > 0: on the
synthetic world, behaviour-policy responses scored by the world's oracle; otherwise a JSON-lines
file of cached oracle scores, one row per response ``{"prompt", "response", "oracle"}`` with the
same number of responses for every prompt. Each reward model ranks the responses; the curve and
its error bars (over random response subsets) go to ``reta.csv`` / ``reta.png`` and
``reta.json`` in the output folder, with the best eta of each model.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prefopt.eval.reta import RetaCurve, reta_curve


def world_oracle(
    world: Any, n_prompts: int, n_responses: int, seed: int = 0
) -> tuple[list[str], list[list[str]], Tensor]:
    prompts = world.eval_prompts("test")[:n_prompts]
    responses = world.sample_responses(prompts, n_responses, seed=seed)
    flat_p = [p for p, group in zip(prompts, responses, strict=True) for _ in group]
    flat_r = [r for group in responses for r in group]
    oracle = world.oracle_quality(flat_p, flat_r).view(len(prompts), n_responses)
    return prompts, responses, oracle


def file_oracle(path: Path) -> tuple[list[str], list[list[str]], Tensor]:
    groups: OrderedDict[str, list[tuple[str, float]]] = OrderedDict()
    with Path(path).open() as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt, response, oracle = row["prompt"], row["response"], float(row["oracle"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(
                    f"{path}:{line_no}: need prompt, response, oracle ({exc})"
                ) from None
            if oracle <= 0:
                raise ValueError(f"{path}:{line_no}: oracle scores must be > 0, got {oracle}")
            groups.setdefault(prompt, []).append((response, oracle))
    sizes = {len(g) for g in groups.values()}
    if len(sizes) != 1:
        counts = {p[:40]: len(g) for p, g in groups.items()}
        raise ValueError(f"{path}: every prompt needs the same number of responses, got {counts}")
    prompts = list(groups)
    responses = [[r for r, _ in groups[p]] for p in prompts]
    oracle_grid = torch.tensor([[j for _, j in groups[p]] for p in prompts])
    return prompts, responses, oracle_grid


def score_grid(scorer: Any, prompts: list[str], responses: list[list[str]]) -> Tensor:
    flat_p = [p for p, group in zip(prompts, responses, strict=True) for _ in group]
    flat_r = [r for group in responses for r in group]
    return scorer.score(flat_p, flat_r).float().view(len(prompts), -1)


def evaluate_reward_models(
    scorers: dict[str, Any],
    prompts: list[str],
    responses: list[list[str]],
    oracle: Tensor,
    out_dir: Path,
    subset_size: int | None = None,
    n_resamples: int = 100,
    seed: int = 0,
) -> dict[str, RetaCurve]:
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = {
        name: reta_curve(
            score_grid(s, prompts, responses),
            oracle,
            subset_size=subset_size,
            n_resamples=n_resamples,
            seed=seed,
        )
        for name, s in scorers.items()
    }
    write_outputs(curves, out_dir, len(prompts), oracle.shape[1])
    return curves


def write_outputs(
    curves: dict[str, RetaCurve], out_dir: Path, n_prompts: int, n_total: int
) -> None:
    with (out_dir / "reta.csv").open("w") as f:
        f.write("model,eta,mean,std\n")
        for name, c in curves.items():
            for eta, mean, std in zip(c.etas, c.mean, c.std, strict=True):
                f.write(f"{name},{eta!r},{mean!r},{std!r}\n")
    summary = {
        name: {
            "best_eta": c.best_eta,
            "best_reta": c.best_value,
            "subset_size": c.subset_size,
            "n_resamples": c.n_resamples,
            "etas": c.etas,
            "mean": c.mean,
            "std": c.std,
        }
        for name, c in curves.items()
    }
    (out_dir / "reta.json").write_text(
        json.dumps(
            {"n_prompts": n_prompts, "responses_per_prompt": n_total, "models": summary}, indent=2
        )
    )
    plot(curves, out_dir / "reta.png")


def plot(curves: dict[str, RetaCurve], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=120)
    ax = fig.add_subplot()
    for name, c in curves.items():
        ax.errorbar(
            c.etas,
            c.mean,
            yerr=c.std,
            marker="o",
            ms=3,
            capsize=2,
            label=f"{name} (best eta {c.best_eta:.2g})",
        )
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("eta (fraction of responses the reward model keeps)")
    ax.set_ylabel("RETA(eta)")
    ax.set_title("RETA: oracle quality of the RM's top eta, relative to the mean")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), format="png")


def format_table(
    curves: dict[str, RetaCurve], etas: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
) -> str:
    """One row per model: RETA at the grid points nearest to `etas` (the columns are labelled
    with the grid's own eta, e.g. 0.125 for 0.1 on a grid of eighths), then the best eta."""
    grid = next(iter(curves.values())).etas if curves else list(etas)
    columns = sorted({min(grid, key=lambda g: abs(g - e)) for e in etas})
    width = max([len("model"), *(len(name) for name in curves)]) + 2
    lines = ["model".ljust(width) + "".join(f"{f'eta={e:.3g}':<10}" for e in columns) + "best eta"]
    for name, c in curves.items():
        row = name.ljust(width)
        for e in columns:
            i = min(range(len(c.etas)), key=lambda j: abs(c.etas[j] - e))
            row += f"{c.mean[i]:<10.3f}"
        lines.append(row + f"{c.best_eta:.3g}")
    return "\n".join(lines)
