"""Layer 0: where prefopt keeps things. The cache of finished stages and world folders is
``$PREFOPT_CACHE`` or ``~/.cache/prefopt``; run directories default to ``runs/``."""

from __future__ import annotations

import os
import time
from pathlib import Path

RUNS_DIR = Path("runs")


def cache_dir() -> Path:
    """The cache folder (created on first use)."""
    root = Path(os.environ.get("PREFOPT_CACHE") or Path.home() / ".cache" / "prefopt")
    root.mkdir(parents=True, exist_ok=True)
    return root


def run_dir_for(name: str, output_dir: str | None = None) -> Path:
    """``output_dir`` if set, else a new ``runs/<name>-<timestamp>`` (suffixed if taken)."""
    if output_dir:
        return Path(output_dir)
    return stamped_dir(RUNS_DIR, name)


def stamped_dir(parent: Path, name: str) -> Path:
    """A new ``parent/<name>-<timestamp>`` (suffixed ``-1``, ``-2``... if taken; not created)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = parent / f"{name}-{stamp}"
    suffix = 1
    while path.exists():
        path = parent / f"{name}-{stamp}-{suffix}"
        suffix += 1
    return path
