"""Experiment trackers: ``trainer.report_to`` through accelerate's trackers.

Every run writes ``metrics.jsonl`` (one JSON record per logged step; the run's plots, its
``report.html`` and the resume logic read it), through :class:`MetricsFile`, an accelerate
``GeneralTracker``. ``trainer.report_to`` adds accelerate's own trackers by name
(``tensorboard``, ``wandb``, ``mlflow``, ``trackio``, ...): the trainer passes them to
``Accelerator(log_with=...)``, starts them with ``init_trackers(project, config=recipe)`` (the
resolved recipe, flattened to dotted keys, is each tracker's run configuration) and logs every
record with ``accelerator.log``. Where each writes:

* ``tensorboard``: ``<run>/tensorboard/<project>/`` (event files, ``hparams.yml``);
* ``wandb``: ``<run>/wandb/`` unless ``WANDB_DIR`` is set; ``WANDB_MODE=offline`` for no
  network (then ``wandb sync`` uploads it later);
* ``mlflow``: wherever ``MLFLOW_TRACKING_URI`` points (MLflow's own default otherwise; MLflow 3
  refuses a ``file:`` store unless ``MLFLOW_ALLOW_FILE_STORE=true``: a local
  ``sqlite:///path/mlflow.db`` needs no server); experiment ``trainer.project``;
* ``trackio`` (``pip install trackio``; not in the ``trackers`` extra): its local store
  (``TRACKIO_DIR``), project ``trainer.project``.

The project name is ``trainer.project``; the tracker's run is named after the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker

# accelerate's tracker names (accelerate.utils.LoggerType) that prefopt passes on, and "jsonl",
# prefopt's own metrics.jsonl, which is always written (naming it is allowed and changes nothing)
from prefopt.config import TRACKERS, Recipe

METRICS_FILE = "metrics.jsonl"


class TrackerError(RuntimeError):
    pass


class MetricsFile(GeneralTracker):
    """``metrics.jsonl``: one line ``{"step": s, **values}`` per ``log`` call (main process)."""

    name = "jsonl"
    requires_logging_directory = False

    def __init__(self, run_dir: Path):
        super().__init__()
        self.path = Path(run_dir) / METRICS_FILE

    @property
    def tracker(self) -> Path:
        return self.path

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")


def log_with(run_dir: Path, report_to: list[str]) -> list[Any]:
    """What ``Accelerator(log_with=...)`` takes: the metrics file and the named trackers.
    Raises TrackerError when a named tracker's package is not installed (accelerate itself
    would drop it with only a debug message)."""
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    named = [t for t in dict.fromkeys(report_to) if t != "jsonl"]
    unknown = [t for t in named if t not in TRACKERS]
    if unknown:
        raise TrackerError(f"trainer.report_to: unknown {unknown}; supported: {list(TRACKERS)}")
    missing = [t for t in named if t not in available]
    if missing:
        raise TrackerError(
            f"trainer.report_to: {missing} not installed (pip install {' '.join(missing)}, or "
            "pip install 'prefopt[trackers]' for wandb and mlflow)"
        )
    return [MetricsFile(run_dir), *named]


def init_kwargs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per-tracker arguments of ``init_trackers``: each tracker's run is named after the run
    folder; wandb writes into the run folder unless ``WANDB_DIR`` says otherwise."""
    import os

    wandb: dict[str, Any] = {"name": run_dir.name}
    if not os.environ.get("WANDB_DIR"):
        wandb["dir"] = str(run_dir)
    return {"wandb": wandb, "mlflow": {"run_name": run_dir.name}, "trackio": {"name": run_dir.name}}


def recipe_config(recipe: Recipe) -> dict[str, bool | int | float | str]:
    """The resolved recipe as a tracker's run configuration: dotted keys, scalars kept, lists
    and None written as JSON (every tracker accepts strings; TensorBoard's hparams take
    nothing else)."""
    import dataclasses

    def walk(value: Any, prefix: str, out: dict[str, Any]) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{prefix}{key}.", out)
        elif isinstance(value, bool | int | float | str):
            out[prefix[:-1]] = value
        else:
            out[prefix[:-1]] = json.dumps(value)

    out: dict[str, Any] = {}
    walk(dataclasses.asdict(recipe), "", out)
    return out


class RunTrackers:
    """The trainer's side: start the accelerator's trackers, log records, remember the last
    training record (``summary.json``'s ``train``), close them."""

    def __init__(self, accelerator: Any, recipe: Recipe, run_dir: Path):
        self.accelerator = accelerator
        self.last: dict[str, float] = {}
        try:
            accelerator.init_trackers(
                recipe.trainer.project,
                config=recipe_config(recipe),
                init_kwargs=init_kwargs(run_dir),
            )
        except Exception as exc:  # a tracker's own failure (a bad URI, no login): say which
            self.close()
            names = [t for t in recipe.trainer.report_to if t != "jsonl"]
            raise TrackerError(
                f"trainer.report_to: starting {names} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def log(self, step: int, record: dict[str, float]) -> None:
        if not record:
            return
        if not any(k.startswith("eval/") for k in record):
            self.last = record
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def close(self) -> None:
        """Finish every tracker (not ``accelerator.end_training``, which would also end the
        process group that a pipeline's next stage still uses)."""
        for tracker in self.accelerator.trackers:
            try:
                tracker.finish()
            except Exception:  # noqa: BLE001 - one tracker that never started
                pass
        self.accelerator.trackers.clear()
