"""Layer 0: where prefopt keeps things, and which process of a launch writes them.

The cache of finished stages and world folders is ``$PREFOPT_CACHE`` or ``~/.cache/prefopt``;
run directories default to ``runs/``. Under a multi-process launch (``accelerate launch``,
``torchrun``) every process runs the same command; the launcher's ``RANK`` says which one is
the main process (rank 0), the only one that prints progress and writes shared files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
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


class FolderInUse(OSError):
    """Another process holds the lock of a folder; the message says which process (an
    OSError, as the busy resource is: the CLI reports it in one line)."""


@contextlib.contextmanager
def exclusive_lock(lock_file: Path, on_busy: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold ``lock_file`` exclusively (an ``fcntl`` lock) for the ``with`` block.

    When another process holds it: with ``on_busy`` unset, raise :class:`FolderInUse` at once
    naming the holder; else call ``on_busy(holder)`` and wait. The kernel releases the lock of
    a process that dies, however it dies, so a lock left by a crash is never stale: the file
    may remain, but the next process takes it at once. The holder (pid, host, start time,
    command) is written into the file for the message."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            if on_busy is None:
                raise FolderInUse(holder) from None
            on_busy(holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
        handle.write(
            f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({command[:200]})\n"
        )
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


RUN_LOCK = ".prefopt.lock"


@contextlib.contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """A run folder belongs to one run: the main process of a run holds ``<run_dir>/.prefopt.lock``
    while it trains, and a second run asking for the same folder fails at once (FolderInUse).
    The other processes of a launch share their main process's folder and take no lock."""
    if not is_main_process():
        yield
        return
    try:
        with exclusive_lock(run_dir / RUN_LOCK):
            yield
    except FolderInUse as exc:
        raise FolderInUse(
            f"{run_dir} is in use by another run ({exc}); wait for it to finish, or choose "
            "another output_dir"
        ) from None


def clock(seconds: float) -> str:
    """A duration for progress lines: ``42 s``, ``3 min 07 s``, ``1 h 05 min``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Progress of a long step as plain lines on the main process's stderr (readable in a log
    file as on a terminal): ``label: 3/8 (38%), elapsed 1 min 02 s, about 1 min 43 s left,
    note``. The time left extrapolates the mean time per unit so far."""

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label, self.total = label, max(1, total)
        self.enabled = enabled and is_main_process()
        self.start = time.time()

    def line(self, done: int, note: str = "") -> str:
        elapsed = time.time() - self.start
        left = f", about {clock(elapsed / done * (self.total - done))} left" if done else ""
        return (
            f"{self.label}: {done}/{self.total} ({done / self.total:.0%}), elapsed "
            f"{clock(elapsed)}{left}" + (f", {note}" if note else "")
        )

    def update(self, done: int, note: str = "") -> None:
        if self.enabled:
            print(self.line(done, note), file=sys.stderr, flush=True)
