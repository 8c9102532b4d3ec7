"""Courses: a held-out metric over training steps, per setting of an ablation, over seeds.

An ablation with ``courses: [eval.loss, eval.ece]`` (and runs that evaluate every
``trainer.eval_every`` steps) gets, after its runs:

* ``courses.csv``: one row per course, setting and step: ``course``, the swept values,
  ``step``, ``n`` (seeds), ``mean``, ``se`` (SE over seeds, :func:`seed_stats`);
* ``course_<key>.png``: each setting's mean against the step, with a band of one SE over seeds;
* a table per course in ``results.md``.

A course's points are each run's periodic evaluations (``eval/<name>`` in its
``metrics.jsonl``) and, at its last step, the final evaluation's ``eval.<name>`` from
``summary.json``: the trainer's final evaluation runs :meth:`Trainer.evaluate` too, on the same
held-out rows, so the last point belongs to the same course. This is what a claim about the
time course of training needs (Zhu et al.'s MLE reward model whose held-out loss rises after
about an epoch while IDS's does not), where ``results.md``'s tables hold end points only.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from prefopt.pipeline.results import _number, _pyplot, seed_stats, setting_label

COURSES_CSV = "courses.csv"
MAX_ROWS = 12


def run_course(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``key`` over a finished run: ``eval.loss`` is the periodic
    ``eval/loss`` of its ``metrics.jsonl``, then the final evaluation's value at the last step;
    ``objective.gold`` the training records' ``objective/gold``. In a pipeline's run,
    ``stages.<stage>.<key>`` reads that stage's files (``stages/<stage>/``)."""
    folder, summary_path = run_dir, run_dir / "summary.json"
    if key.startswith("stages."):
        _, stage, key = key.split(".", 2)
        folder = run_dir / "stages" / stage
        summary_path = folder / "summary.json"
    section, _, name = key.partition(".")
    points: dict[int, float] = {}
    metrics = folder / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            value = _number(record.get(f"{section}/{name}"))
            if value is not None:
                points[int(record["step"])] = value
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    final = _number((summary.get(section) or {}).get(name))
    if final is not None and summary.get("steps") is not None:
        points[int(summary["steps"])] = final
    return sorted(points.items())


def course_table(
    out: Path, description: dict[str, Any], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The rows of ``courses.csv`` from the finished runs (``rows``: ``results.csv``'s)."""
    swept = description["swept"]
    table = []
    for key in description.get("courses") or []:
        values: dict[tuple[Any, ...], dict[int, list[float]]] = {}
        for row in rows:
            if row.get("status") != "done":
                continue
            setting = tuple(row.get(k) for k in swept)
            for step, value in run_course(out / "runs" / str(row["run"]), key):
                values.setdefault(setting, {}).setdefault(step, []).append(value)
        for setting, steps in values.items():
            for step, seeds in sorted(steps.items()):
                stats = seed_stats(seeds)
                table.append({"course": key, **dict(zip(swept, setting, strict=True)),
                              "step": step, "n": stats["n"], "mean": stats["mean"],
                              "se": stats["se"]})  # fmt: skip
    return table


def write_courses(table: list[dict[str, Any]], swept: list[str], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["course", *swept, "step", "n", "mean", "se"])
        writer.writeheader()
        writer.writerows(table)


def read_courses(path: Path) -> list[dict[str, Any]]:
    from prefopt.pipeline.results import read_csv

    return read_csv(path) if path.exists() else []


def courses_markdown(table: list[dict[str, Any]], swept: list[str]) -> list[str]:
    """One table per course: a row per step (at most about ``MAX_ROWS``: every k-th step and
    the last, the rest in ``courses.csv``), a column per setting, ``mean (SE)``."""
    lines: list[str] = []
    for key in dict.fromkeys(r["course"] for r in table):
        mine = [r for r in table if r["course"] == key]
        settings = list(dict.fromkeys(setting_label(r, swept) for r in mine))
        cells = {(setting_label(r, swept), int(r["step"])): r for r in mine}
        steps = sorted({int(r["step"]) for r in mine})
        every = math.ceil(len(steps) / MAX_ROWS)
        shown = [s for i, s in enumerate(steps) if (i + 1) % every == 0 or s == steps[-1]]
        thinned = f"One row in {every} of the {len(steps)} steps recorded; all in `{COURSES_CSV}`."
        lines += [
            "", f"### Course of `{key}` over training (mean over seeds (SE over seeds))", "",
            *([thinned, ""] if every > 1 else []),
            "| step | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings),
        ]  # fmt: skip
        for step in shown:
            row = [str(step)]
            for setting in settings:
                r = cells.get((setting, step))
                se = None if r is None else _number(r["se"])
                row.append(
                    "" if r is None
                    else f"{float(r['mean']):.4f}" + (f" ({se:.4f})" if se is not None else "")
                )  # fmt: skip
            lines.append("| " + " | ".join(row) + " |")
    return lines


def plot_courses(table: list[dict[str, Any]], swept: list[str], out: Path) -> list[Path]:
    """``course_<key>.png`` per course: each setting's mean against the step, SE band."""
    from prefopt.pipeline.results import _file_name

    drawn = []
    for key in dict.fromkeys(r["course"] for r in table):
        mine = [r for r in table if r["course"] == key]
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6.5, 4.3))
        for setting in dict.fromkeys(setting_label(r, swept) for r in mine):
            points = sorted(
                (int(r["step"]), float(r["mean"]), _number(r["se"]) or 0.0)
                for r in mine
                if setting_label(r, swept) == setting
            )
            steps = [p[0] for p in points]
            means = [p[1] for p in points]
            ses = [0.0 if math.isnan(p[2]) else p[2] for p in points]
            (line,) = ax.plot(steps, means, "o-", markersize=3, label=setting)
            ax.fill_between(steps, [m - s for m, s in zip(means, ses, strict=True)],
                            [m + s for m, s in zip(means, ses, strict=True)],
                            color=line.get_color(), alpha=0.2)  # fmt: skip
        seeds = max(int(r["n"]) for r in mine)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(key)
        band = "band: SE over seeds" if seeds > 1 else "one seed, no band"
        ax.set_title(f"{key} over training (mean of {seeds} seeds; {band})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"course_{_file_name(key)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        drawn.append(path)
    return drawn


def aggregate_courses(out: Path) -> list[Path]:
    """After :func:`prefopt.pipeline.results.aggregate`: ``courses.csv``, the course tables
    appended to ``results.md`` and the plots, for an ablation with ``courses``. Returns the
    files written (none without ``courses``)."""
    from prefopt.pipeline.results import read_csv

    description = json.loads((out / "ablation.json").read_text())
    if not description.get("courses"):
        return []
    swept = description["swept"]
    table = course_table(out, description, read_csv(out / "results.csv"))
    write_courses(table, swept, out / COURSES_CSV)
    with (out / "results.md").open("a") as handle:
        handle.write("\n".join(courses_markdown(table, swept)) + "\n")
    return [out / COURSES_CSV, *plot_courses(table, swept, out)]


def redraw_courses(out: Path) -> list[Path]:
    """The course plots again from ``courses.csv`` (``prefopt plot DIR``)."""
    description = json.loads((out / "ablation.json").read_text())
    return plot_courses(read_courses(out / COURSES_CSV), description["swept"], out)
