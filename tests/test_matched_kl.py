"""Two PPO stages compared at the same KL (prefopt.pipeline.matched_kl), by hand."""

from __future__ import annotations

import csv
import json

import pytest

from prefopt.pipeline.matched_kl import gold_by_kl, main, matched_kl


def write_stage(folder, batches):
    folder.mkdir(parents=True)
    records = [{"step": i + 1, "objective/kl": kl, "objective/gold": g}
               for i, (kl, g) in enumerate(batches)]  # fmt: skip
    records.append({"step": 99, "loss": 1.0})  # a record without the two keys: ignored
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_gold_by_kl_bins_batches_and_drops_thin_bins(tmp_path):
    write_stage(tmp_path / "s", [(0.5, 1.0), (1.0, 2.0), (1.5, 3.0), (2.5, 9.0), (3.0, 9.0)])
    # 0-2: three batches, mean 2; 2-5: only two batches, left out; 5 is the last edge
    assert gold_by_kl(tmp_path / "s" / "metrics.jsonl", [0, 2, 5]) == {(0, 2): 2.0}


def test_matched_kl_is_the_per_seed_difference_with_se_over_seeds(tmp_path, capsys):
    (tmp_path / "ablation.json").write_text(json.dumps({"swept": ["variant"]}))
    rows = [["run", "variant", "seed", "status"]]
    for seed, shift in ((0, 0.1), (1, 0.3)):
        run = f"variant=mean,seed={seed}"
        rows.append([run, "mean", seed, "done"])
        base = tmp_path / "runs" / run / "stages"
        write_stage(base / "ppo_single", [(1.0, 2.0)] * 3 + [(12.0, 1.0)] * 3)
        # the ensemble: higher gold by `shift` at low KL, never reaches KL 10
        write_stage(base / "ppo_ensemble", [(1.0, 2.0 + shift)] * 3 + [(6.0, 1.5)] * 3)
    rows.append(["variant=mean,seed=2", "mean", 2, "missing"])
    with (tmp_path / "results.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    table = matched_kl(tmp_path, ("ppo_single", "ppo_ensemble"), [0, 5, 10, 20])
    assert len(table) == 1  # only KL 0-5 has both stages' batches
    (row,) = table
    assert row["kl"] == "0-5" and row["n"] == 2
    assert row["mean"] == pytest.approx(0.2)
    assert row["se"] == pytest.approx(0.1)  # |0.3 - 0.1| / 2
    main([str(tmp_path), "--bins", "0,5,10,20"])
    out = capsys.readouterr().out
    assert "| variant=mean | +0.200 (0.100, 2) |" in out
    assert (tmp_path / "matched_kl.md").read_text() == out
