"""Data-parallel invariance (slow suite): 2 CPU processes (gloo, via torchrun) with per-device
batch 4 follow the same loss trajectory as 1 process with batch 8, and a checkpoint written by
the 2-process run resumes in 1 process on that same trajectory."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY

pytestmark = pytest.mark.slow

COMMON = [
    *TINY,
    "model.name_or_path=null",
    "trainer.device=cpu",
    "trainer.lr=1e-2",
    "trainer.scheduler=constant",
    "trainer.save_every=3",
]


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def run(launcher: list[str], *overrides: str) -> None:
    proc = subprocess.run(
        [*launcher, "-m", "prefopt.cli", "train", "dpo", *COMMON, *overrides],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    run(
        [torchrun, "--nproc_per_node", "2"],
        "trainer.batch_size=4",
        "trainer.max_steps=6",
        f"output_dir={tmp_path / 'ddp'}",
    )
    run(
        [sys.executable],
        "trainer.batch_size=8",
        "trainer.max_steps=8",
        f"output_dir={tmp_path / 'single'}",
    )
    ddp, single = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert sorted(ddp) == list(range(1, 7))
    for step in range(1, 7):
        assert ddp[step] == pytest.approx(single[step], abs=1e-5), step
    assert len({round(v, 4) for v in ddp.values()}) > 3  # the runs really trained
    # the 2-process checkpoint continues in one process
    run(
        [sys.executable],
        "trainer.batch_size=8",
        "trainer.max_steps=8",
        "resume=auto",
        f"output_dir={tmp_path / 'ddp'}",
    )
    resumed = losses(tmp_path / "ddp")
    for step in (7, 8):
        assert resumed[step] == pytest.approx(single[step], abs=1e-5), step
