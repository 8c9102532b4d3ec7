"""An ablation's results: ``results.csv``, ``results.md`` and plots, from the files alone.

Written into the ablation's folder by :func:`aggregate` after the last run, and redrawn by
:func:`redraw` (``prefopt plot DIR``) from ``results.csv`` and ``ablation.json`` only:

* ``results.csv``: one row per run: ``run``, the swept values, ``seed``, ``status`` (done,
  failed, missing), then every scalar of the run's ``summary.json`` flattened to dotted keys
  (``eval.gold_reward``, ``stages.rm.eval.accuracy``, ``comparison.test.dpo.kl``...), and for
  an ablation with ``against``, the head-to-head columns ``h2h.<split>.win_rate``,
  ``h2h.<split>.gold_diff``, ``h2h.<split>.kl`` (:mod:`prefopt.pipeline.head_to_head`).
* ``results.md``: per setting (the swept values), for each chosen metric the mean over seeds,
  the standard deviation over seeds (``sd``), the standard error of the mean over seeds
  (``SE = sd / sqrt(n)``), and the standard error over evaluation prompts of that mean
  (``SE prompts = sqrt(sum_i se_i^2) / n`` from the runs' own ``<metric>_se``, the only one
  left with a single seed).
* ``gold_vs_kl.png``: the gold reward against KL of every policy of every run, error bars both
  ways (the runs' standard errors over prompts); with several seeds also
  ``gold_vs_kl_mean.png``: one labelled point per setting, the mean over seeds, error bars the
  SE over seeds (the frontier of the methods compared).
* ``<metric>.png`` for each chosen metric: the mean against the ablation's ``x`` (a swept key:
  one line per setting of the other swept keys; or a summary key such as a reward model's
  measured accuracy: one point per run), with error bars: the SE over seeds where there are
  two or more, else the SE over prompts (the title says which).
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

FIXED_COLUMNS = ("run", "seed", "status")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every scalar (number, string, bool, None) of nested dicts, under dotted keys; lists
    (per-prompt arrays, curves) are left out."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
    elif isinstance(value, bool | int | float | str) or value is None:
        out[prefix[:-1]] = value
    return out


def collect_rows(out_dir: Path, description: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per run of ``description`` (``ablation.json``), its summary flattened in."""
    from prefopt.pipeline.head_to_head import head_to_head_columns

    rows = []
    for run in description["runs"]:
        row: dict[str, Any] = {"run": run["id"], **run["params"], "seed": run["seed"]}
        run_dir = out_dir / "runs" / run["id"]
        if (run_dir / "summary.json").exists():
            row["status"] = "done"
            summary = json.loads((run_dir / "summary.json").read_text())
            row.update({k: v for k, v in flatten(summary).items() if k not in row})
            row.update(head_to_head_columns(out_dir, run["id"], run["seed"]))
        elif (out_dir / "runs" / f"{run['id']}.failed").exists():
            row["status"] = "failed"
        else:
            row["status"] = "missing"
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], swept: list[str], path: Path) -> None:
    first = ["run", *swept, "seed", "status"]
    rest = sorted({k for row in rows for k in row} - set(first))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([*first, *rest])
        for row in rows:
            writer.writerow(["" if row.get(k) is None else row[k] for k in (*first, *rest)])


