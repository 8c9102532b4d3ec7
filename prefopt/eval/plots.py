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


def _smooth(values: list[float], window: int = 5) -> list[float]:
    """Trailing running mean (the first points average what there is)."""
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out
