"""Gao et al.'s over-optimisation fits on an ablation's results:
``python -m prefopt.pipeline.gao DIR``.

``DIR`` is an ablation's output folder (``runs/ablations/<name>-<size>``). Two kinds of curve,
chosen by what the runs hold (Gao, Schulman & Hilton 2022, arXiv 2210.10760; the fits are
:func:`prefopt.eval.overoptimisation.fit_gao`):

* **best-of-n** (``overoptimisation_bon``): one point per run, ``x = <stage>.eval.kl`` (the
  analytic ``log n - (n-1)/n``) and ``y = <stage>.eval.gold_gain`` (the paired gold gain over
  the SFT policy), grouped by the other swept keys and the seed; the form ``d (alpha - beta d)``;
* **RL** (``overoptimisation_rl``): one curve per run, from its PPO stage's ``metrics.jsonl``:
  ``x = objective/kl`` of each rollout batch (negative estimates read as 0) and ``y`` the
  batch's gold reward minus the first batch's; the form ``d (alpha - beta log d)``.

Writes ``gao.json`` (every fit and its points), ``gao.md`` (a table: coefficients, R^2, RMSE,
the fitted peak) and ``gao_<form>.png`` (gold gain and proxy reward against ``d = sqrt(KL)``
with the fitted curves) into ``DIR``, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from prefopt.eval.overoptimisation import fit_gao, gao_curve
from prefopt.pipeline.results import read_csv


def bon_curves(rows: list[dict[str, Any]], swept: list[str]) -> dict[str, dict[str, list]]:
    """``{group: {kl, gain, proxy}}`` from results.csv rows that have ``*eval.best_of_n``."""
    n_key = next(k for k in swept if k.endswith("eval.best_of_n"))
    prefix = n_key.removesuffix("best_of_n")
    others = [k for k in swept if k != n_key]
    curves: dict[str, dict[str, list]] = {}
    for row in rows:
        if row.get("status") != "done":
            continue
        group = ", ".join([f"{k}={row[k]}" for k in others] + [f"seed={row['seed']}"])
        curve = curves.setdefault(group, {"kl": [], "gain": [], "proxy": [], "n": []})
        curve["n"].append(row[n_key])
        curve["kl"].append(max(0.0, float(row[f"{prefix}kl"])))
        curve["gain"].append(float(row[f"{prefix}gold_gain"]))
        curve["proxy"].append(row.get(f"{prefix}proxy_reward"))
    return curves


def rl_curves(out_dir: Path, rows: list[dict[str, Any]]) -> dict[str, dict[str, list]]:
    """``{run: {kl, gain, proxy}}`` from each finished run's training log with gold."""
    curves = {}
    for row in rows:
        run_dir = out_dir / "runs" / str(row["run"])
        # a single recipe's run folder, or a pipeline's stage folders (runs/<id>/stages/<stage>)
        found = [
            *sorted(run_dir.glob("*/metrics.jsonl")),
            *sorted(run_dir.glob("stages/*/metrics.jsonl")),
        ]
        for path in [run_dir / "metrics.jsonl", *found]:
            if not path.exists():
                continue
            lines = filter(None, path.read_text().splitlines())
            records = [r for r in map(json.loads, lines) if "objective/gold" in r]
            if not records:
                continue
            gold0 = records[0]["objective/gold"]
            curves[str(row["run"])] = {
                "kl": [max(0.0, r["objective/kl"]) for r in records],
                "gain": [r["objective/gold"] - gold0 for r in records],
                "proxy": [r["objective/scores"] for r in records],
            }
            break
    return curves


def fit_curves(curves: dict[str, dict[str, list]], form: str) -> dict[str, Any]:
    out = {}
    for name, curve in curves.items():
        try:
            fit = fit_gao(curve["kl"], curve["gain"], form)
        except ValueError as exc:
            fit = {"error": str(exc)}
        out[name] = {"fit": fit, "points": curve}
    return out


def render(fits: dict[str, Any], form: str) -> str:
    shape = "d (alpha - beta d)" if form == "bon" else "d (alpha - beta log d)"
    lines = [f"Gao et al. 2022, {form}: gold gain = {shape}, d = sqrt(KL)", "",
             "| curve | points | alpha | beta | R^2 | RMSE | peak d (KL) | gain at peak |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, item in fits.items():
        fit = item["fit"]
        if "error" in fit:
            lines.append(f"| {name} | {len(item['points']['kl'])} | {fit['error']} |||||| ")
            continue
        peak = "none" if fit["d_peak"] is None else f"{fit['d_peak']:.3g} ({fit['kl_peak']:.3g})"
        at = "" if fit["gain_at_peak"] is None else f"{fit['gain_at_peak']:.3f}"
        lines.append(f"| {name} | {fit['n']} | {fit['alpha']:.4f} | {fit['beta']:.4f} | "
                     f"{fit['r2']:.3f} | {fit['rmse']:.4f} | {peak} | {at} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(fits: dict[str, Any], form: str, path: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gold_ax, proxy_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, item in fits.items():
        points, fit = item["points"], item["fit"]
        d = np.sqrt(np.asarray(points["kl"], dtype=float))
        line = gold_ax.plot(d, points["gain"], "o", ms=3, alpha=0.6, label=name)[0]
        if "error" not in fit:
            grid = np.linspace(0.0, float(d.max()) if d.size else 1.0, 100)
            gold_ax.plot(grid, gao_curve(grid, fit["alpha"], fit["beta"], form), "-",
                         color=line.get_color())  # fmt: skip
        proxy = [(x, p) for x, p in zip(d, points["proxy"], strict=True) if p is not None]
        if proxy:
            proxy_ax.plot(*zip(*proxy, strict=True), "o-", ms=3, color=line.get_color())
    gold_ax.set_title("gold gain over the initial policy, and the fit")
    proxy_ax.set_title("proxy reward (the optimised reward model)")
    for ax in (gold_ax, proxy_ax):
        ax.set_xlabel("d = sqrt(KL)")
        ax.grid(alpha=0.3)
    gold_ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def gao_report(out_dir: Path) -> dict[str, Any]:
    """Fit, write ``gao.json``, ``gao.md``, ``gao_<form>.png`` into ``out_dir``; return fits."""
    out_dir = Path(out_dir)
    description = json.loads((out_dir / "ablation.json").read_text())
    rows = read_csv(out_dir / "results.csv")
    swept = list(description.get("swept", []))
    if any(k.endswith("eval.best_of_n") for k in swept):
        form, curves = "bon", bon_curves(rows, swept)
    else:
        form, curves = "rl", rl_curves(out_dir, rows)
    if not curves:
        raise ValueError(f"{out_dir}: no finished run with a best-of-n sweep or a gold log")
    fits = fit_curves(curves, form)
    (out_dir / "gao.json").write_text(json.dumps({"form": form, "fits": fits}, indent=2,
                                                 default=_json_number) + "\n")  # fmt: skip
    (out_dir / "gao.md").write_text(render(fits, form))
    plot(fits, form, out_dir / f"gao_{form}.png")
    return {"form": form, "fits": fits}


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prefopt.pipeline.gao")
    parser.add_argument("out_dir", type=Path, help="an ablation's output folder")
    args = parser.parse_args(argv)
    report = gao_report(args.out_dir)
    print(render(report["fits"], report["form"]), end="")


if __name__ == "__main__":
    main()
