"""Two PPO stages of every run compared at the same KL: ``python -m prefopt.pipeline.matched_kl
DIR [--stages ppo_single,ppo_ensemble] [--bins 0,2,5,10,15,20,30]``.

A policy that drifts less ends with a higher gold reward under over-optimisation whether or not
its reward is better, so Coste et al.'s question (do reward-model ensembles reduce
over-optimisation? Coste, Anwar, Kirk & Krueger 2024, arXiv 2310.02743) is also asked at equal
KL to the reference: per run, each stage's rollout batches (``objective/gold``,
``objective/kl`` in ``stages/<stage>/metrics.jsonl``) are binned by their KL, the gold of a
bin is its batches' mean (bins with fewer than ``MIN_BATCHES`` batches are left out), and
per setting the second stage minus the first is averaged over the seeds that have both bins,
with its SE over seeds. Writes ``matched_kl.md`` into ``DIR`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from prefopt.eval.plots import read_records
from prefopt.pipeline.results import read_csv, seed_stats, setting_label

MIN_BATCHES = 3


def gold_by_kl(metrics: Path, bins: list[float]) -> dict[tuple[float, float], float]:
    """``{(lo, hi): mean gold of the batches with lo <= KL < hi}`` of one stage's records."""
    batches = [(r["objective/kl"], r["objective/gold"]) for r in read_records(metrics)
               if "objective/gold" in r and "objective/kl" in r]  # fmt: skip
    means = {}
    for lo, hi in zip(bins, bins[1:], strict=False):
        gold = [g for kl, g in batches if lo <= kl < hi]
        if len(gold) >= MIN_BATCHES:
            means[(lo, hi)] = sum(gold) / len(gold)
    return means


def matched_kl(out: Path, stages: tuple[str, str], bins: list[float]) -> list[dict[str, Any]]:
    """Per setting and KL bin: ``n`` seeds, ``mean`` and ``se`` of stage 2 minus stage 1."""
    description = json.loads((out / "ablation.json").read_text())
    swept = description["swept"]
    diffs: dict[tuple[str, tuple[float, float]], list[float]] = {}
    for row in read_csv(out / "results.csv"):
        if row.get("status") != "done":
            continue
        run = out / "runs" / str(row["run"]) / "stages"
        first, second = (gold_by_kl(run / s / "metrics.jsonl", bins) for s in stages)
        for b in first.keys() & second.keys():
            diffs.setdefault((setting_label(row, swept), b), []).append(second[b] - first[b])
    table = []
    for (setting, (lo, hi)), values in diffs.items():
        stats = seed_stats(values)
        table.append({"setting": setting, "kl": f"{lo:g}-{hi:g}", "lo": lo, "n": stats["n"],
                      "mean": stats["mean"], "se": stats["se"]})  # fmt: skip
    return sorted(table, key=lambda r: (r["setting"], r["lo"]))


def render(table: list[dict[str, Any]], stages: tuple[str, str]) -> str:
    kls = sorted({(r["lo"], r["kl"]) for r in table})
    settings = list(dict.fromkeys(r["setting"] for r in table))
    cells = {(r["setting"], r["kl"]): r for r in table}
    lines = [
        f"Rollout gold of `{stages[1]}` minus `{stages[0]}` at the same KL to the reference: "
        f"per run, each stage's batches binned by KL, a bin's gold the mean of its batches "
        f"(at least {MIN_BATCHES}); mean over seeds (SE over seeds, n seeds).",
        "",
        "| setting | " + " | ".join(f"KL {k}" for _, k in kls) + " |",
        "|---|" + "---|" * len(kls),
    ]
    for setting in settings:
        row = []
        for _, k in kls:
            r = cells.get((setting, k))
            if r is None:
                row.append("")
            else:
                se = "n/a" if math.isnan(r["se"]) else f"{r['se']:.3f}"
                row.append(f"{r['mean']:+.3f} ({se}, {r['n']})")
        lines.append(f"| {setting} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="an ablation's output folder")
    parser.add_argument("--stages", default="ppo_single,ppo_ensemble",
                        help="the two PPO stages: baseline,compared")  # fmt: skip
    parser.add_argument("--bins", default="0,2,5,10,15,20,30", help="KL bin edges")
    args = parser.parse_args(argv)
    first, second = args.stages.split(",")
    bins = [float(b) for b in args.bins.split(",")]
    text = render(matched_kl(args.folder, (first, second), bins), (first, second))
    (args.folder / "matched_kl.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