def read_csv(path: Path) -> list[dict[str, Any]]:
    """``results.csv`` back: numbers as floats (integers as ints), empty cells as None."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def seed_stats(values: list[float]) -> dict[str, float]:
    """``n``, ``mean``, ``sd`` (sample standard deviation, NaN for one value) and ``se``
    (``sd / sqrt(n)``) of per-seed values (:func:`prefopt.eval.compare.standard_error`)."""
    import torch

    from prefopt.eval.compare import standard_error

    tensor = torch.tensor(values, dtype=torch.float64)
    n = len(values)
    sd = float(tensor.std(unbiased=True)) if n > 1 else float("nan")
    return {"n": n, "mean": float(tensor.mean()), "sd": sd, "se": standard_error(tensor)}


def se_key(metric: str) -> str:
    """The key of a metric's standard error over prompts: ``<metric>_se``, or for a paired
    difference of the report (``...vs.<b>.diff``) its sibling ``...vs.<b>.se``."""
    return metric[: -len("diff")] + "se" if metric.endswith(".diff") else f"{metric}_se"


def group_stats(
    rows: list[dict[str, Any]], swept: list[str], metrics: list[str]
) -> list[dict[str, Any]]:
    """Per setting of the swept keys (in the rows' order), over its finished runs: for each
    metric ``{n, mean, sd, se, se_prompts}``; ``se_prompts`` is ``sqrt(sum se_i^2) / n`` of
    the runs' ``<metric>_se`` (NaN when a run has none)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(row.get(k) for k in swept)
        groups.setdefault(key, [])
        if row.get("status") == "done":
            groups[key].append(row)
    out = []
    for key, members in groups.items():
        entry: dict[str, Any] = {"params": dict(zip(swept, key, strict=True)),
                                 "runs": len(members)}  # fmt: skip
        for metric in metrics:
            values = [v for r in members if (v := _number(r.get(metric))) is not None]
            if not values:
                entry[metric] = None
                continue
            stats = seed_stats(values)
            ses = [_number(r.get(se_key(metric))) for r in members]
            known = [s for s in ses if s is not None]
            stats["se_prompts"] = (
                math.sqrt(sum(s * s for s in known)) / len(ses)
                if ses and len(known) == len(ses)
                else float("nan")
            )
            entry[metric] = stats
        out.append(entry)
    return out


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _settings_lines(description: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """What the runs really were: the command-line overrides and, from the runs' summaries,
    their training steps and runtimes. The size's note (written for the file's settings) is
    shown only when no command-line override changed them."""
    lines: list[str] = []
    cli = description.get("cli_overrides") or []
    if cli:
        shown = ", ".join(f"`{o}`" for o in cli)
        lines += ["", f"Command-line overrides for every run: {shown} (the size's note is left "
                  "out: it describes the runs without them)."]  # fmt: skip
    elif description.get("note"):
        lines += ["", f"Size {description['size']}: {description['note']}"]
    done = [r for r in rows if r.get("status") == "done"]
    steps = sorted(
        {int(v) for r in done for k, v in r.items()
         if (k == "steps" or k.endswith(".steps")) and _number(v) is not None}
    )  # fmt: skip
    runtimes = [v for r in done if (v := _number(r.get("runtime_s"))) is not None]
    measured = []
    if steps:
        measured.append("training steps per run: " + ", ".join(map(str, steps)))
    if runtimes:
        measured.append(f"the {len(runtimes)} runs' own runtimes add up to {sum(runtimes):.0f} s")
    if measured:
        lines += ["", "From the runs' summaries: " + "; ".join(measured) + "."]
    return lines


def render_markdown(description: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    swept, metrics = description["swept"], description["metrics"]
    groups = group_stats(rows, swept, metrics)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "missing")}
    lines = [
        f"# Ablation `{description['name']}` (size {description['size']})",
        "",
        description.get("description") or "",
        "",
        f"Base: `{description['base']}`; seeds {description['seeds']}; {len(rows)} runs: "
        f"{counts['done']} done, {counts['failed']} failed, {counts['missing']} not run.",
    ]
    lines += _settings_lines(description, rows)
    lines += [
        "",
        "Each cell: the mean over seeds; sd: standard deviation over seeds; SE: sd / sqrt(n); "
        "SE prompts: the standard error over evaluation prompts of that mean (from the runs' "
        "own `_se`; the only one with a single seed). n/a: undefined (no such key, or a "
        "run without a standard error).",
        "",
    ]
    head = [*swept, "n", *metrics]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group in groups:
        cells = [str(group["params"][k]) for k in swept] + [str(group["runs"])]
        for metric in metrics:
            s = group[metric]
            if s is None:
                cells.append("n/a")
            elif s["n"] == 1:  # no spread over seeds to show
                cells.append(f"{_fmt(s['mean'])} (SE prompts {_fmt(s['se_prompts'])})")
            else:
                cells.append(
                    f"{_fmt(s['mean'])} (sd {_fmt(s['sd'])}, SE {_fmt(s['se'])}; "
                    f"SE prompts {_fmt(s['se_prompts'])})"
                )
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r["run"] for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "Failed runs (see `runs/<run>.failed`): " + ", ".join(failed)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ plots


def policy_points(row: dict[str, Any]) -> list[tuple[str, float, float, float, float]]:
    """``(policy, kl, kl_se, gold, gold_se)`` of every policy a run evaluated: a pipeline's
    closing comparison (``comparison.test.<policy>.``) where there is one, else every
    ``eval.`` and ``stages.<stage>.eval.`` evaluation, in distribution, and on each shifted
    split it has a KL for (``eval.shift.ood.``: named ``policy (ood prompts)``)."""
    prefixes = sorted(
        k[: -len("gold_reward")]
        for k in row
        if k.endswith("gold_reward")
        and not k[: -len("gold_reward")].endswith(("ood_", "reference_"))
        and _number(row.get(k)) is not None
        and _number(row.get(k[: -len("gold_reward")] + "kl")) is not None
    )
    comparison = [p for p in prefixes if p.startswith("comparison.test.")]
    points = []
    for prefix in comparison or prefixes:
        name = prefix.removeprefix("comparison.test.").removeprefix("stages.")
        shift = re.search(r"\.shift\.([^.]+)\.$", name)  # a shifted split: labelled as such
        if shift:
            name = name[: shift.start()]
        name = name.removesuffix(".").removesuffix(".eval") or "policy"
        name = name if name != "eval" else "policy"
        points.append(
            (
                f"{name} ({shift.group(1)} prompts)" if shift else name,
                float(row[prefix + "kl"]),
                _number(row.get(prefix + "kl_se")) or 0.0,
                float(row[prefix + "gold_reward"]),
                _number(row.get(prefix + "gold_reward_se")) or 0.0,
            )
        )
    return points


def setting_label(row: dict[str, Any], swept: list[str]) -> str:
    return ", ".join(f"{k}={row.get(k)}" for k in swept) or "base"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_gold_vs_kl(rows: list[dict[str, Any]], swept: list[str], path: Path) -> Path | None:
    """Gold reward against KL of every policy of every finished run; None when no run has
    both."""
    done = [r for r in rows if r.get("status") == "done" and policy_points(r)]
    if not done:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    settings = list(dict.fromkeys(setting_label(r, swept) for r in done))
    colours = plt.get_cmap("viridis" if len(settings) > 10 else "tab10")
    markers = "osD^v<>pP*X"
    policies = list(dict.fromkeys(p[0] for r in done for p in policy_points(r)))
    labelled: set[str] = set()
    for row in done:
        setting = setting_label(row, swept)
        i = settings.index(setting)
        colour = colours(i / max(1, len(settings) - 1) if len(settings) > 10 else i)
        for policy, kl, kl_se, gold, gold_se in policy_points(row):
            label = setting if len(policies) == 1 else f"{setting}: {policy}"
            ax.errorbar(
                kl, gold, xerr=kl_se, yerr=gold_se, fmt=markers[policies.index(policy) % 11],
                color=colour, capsize=2, alpha=0.85,
                label=None if label in labelled else label,
            )  # fmt: skip
            labelled.add(label)
    ax.set_xlabel("KL(policy || reference), nats per completion")
    shifted = any("prompts)" in p for p in policies)
    ax.set_ylabel("gold reward" + ("" if shifted else " (in-distribution prompts)"))
    ax.set_title(
        "every run: gold reward against KL (SE over prompts)"
        + ("; in distribution, and on the shifted prompts named in the legend" if shifted else ""),
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    if len(labelled) <= 24:
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frontier_points(
    rows: list[dict[str, Any]], swept: list[str]
) -> list[tuple[str, dict[str, float], dict[str, float]]]:
    """``(label, kl, gold)`` per setting and in-distribution policy, ``kl`` and ``gold`` the
    :func:`seed_stats` of its per-seed values (mean over seeds, SE over seeds): the frontier
    of an ablation, one point per method rather than per run."""
    per: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        if row.get("status") != "done":
            continue
        policies = [p for p in policy_points(row) if not p[0].endswith("prompts)")]
        for policy, kl, _, gold, _ in policies:
            setting = setting_label(row, swept)
            label = setting if len(policies) == 1 else f"{setting}: {policy}"
            values = per.setdefault(label, {"kl": [], "gold": []})
            values["kl"].append(kl)
            values["gold"].append(gold)
    return [(label, seed_stats(v["kl"]), seed_stats(v["gold"])) for label, v in per.items()]


def plot_frontier(rows: list[dict[str, Any]], swept: list[str], path: Path) -> Path | None:
    """``gold_vs_kl_mean.png``: each setting's mean gold against its mean KL over seeds, error
    bars the SE over seeds both ways, each point labelled; KL on a log axis when it spans more
    than 30x. None unless some setting has two or more seeds."""
    points = frontier_points(rows, swept)
    if not any(kl["n"] > 1 for _, kl, _ in points):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for label, kl, gold in points:
        ax.errorbar(kl["mean"], gold["mean"], xerr=kl["se"], yerr=gold["se"], fmt="o",
                    capsize=2, markersize=4)  # fmt: skip
        ax.annotate(label.removeprefix("variant="), (kl["mean"], gold["mean"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")  # fmt: skip
    kls = [kl["mean"] for _, kl, _ in points if kl["mean"] > 0]
    if kls and max(kls) / min(kls) > 30:
        ax.set_xscale("log")
    ax.set_xlabel("KL(policy || reference), nats per completion (mean over seeds)")
    ax.set_ylabel("gold reward, in-distribution prompts (mean over seeds)")
    n = max(kl["n"] for _, kl, _ in points)
    ax.set_title(f"each setting: gold against KL, mean of {n} seeds (SE over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_metric(
    rows: list[dict[str, Any]], description: dict[str, Any], metric: str, path: Path
) -> Path | None:
    """``metric`` against the ablation's ``x`` (see the module docstring); None when no
    finished run has the metric."""
    swept, x = description["swept"], description["x"]
    if x is None:
        return None
    done = [r for r in rows if r.get("status") == "done" and _number(r.get(metric)) is not None]
    if not done:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.3))
    if x in swept:
        others = [k for k in swept if k != x]
        groups = group_stats(done, swept, [metric])
        xs = list(dict.fromkeys(g["params"][x] for g in groups))
        numeric = all(_number(v) is not None for v in xs)
        positions = {v: (float(v) if numeric else i) for i, v in enumerate(xs)}
        lines: dict[str, list[dict[str, Any]]] = {}
        for g in groups:
            lines.setdefault(", ".join(f"{k}={g['params'][k]}" for k in others), []).append(g)
        seeds = max(g[metric]["n"] for g in groups if g[metric])
        for label, members in lines.items():
            members = [m for m in members if m[metric] is not None]
            members.sort(key=lambda m: positions[m["params"][x]])
            err = [
                m[metric]["se"] if m[metric]["n"] > 1 else m[metric]["se_prompts"] for m in members
            ]
            ax.errorbar(
                [positions[m["params"][x]] for m in members],
                [m[metric]["mean"] for m in members],
                yerr=[0.0 if math.isnan(e) else e for e in err],
                fmt="o-" if numeric else "o", capsize=3, label=label or None,
            )  # fmt: skip
        if numeric:
            values = [float(v) for v in xs]
            if min(values) > 0 and max(values) / min(values) >= 10:
                ax.set_xscale("log")
        else:
            ax.set_xticks(range(len(xs)), [str(v) for v in xs], rotation=30, ha="right")
        bars = "SE over seeds" if seeds > 1 else "SE over prompts (one seed)"
        if any(lines):
            ax.legend(fontsize=7)
    else:  # x is a measured value: one point per run
        settings = list(dict.fromkeys(setting_label(r, swept) for r in done))
        for setting in settings:
            members = [r for r in done if setting_label(r, swept) == setting]
            members = [r for r in members if _number(r.get(x)) is not None]
            ax.errorbar(
                [float(r[x]) for r in members], [float(r[metric]) for r in members],
                xerr=[_number(r.get(se_key(x))) or 0.0 for r in members],
                yerr=[_number(r.get(se_key(metric))) or 0.0 for r in members],
                fmt="o", capsize=3, label=setting,
            )  # fmt: skip
        bars = "one point per run; SE over prompts"
        ax.legend(fontsize=7)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against {x} ({bars})", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_plots(rows: list[dict[str, Any]], description: dict[str, Any], out: Path) -> list[Path]:
    drawn = [
        plot_gold_vs_kl(rows, description["swept"], out / "gold_vs_kl.png"),
        plot_frontier(rows, description["swept"], out / "gold_vs_kl_mean.png"),
    ]
    for metric in description["metrics"]:
        drawn.append(plot_metric(rows, description, metric, out / f"{_file_name(metric)}.png"))
    return [p for p in drawn if p is not None]


def _file_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


def aggregate(out_dir: Path) -> list[Path]:
    """``results.csv``, ``results.md`` and the plots of the ablation in ``out_dir``, from
    ``ablation.json`` and the runs' summaries. Returns the files written."""
    out = Path(out_dir)
    description = json.loads((out / "ablation.json").read_text())
    rows = collect_rows(out, description)
    write_csv(rows, description["swept"], out / "results.csv")
    (out / "results.md").write_text(render_markdown(description, rows))
    plots = draw_plots(rows, description, out)
    return [out / "results.csv", out / "results.md", *plots, write_html(out, plots)]


def write_html(out: Path, plots: list[Path]) -> Path:
    """``report.html``: ``results.md``, every plot inlined, and a link to each run's report."""
    import html

    from prefopt.eval.html import image, markdown, page

    description = json.loads((out / "ablation.json").read_text())
    links = []
    for run in description["runs"]:
        if (out / "runs" / run["id"] / "report.html").exists():
            target = html.escape(f"runs/{run['id']}/report.html")
            links.append(f'<li><a href="{target}">{html.escape(run["id"])}</a></li>')
    sections = [
        ("Results", markdown((out / "results.md").read_text())),
        ("Plots", "\n".join(image(p, p.stem) for p in plots)),
        ("Runs", f"<ul>{''.join(links)}</ul>" if links else ""),
    ]
    path = out / "report.html"
    path.write_text(page(f"prefopt ablation {description['name']} ({description['size']})",
                         sections, html.escape(str(out.resolve()))))  # fmt: skip
    return path


def redraw(out_dir: Path) -> list[Path]:
    """The plots of an ablation folder again, from ``results.csv`` and ``ablation.json``, and
    its ``report.html``."""
    out = Path(out_dir)
    description = json.loads((out / "ablation.json").read_text())
    plots = draw_plots(read_csv(out / "results.csv"), description, out)
    if (out / "results.md").exists():
        write_html(out, plots)
    return plots
