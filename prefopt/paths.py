"""Layer 0: where prefopt keeps things, and which process of a launch writes them.

The cache of finished stages and world folders is ``$PREFOPT_CACHE`` or ``~/.cache/prefopt``;
run directories default to ``runs/``. Under a multi-process launch (``accelerate launch``,
``torchrun``) every process runs the same command; the launcher's ``RANK`` says which one is
the main process (rank 0), the only one that prints progress and writes shared files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

RUNS_DIR = Path("runs")

# what torchrun / accelerate launch set in each process, and accelerate's launch settings: a
# child process started without them is an ordinary single process
LAUNCH_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_ERROR_FILE",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING",
)
LAUNCH_PREFIXES = ("ACCELERATE_", "FSDP_")


def cache_dir() -> Path:
    """The cache folder (created on first use)."""
    root = Path(os.environ.get("PREFOPT_CACHE") or Path.home() / ".cache" / "prefopt")
    root.mkdir(parents=True, exist_ok=True)
    return root


def run_dir_for(name: str, output_dir: str | None = None) -> Path:
    """``output_dir`` if set, else a new ``runs/<name>-<timestamp>`` (suffixed if taken).
    Under a multi-process launch the processes must agree on it: the CLI asks the main process
    and broadcasts its answer."""
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


def launched_processes() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """True in a single process and in rank 0 of a launch; readable before any process group
    exists (the trainer's own ``is_main`` asks accelerate, which agrees)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def say(*parts: object) -> None:
    """``print`` on the main process only (flushed): progress lines appear once per launch."""
    if is_main_process():
        print(*parts, flush=True)


def single_process_environment() -> dict[str, str]:
    """This process's environment without the launcher's variables, for a child process that
    must run alone (e.g. training a cached world model while a launch waits for it)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCH_VARIABLES and not k.startswith(LAUNCH_PREFIXES)
    }
