"""``report.html``: a run's results on one page that a browser opens from the disk.

Self-contained: every plot is a PNG inlined as base64, the style sheet is inline, there is no
script and no external resource, so the file can be mailed or archived alone. Drawn from the
run's files only (``summary.json``, ``metrics.jsonl``, ``recipe.yaml`` and the PNGs beside
them), so ``prefopt plot RUN_DIR`` redraws it for any finished run:

* the run's settings (recipe, steps, runtime, engine);
* training curves (``training_curves.png``: every number ``metrics.jsonl`` logged) and, for an
  online run, reward against KL (``overoptimisation.png``);
* the gold evaluation on the world: a table of every figure with its standard error over
  prompts, a plot of the policy's and the reference's gold reward per split with error bars,
  and sample completions, the policy's beside the reference's for the same prompt;
* a held-out evaluation from files (reward-model accuracy, DPO margins) as a table;
* a pipeline's comparison table and plot (``comparison.md``, ``comparison.png``).

The pipeline and ablation reports (:mod:`prefopt.pipeline.results`) are built from the same
pieces (:func:`page`, :func:`markdown`, :func:`image`).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from prefopt.eval.plots import overoptimisation_plot, training_curves

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1150px;padding:0 16px;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ddd;
padding-bottom:3px;margin-top:1.6em}table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}.muted{color:#666;font-size:.9em}
code{background:#f5f5f5;padding:0 3px}td.text{font-family:ui-monospace,monospace;max-width:430px}
"""


