"""Layer 0: where prefopt keeps things. The cache of finished stages and world folders is
``$PREFOPT_CACHE`` or ``~/.cache/prefopt``; run directories default to ``runs/``."""

from __future__ import annotations

import os
from pathlib import Path

RUNS_DIR = Path("runs")


def cache_dir() -> Path:
    """The cache folder (created on first use)."""
    root = Path(os.environ.get("PREFOPT_CACHE") or Path.home() / ".cache" / "prefopt")
    root.mkdir(parents=True, exist_ok=True)
    return root
