"""Plots drawn from a run's files alone."""

from __future__ import annotations

import json
from pathlib import Path


def read_records(metrics_path: Path) -> list[dict[str, float]]:
    if not metrics_path.exists():
        return []
    return [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]


def overoptimisation_plot(metrics_path: Path, out_dir: Path) -> Path | None:
    """``overoptimisation.png``: the proxy reward (the scorer's mean score of each logged
    rollout batch) and the gold reward of the same rollouts against their KL to the reference
    (Gao et al. 2022's picture; only the world has the gold curve). None without records."""
    records = [
        r
        for r in read_records(Path(metrics_path))
        if "objective/kl" in r and "objective/scores" in r
    ]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kl = _smooth([r["objective/kl"] for r in records])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    series = [("objective/scores", "proxy reward (scorer)", "tab:blue")]
    if all("objective/gold" in r for r in records):
        series.append(("objective/gold", "gold reward (world)", "tab:orange"))
    for key, label, colour in series:
        raw = [r[key] for r in records]
        ax.scatter([r["objective/kl"] for r in records], raw, s=8, color=colour, alpha=0.3)
        ax.plot(kl, _smooth(raw), "-", color=colour, lw=2, label=f"{label}, running mean")
    ax.set_xlabel("KL(policy || reference) of the rollout batch, nats")
    ax.set_ylabel("mean reward of the rollout batch")
    ax.set_title(f"reward against KL over training ({len(records)} logged batches)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(out_dir) / "overoptimisation.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# drawn first, in this order, when logged; every other logged number follows (bookkeeping aside)
CURVE_ORDER = ("loss", "rewards/margins", "rewards/accuracies", "objective/scores",
               "objective/gold", "objective/kl", "objective/entropy", "objective/length", "lr",
               "grad_norm")  # fmt: skip
NOT_CURVES = ("step", "epoch", "examples_per_s")


def training_curves(metrics_path: Path, out_dir: Path) -> Path | None:
    """``training_curves.png``: every number ``metrics.jsonl`` logged against the step, one
    panel each (loss, reward margins, proxy / gold reward, KL, entropy, length, learning
    rate... whatever the run logged; periodic ``eval/`` values too). None without records."""
    records = read_records(Path(metrics_path))
    keys = [k for r in records for k, v in r.items() if isinstance(v, int | float)]
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    # the final evaluation's figures (logged once, at the last step) are not curves: the run's
    # report tabulates them; periodic eval/ values (trainer.eval_every) are
    keys = [
        k for k in counts if k not in NOT_CURVES and (counts[k] > 1 or not k.startswith("eval/"))
    ]
    if not keys:
        return None
    keys.sort(key=lambda k: (CURVE_ORDER.index(k) if k in CURVE_ORDER else len(CURVE_ORDER),
                             k.startswith("eval/")))  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    columns = min(4, len(keys))
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
        steps, values = [p[0] for p in points], [p[1] for p in points]
        ax.plot(steps, values, "o" if len(points) < 3 else "-", ms=3, lw=1.2)
        ax.set_title(key, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    fig.tight_layout()
    path = Path(out_dir) / "training_curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _smooth(values: list[float], window: int = 5) -> list[float]:
    """Trailing running mean (the first points average what there is)."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out