def page(title: str, sections: list[tuple[str, str]], subtitle: str = "") -> str:
    """A whole HTML document: ``title`` and ``(heading, body html)`` sections."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if subtitle:
        parts.append(f'<p class="muted">{subtitle}</p>')
    for heading, body in sections:
        if body:
            parts.append(f"<section><h2>{html.escape(heading)}</h2>\n{body}</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )


def image(path: Path | None, alt: str) -> str:
    """``<img>`` with the PNG at ``path`` inlined (empty when there is no such file)."""
    if path is None or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table(head: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any, tag: str) -> str:
        if isinstance(value, float):
            return f'<{tag} class="num">{_number(value)}</{tag}>'
        return f"<{tag}>{html.escape(str(value))}</{tag}>"

    lines = ["<table>", "<tr>" + "".join(cell(h, "th") for h in head) + "</tr>"]
    lines += ["<tr>" + "".join(cell(v, "td") for v in row) + "</tr>" for row in rows]
    return "\n".join([*lines, "</table>"])


def markdown(text: str) -> str:
    """The markdown prefopt writes (``comparison.md``, ``results.md``): ``#`` headings,
    paragraphs, pipe tables and inline code, as HTML."""
    out: list[str] = []
    rows: list[list[str]] = []

    def inline(s: str) -> str:
        parts = html.escape(s).split("`")
        return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))

    def flush() -> None:
        if rows:
            head, body = rows[0], [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
            out.append("</table>")
            rows.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            rows.append([c.strip() for c in stripped.strip("|").split("|")])
            continue
        flush()
        if stripped.startswith("#"):
            level = min(4, len(stripped) - len(stripped.lstrip("#")) + 1)
            out.append(f"<h{level}>{inline(stripped.lstrip('#').strip())}</h{level}>")
        elif stripped:
            out.append(f"<p>{inline(stripped)}</p>")
    flush()
    return "\n".join(out)


def _number(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.4e}"


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


# ------------------------------------------------------------------------------ one run


def run_report(run_dir: Path) -> Path:
    """Write ``report.html`` (and the training-curve PNGs it shows) in ``run_dir``."""
    run_dir = Path(run_dir).resolve()
    summary = _read_json(run_dir / "summary.json")
    metrics = run_dir / "metrics.jsonl"
    curves = training_curves(metrics, run_dir)
    over = overoptimisation_plot(metrics, run_dir)
    ev = summary.get("eval") or {}
    pipeline = (run_dir / "stages").is_dir()
    # a pipeline logs nothing itself: its stages' reports have the curves
    missing = "" if pipeline else '<p class="muted">no metrics logged</p>'
    sections = [
        ("Run", _settings(run_dir, summary)),
        ("Training curves", image(curves, "training curves") or missing),
        ("Reward against KL over training", image(over, "reward against KL")),
        ("Gold evaluation on the world", _gold_section(ev, run_dir)),
        ("Sample completions: policy and reference on the same prompts", _samples(ev)),
        ("Held-out evaluation", _scalar_table(ev)),
    ]
    if pipeline:  # its stages, each with its own report
        sections.append(("Stages", _stages(run_dir, summary)))
    comparison = run_dir / "comparison.md"
    if comparison.is_file():  # a pipeline's closing comparison
        plot = image(run_dir / "comparison.png", "gold reward against KL")
        sections.append(("Comparison", markdown(comparison.read_text()) + plot))
    name = summary.get("recipe") or summary.get("pipeline") or "run"
    title = f"prefopt: {name} ({run_dir.name})"
    path = run_dir / "report.html"
    path.write_text(page(title, sections, html.escape(str(run_dir))))
    return path


def _stages(run_dir: Path, summary: dict[str, Any]) -> str:
    """One row per stage of a pipeline: its headline figures and a link to its report."""
    rows = []
    for name, result in (summary.get("stages") or {}).items():
        ev = (result or {}).get("eval") or {}
        figures = [f"{k} {_with_se(ev, k)}" for k in ("gold_reward", "kl", "accuracy") if k in ev]
        link = run_dir / "stages" / name / "report.html"
        target = (
            f'<a href="stages/{html.escape(name)}/report.html">report</a>' if link.exists() else ""
        )
        state = "reused" if name in (summary.get("reused") or []) else "ran"
        steps = (result or {}).get("steps", "")
        cells = [html.escape(name), state, steps, html.escape("; ".join(figures)), target]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = (
        "<tr><th>stage</th><th>this run</th><th>steps</th>"
        "<th>its evaluation (± SE over prompts)</th><th></th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>" if rows else ""


def _settings(run_dir: Path, summary: dict[str, Any]) -> str:
    from omegaconf import OmegaConf

    rows: list[list[Any]] = []
    recipe_file = run_dir / "recipe.yaml"
    if recipe_file.is_file():
        recipe = OmegaConf.load(recipe_file)
        for key in ("name", "description", "loss.name", "model.name_or_path", "data.source",
                    "trainer.max_steps", "trainer.batch_size", "trainer.grad_accum",
                    "trainer.lr", "trainer.scheduler", "trainer.warmup_steps", "seed"):  # fmt: skip
            value = OmegaConf.select(recipe, key, default=None)
            if value not in (None, ""):
                rows.append([key, value])
    for key in ("steps", "runtime_s"):
        if key in summary:
            rows.append([f"summary: {key}", summary[key]])
    for key, value in (summary.get("run") or {}).items():
        if isinstance(value, str | int | float):
            rows.append([f"run: {key}", value])
    return table(["setting", "value"], rows) if rows else ""


# the gold evaluation's figures besides SPLIT_KEYS and their ood_ twins
GOLD_EXTRA = ("generalisation_gap", "mean_length", "reference_mean_length", "empty_rate",
              "ead_across_input", "samples_per_prompt", "n_prompts", "best_of_n")  # fmt: skip


def _gold_section(ev: dict[str, Any], run_dir: Path) -> str:
    if "gold_reward" not in ev:
        return ""
    from prefopt.eval.gold import SPLIT_KEYS

    rows = []
    for key in (*SPLIT_KEYS, GOLD_EXTRA[0]):
        if key in ev:
            ood = ev.get(f"ood_{key}")
            rows.append([key, _with_se(ev, key),
                         "" if ood is None else _with_se(ev, f"ood_{key}")])  # fmt: skip
    for key in GOLD_EXTRA[1:]:
        if isinstance(ev.get(key), int | float):
            rows.append([key, _number(ev[key]), ""])
    head = ["figure", "in distribution (± SE over prompts)", "out of distribution (± SE)"]
    note = (
        f'<p class="muted">{ev.get("n_prompts", "?")} prompts per split x '
        f"{ev.get('samples_per_prompt', '?')} samples; standard errors over prompts. "
        f"{html.escape(str(ev.get('kl_note', '')))}</p>"
    )
    plot = _gold_plot(ev, run_dir / "gold_eval.png")
    return note + table(head, rows) + image(plot, "gold reward per split with error bars")


def _with_se(ev: dict[str, Any], key: str) -> str:
    se = ev.get(f"{key}_se")
    text = _number(ev[key])
    return text + (f" ± {_number(se)}" if isinstance(se, int | float) else "")


def _gold_plot(ev: dict[str, Any], path: Path) -> Path:
    """The policy's and the reference's gold reward per split, error bars: SE over prompts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = {"test": ev, **(ev.get("shift") or {})}  # shift rows: ood, and eval.shifts
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    width = 0.38
    for offset, (prefix, label, colour) in enumerate(
        [("", "policy", "tab:blue"), ("reference_", "reference", "tab:gray")]
    ):
        known = [(i, row) for i, row in enumerate(splits.values()) if f"{prefix}gold_reward" in row]
        ax.bar(
            [i + (offset - 0.5) * width for i, _ in known],
            [row[f"{prefix}gold_reward"] for _, row in known],
            width,
            yerr=[row.get(f"{prefix}gold_reward_se", 0.0) for _, row in known],
            capsize=4, label=label, color=colour, alpha=0.85,
        )  # fmt: skip
    ax.set_xticks(range(len(splits)), [f"{s} prompts" for s in splits])
    ax.set_ylabel("mean gold reward")
    ax.set_title("gold reward per split (error bars: SE over prompts)", fontsize=10)
    ax.axhline(0, color="black", lw=0.6)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _samples(ev: dict[str, Any]) -> str:
    samples = ev.get("samples") or []
    if not samples:
        return ""

    def shown(sample: dict[str, Any], who: str) -> str:
        gold = sample.get(f"{who}_gold")  # none off the world
        return sample[who] + ("" if gold is None else f"  [gold {gold:+.2f}]")

    rows = [[s["prompt"], shown(s, "policy"), shown(s, "reference")] for s in samples]
    body = table(["prompt", "policy", "reference"], rows)
    return body.replace("<td>", '<td class="text">')


def _scalar_table(ev: dict[str, Any]) -> str:
    """The figures the gold section does not show (reward-model accuracy, DPO's held-out
    margins and loss...)."""
    from prefopt.eval.gold import SPLIT_KEYS

    gold = {*SPLIT_KEYS, *GOLD_EXTRA}
    gold |= {f"ood_{k}" for k in gold}
    rows = [
        [k, _with_se(ev, k)]
        for k, v in ev.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
        and not k.endswith("_se") and k not in gold
    ]  # fmt: skip
    return table(["figure", "value (± SE where known)"], rows) if rows else ""
