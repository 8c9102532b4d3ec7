"""``trainer.report_to``: accelerate's trackers, with the real packages in offline modes.

A tiny DPO run and a tiny PPO run log to TensorBoard, Weights & Biases (``WANDB_MODE=offline``,
its transaction log read back with ``wandb leet inspect --json``) and MLflow (a local SQLite
store: MLflow 3 refuses a ``file:`` store unless told otherwise) besides ``metrics.jsonl``; each
tracker's own files must hold the same per-step values as ``metrics.jsonl``, and the resolved
recipe as the run's configuration.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefopt.pipeline.run import train
from prefopt.trainers.base import TrainingError
from tests.conftest import read_metrics, tiny_recipe
from tests.test_online import ONLINE

TRACKED = "trainer.report_to=[tensorboard,wandb,mlflow]"


@pytest.fixture
def offline_trackers(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def per_step(run_dir: Path, key: str) -> dict[int, float]:
    return {m["step"]: m[key] for m in read_metrics(run_dir) if key in m}


def tensorboard_scalars(run_dir: Path, key: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (run_dir / "tensorboard" / "prefopt").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(key)}


def wandb_records(run_dir: Path) -> list[dict]:
    (log,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(log)],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def in_order(values: dict[int, float], steps: list[int]) -> torch.Tensor:
    return torch.tensor([values[s] for s in steps], dtype=torch.float64)


def check_trackers(run_dir: Path, uri: str, keys: tuple[str, ...], config: dict) -> None:
    import mlflow

    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("prefopt").experiment_id])
    assert run.info.run_name == run_dir.name
    records = wandb_records(run_dir)
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    wandb_config: dict = {}
    for r in records:
        if r["type"] == "config":
            wandb_config.update(r["config"]["update"])
    for key in keys:
        expected = per_step(run_dir, key)
        assert len(expected) >= 2, key
        steps = sorted(expected)
        values = in_order(expected, steps)
        # TensorBoard keeps float32
        tb = tensorboard_scalars(run_dir, key)
        assert sorted(tb) == steps
        torch.testing.assert_close(
            torch.tensor([tb[s] for s in steps]), values.float(), rtol=0, atol=0
        )
        history_ml = client.get_metric_history(run.info.run_id, key)
        mlf = {m.step: m.value for m in history_ml}
        assert sorted(mlf) == steps
        torch.testing.assert_close(in_order(mlf, steps), values)
        wb = {h["_step"]: h[key] for h in history if key in h}
        assert sorted(wb) == steps
        torch.testing.assert_close(in_order(wb, steps), values)
    for key, value in config.items():  # the resolved recipe is each run's configuration
        assert run.data.params[key] == str(value), key
        assert wandb_config[key] == value, key


def test_a_dpo_run_logs_to_tensorboard_wandb_and_mlflow(tmp_path, offline_trackers):
    _, run_dir = train(
        tiny_recipe(
            "dpo", tmp_path / "dpo", "model.name_or_path=null", "trainer.max_steps=3", TRACKED,
            "loss.beta=0.25",
        )
    )  # fmt: skip
    check_trackers(
        run_dir, offline_trackers, ("loss", "rewards/margins", "lr"),
        {"loss.beta": 0.25, "trainer.max_steps": 3, "loss.name": "sigmoid"},
    )  # fmt: skip


def test_a_ppo_run_logs_to_tensorboard_wandb_and_mlflow(
    tmp_path, tiny_pretrained, offline_trackers
):
    _, run_dir = train(
        tiny_recipe(
            "ppo", tmp_path / "ppo", f"model.name_or_path={tiny_pretrained}", *ONLINE,
            "trainer.max_steps=2", "trainer.batch_size=4", "loss.epochs=1", TRACKED,
        )
    )  # fmt: skip
    check_trackers(
        run_dir, offline_trackers, ("loss", "objective/kl", "objective/scores"),
        {"regulariser.name": "kl", "trainer.max_steps": 2},
    )  # fmt: skip


def test_a_tracker_that_is_not_installed_fails_before_any_model_loads(tmp_path):
    from accelerate.tracking import get_available_trackers

    absent = next(
        t for t in ("comet_ml", "aim", "clearml", "dvclive", "swanlab")
        if t not in {str(a) for a in get_available_trackers()}
    )  # fmt: skip
    with pytest.raises(TrainingError, match=f"trainer.report_to: \\['{absent}'\\] not installed"):
        train(tiny_recipe("dpo", tmp_path / "x", f"trainer.report_to=[{absent}]"))
    assert not (tmp_path / "x").exists()
