"""The trainer base: one readable loop that every offline algorithm shares.

setup -> train (micro-batches, accumulation, clipping, schedule, logging, evaluation,
checkpoints) -> save -> summary. Subclasses say what a batch is and what its loss is:

* `build()`: models, tokenizer, datasets (`self.train_examples`, `self.collate`);
* `compute_loss(batch) -> LossOutput` (per-example loss; this base reduces it by the mean);
* optionally `evaluate()`, `final_evaluation()`, `on_epoch_end()`, `extra_state()`.

Data order is a pure function of (seed, epoch): epoch e visits the examples in the permutation
drawn from a generator seeded with ``seed * 1_000_003 + e``; optimizer step s consumes global
micro-batches ``s * grad_accum ... (s + 1) * grad_accum - 1`` and process k takes the k-th slice of
each. Resuming at step s therefore needs only s, never the state of a data loader, and batch
``b x accumulation a`` sees exactly the examples of batch ``a*b`` (the accumulation invariance).
The last incomplete global batch of an epoch is dropped.

Checkpoints hold the trainable parameters, optimizer, scheduler, RNG states, the step and any
per-example state of the algorithm (e.g. IDS soft labels). They are written to a temporary folder
and renamed into place, so a crash while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prefopt.config import Recipe
from prefopt.losses.base import LossOutput
from prefopt.models.loading import attention_implementation
from prefopt.paths import clock
from prefopt.trainers import engines, tracking

CHECKPOINT_PREFIX = "checkpoint-"


class TrainingError(RuntimeError):
    pass


_STOP_REQUESTS: list[str] = []


def request_stop(reason: str) -> None:
    """Ask the running loop to stop at the end of the step in progress (a signal handler's
    job: SIGTERM); the loop then checkpoints that step and raises TrainingInterrupted."""
    _STOP_REQUESTS.append(reason)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training. ``checkpoint`` holds the last completed step (written
    at the interruption when the step in progress had not yet changed the weights), or None."""

    def __init__(self, reason: str, step: int, checkpoint: Path | None):
        super().__init__(reason)
        self.reason, self.step, self.checkpoint = reason, step, checkpoint


class Trainer:
    """Offline trainer base. See the module docstring for the contract with subclasses."""

    def __init__(self, recipe: Recipe, run_dir: Path, for_eval: bool = False):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        self.recipe = recipe
        self.cfg = recipe.trainer
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[self.cfg.precision]
        try:
            trackers = tracking.log_with(self.run_dir, self.cfg.report_to)
        except tracking.TrackerError as exc:
            raise TrainingError(str(exc)) from None
        self.accelerator = Accelerator(
            mixed_precision=precision,
            gradient_accumulation_steps=self.cfg.grad_accum,
            cpu=engines.use_cpu(self.cfg.device),
            log_with=trackers,
            project_config=ProjectConfiguration(
                project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "tensorboard")
            ),
        )
        if self.cfg.device == "cuda" and self.accelerator.device.type != "cuda":
            raise TrainingError("trainer.device is cuda but no CUDA device is available")
        try:
            engines.check_launch(self.accelerator, self.cfg)
        except engines.LaunchError as exc:
            raise TrainingError(str(exc)) from None
        set_seed(recipe.seed)
        self.device = self.accelerator.device
        # compute dtype of k-bit layers follows the mixed-precision setting
        self.compute_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            self.cfg.precision, torch.float32
        )
        self.step = 0
        self.summary: dict[str, Any] = {
            "recipe": recipe.name,
            "run": engines.run_info(self.accelerator, self.cfg.precision),
        }
        self.pending_log: dict[str, float] = {}  # merged into the next metrics record
        # full weights of a sharded model, gathered at the end for save_outputs (else None)
        self.gathered_weights: dict[str, Tensor] | None = None
        self.train_examples: list[dict[str, Any]] = []
        self.model: nn.Module
        self.for_eval = for_eval  # evaluation only: no optimizer, nothing trainable needed
        self.build()
        if for_eval:
            self.model = self.accelerator.prepare(self.model)
        else:
            self._prepare_optimisation()

    # ------------------------------------------------------------------ subclass hooks

    def build(self) -> None:
        raise NotImplementedError

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        raise NotImplementedError

    def compute_loss(self, batch: dict[str, Tensor]) -> LossOutput:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Cheap held-out metrics, run every `trainer.eval_every` steps and at the end."""
        return {}

    def final_evaluation(self) -> dict[str, Any]:
        """Expensive evaluation run once after training (e.g. generation and gold reward)."""
        return {}

    def on_epoch_end(self, epoch: int) -> None:
        """Called when the data order wraps to a new epoch (before its first batch)."""

    def on_step_end(self, step: int) -> None:
        """Called after optimiser step `step` (1-based), before logging and checkpoints."""

    def extra_state(self) -> dict[str, Tensor]:
        """Per-example algorithm state that checkpoints must carry."""
        return {}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        pass

    def save_outputs(self, path: Path) -> None:
        """Write the trained model in a portable format."""
        raise NotImplementedError

    # ------------------------------------------------------------------ set-up

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _prepare_optimisation(self) -> None:
        if engines.needs_own_fsdp(self.accelerator):
            try:
                self.model = engines.shard_on_cpu(self.accelerator, self.model)
            except engines.LaunchError as exc:
                raise TrainingError(str(exc)) from None
        params = self.trainable_parameters()
        if not params:
            raise TrainingError("the model has no trainable parameters")
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": self.cfg.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        # each group's parameter names, before any engine flattens or partitions them
        names = {p: n for n, p in self.accelerator.unwrap_model(self.model).named_parameters()}
        self.param_group_names = [[names.get(p, "") for p in g["params"]] for g in groups]
        optimizer = torch.optim.AdamW(
            groups,
            lr=self.cfg.lr,
            betas=tuple(self.cfg.adam_betas),  # type: ignore[arg-type]
            eps=self.cfg.adam_eps,
            **engines.adamw_kernel(self.accelerator, params),
        )
        if engines.is_sharded(self.model):  # sharded above (FSDP on CPU): no DDP wrapper
            self.optimizer = self.accelerator.prepare(optimizer)
        else:
            self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        world = self.accelerator.num_processes
        self.global_batch = self.cfg.batch_size * world
        self.batches_per_epoch = len(self.train_examples) // self.global_batch
        if self.batches_per_epoch == 0:
            raise TrainingError(
                f"{len(self.train_examples)} training examples are fewer than one global batch "
                f"({self.cfg.batch_size} x {world} processes)"
            )
        if self.cfg.epochs is not None:
            # the length in epochs becomes steps now that the data is known; the schedule
            # (built next) decays over these steps
            self.cfg.max_steps = max(
                1, math.ceil(self.cfg.epochs * self.batches_per_epoch / self.cfg.grad_accum)
            )
        self.scheduler = learning_rate_schedule(optimizer, self.cfg)

    # ------------------------------------------------------------------ data order

    def epoch_permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.recipe.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_examples), generator=generator).tolist()

    def micro_batch(self, index: int) -> tuple[int, dict[str, Tensor]]:
        """Global micro-batch `index` -> (epoch, this process's collated batch)."""
        epoch, offset = divmod(index, self.batches_per_epoch)
        if epoch != getattr(self, "_perm_epoch", None):
            self._perm = self.epoch_permutation(epoch)
            self._perm_epoch = epoch
        start = offset * self.global_batch + self.accelerator.process_index * self.cfg.batch_size
        ids = self._perm[start : start + self.cfg.batch_size]
        batch = self.collate([self.train_examples[i] for i in ids])
        return epoch, {
            k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()
        }

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict[str, Any]:
        self._maybe_resume()
        start_time, start_step = time.time(), self.step
        try:
            tracker = tracking.RunTrackers(self.accelerator, self.recipe, self.run_dir)
        except tracking.TrackerError as exc:
            raise TrainingError(str(exc)) from exc
        window: dict[str, list[float]] = defaultdict(list)
        shown = self.cfg.progress_bar and self.is_main
        bar = _progress(self.cfg.max_steps, self.step, shown, self.cfg.log_every)
        self.model.train()
        self._last_epoch = (self.step * self.cfg.grad_accum - 1) // self.batches_per_epoch
        self._rng_at_step, self._step_dirty = _rng_state(), False
        try:
            self._loop(tracker, window, bar, start_time, start_step)
        except KeyboardInterrupt as exc:
            bar.close()
            tracker.close()
            raise self._interrupted(exc) from None
        bar.close()
        self.save_checkpoint()
        return self._finish(tracker, start_time)

    def _interrupted(self, exc: KeyboardInterrupt) -> TrainingInterrupted:
        """Keep the last completed step: write its checkpoint unless the step in progress had
        already changed the weights (then the last periodic checkpoint is the one to resume)."""
        if isinstance(exc, TrainingInterrupted):
            return exc
        reason = str(exc) or "KeyboardInterrupt"
        latest = list_checkpoints(self.run_dir)
        path: Path | None = latest[-1] if latest else None
        done = self.run_dir / f"{CHECKPOINT_PREFIX}{self.step}"
        if self.step > 0 and not self._step_dirty and not done.exists():
            path = self.save_checkpoint(rng=self._rng_at_step)
        elif done.exists():
            path = done
        return TrainingInterrupted(reason, self.step, path)

    def _loop(self, tracker, window, bar, start_time, start_step) -> None:
        while self.step < self.cfg.max_steps:
            self._rng_at_step, self._step_dirty = _rng_state(), False
            epoch = self.training_step(window)
            self.step += 1
            self.on_step_end(self.step)
            # the step is complete: an interruption from here on keeps it
            self._rng_at_step, self._step_dirty = _rng_state(), False
            if _STOP_REQUESTS:
                raise KeyboardInterrupt(_STOP_REQUESTS.pop())
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.max_steps:
                record = self._log_record(window, epoch, start_time, start_step)
                tracker.log(self.step, record)
                bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}")
                window.clear()
            final_step = self.step == self.cfg.max_steps  # the final evaluation covers it
            if self.cfg.eval_every and self.step % self.cfg.eval_every == 0 and not final_step:
                tracker.log(self.step, {f"eval/{k}": v for k, v in self.evaluate().items()})
                self.model.train()
            if self.cfg.save_every and self.step % self.cfg.save_every == 0:
                self.save_checkpoint()
            bar.update(1)

    def training_step(self, window: dict[str, list[float]]) -> int:
        """One step of the loop; returns the data epoch it drew from. Offline: ``grad_accum``
        micro-batches of ``compute_loss``, then one optimiser step. The online trainer
        overrides it (a rollout, then several optimiser steps on it)."""
        epoch = self._last_epoch
        with attention_implementation([self.model], self.recipe.model.train_attention):
            epoch = self._accumulate(window, epoch)
        grad_norm = self._optimizer_step()
        if grad_norm is not None:
            window["grad_norm"].append(grad_norm)
        return epoch

    def _accumulate(self, window: dict[str, list[float]], epoch: int) -> int:
        """The ``grad_accum`` micro-batches of one step: losses and backward passes."""
        for micro in range(self.cfg.grad_accum):
            epoch, batch = self.micro_batch(self.step * self.cfg.grad_accum + micro)
            if epoch != self._last_epoch:
                if self._last_epoch >= 0:
                    self.on_epoch_end(self._last_epoch)
                self._last_epoch = epoch
            with self.accelerator.accumulate(self.model), self.accelerator.autocast():
                out = self.compute_loss(batch)
                loss = out.loss.mean()
                if not torch.isfinite(loss) and self.cfg.on_nan == "skip":
                    self.summary["skipped_non_finite"] = (
                        self.summary.get("skipped_non_finite", 0) + 1
                    )
                    continue  # no backward: this micro-batch adds nothing to the step
                where = f"micro-batch {micro}"
                if isinstance(batch.get("index"), Tensor):
                    where += f", examples {batch['index'].tolist()}"
                self.check_finite(loss, where)
                self.accelerator.backward(loss)
            # logged values are means over all processes' examples (a no-op on one process)
            window["loss"].append(self._global_mean(loss.detach()))
            for name, value in out.metrics.items():
                window[name].append(self._global_mean(value.float().mean()))
        return epoch

    def check_finite(self, loss: Tensor, where: str) -> None:
        if not torch.isfinite(loss):
            raise TrainingError(
                f"non-finite loss {loss.item()} at step {self.step + 1}, {where}; the last "
                f"checkpoint in {self.run_dir} is intact"
            )

    def _global_mean(self, value: Tensor) -> float:
        if self.accelerator.num_processes == 1:
            return value.item()
        return self.accelerator.reduce(value.reshape(1), reduction="mean").item()

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _optimizer_step(self, schedule: bool = True) -> float | None:
        """Clip (``trainer.max_grad_norm``), step, zero the gradients; advance the learning-rate
        schedule unless ``schedule`` is False (the online trainer advances it once per rollout
        batch, after several optimiser steps). Returns the gradient norm before clipping."""
        grad_norm = None
        if self.cfg.max_grad_norm is not None:
            norm = self.accelerator.clip_grad_norm_(
                self.trainable_parameters(), self.cfg.max_grad_norm
            )
            grad_norm = float(norm) if norm is not None else None
        self.optimizer.step()
        self._step_dirty = True  # the weights have moved within the step in progress
        if schedule:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _log_record(self, window, epoch, start_time, start_step) -> dict[str, float]:
        record = {k: float(np.mean(v)) for k, v in window.items()}
        record.update(self.pending_log)
        self.pending_log.clear()
        elapsed = time.time() - start_time
        record.update(
            step=self.step,
            epoch=epoch + 1,
            lr=float(self.scheduler.get_last_lr()[0]),
            examples_per_s=(self.step - start_step) * self.examples_per_step / max(elapsed, 1e-9),
        )
        return record

    @property
    def examples_per_step(self) -> int:
        """Training examples one step consumes (pairs, demonstrations, or prompts online)."""
        return self.global_batch * self.cfg.grad_accum

    def _finish(self, tracker: tracking.RunTrackers, start_time: float) -> dict[str, Any]:
        self.summary["steps"] = self.step
        self.summary["train"] = tracker.last
        self.summary["runtime_s"] = round(time.time() - start_time, 2)
        final_eval = {**self.evaluate(), **self.final_evaluation()}
        if final_eval:
            self.summary["eval"] = final_eval
            tracker.log(self.step, _flatten({"eval": final_eval}))
        tracker.close()
        self.accelerator.wait_for_everyone()
        model = self.accelerator.unwrap_model(self.model)
        # a sharded model is gathered (every process takes part) for the portable save
        if engines.is_sharded(model):
            self.gathered_weights = engines.full_model_state(model)
        elif self.summary["run"].get("zero_stage") == 3:
            self.gathered_weights = self.accelerator.get_state_dict(self.model)
        if self.is_main:
            self.save_outputs(self.run_dir / "model")
            (self.run_dir / "summary.json").write_text(
                json.dumps(self.summary, indent=2, default=_json)
            )
        return self.summary

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, rng: dict[str, Any] | None = None) -> Path:
        """Write ``checkpoint-<step>`` atomically; ``rng`` replaces the current RNG states (the
        interruption handler passes those from the start of the step in progress).

        One format whatever the engine: ``trainable.safetensors`` (full weights) and
        ``state.pt``, which a single process reads back. A sharded model (FSDP) is gathered for
        it first, or, with ``fsdp_state_dict_type: SHARDED_STATE_DICT``, every process writes
        its shards of weights and optimizer state to ``sharded/`` (torch.distributed
        .checkpoint), which any number of processes, one included, can load."""
        final = self.run_dir / f"{CHECKPOINT_PREFIX}{self.step}"
        self.accelerator.wait_for_everyone()
        if final.exists():
            return final
        model = self.accelerator.unwrap_model(self.model)
        sharded = engines.is_sharded(model)
        layout = "full"
        if sharded and engines.fsdp_state_dict_type() == "SHARDED_STATE_DICT":
            layout = "sharded"
        tmp = self.run_dir / f".tmp-{CHECKPOINT_PREFIX}{self.step}-{self._launch_token()}"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        self.accelerator.wait_for_everyone()
        weights: dict[str, Tensor] = {}
        optimizer_state: dict[str, Any] = {}
        if layout == "sharded":
            engines.save_sharded(tmp / "sharded", model, self.optimizer.optimizer)
        elif self.summary["run"]["engine"] == "deepspeed":  # ZeRO partitions: all-reduced
            weights, optimizer_state = engines.deepspeed_full_state(
                model, self.optimizer.optimizer, self.param_group_names
            )
        elif sharded:  # every process takes part in the gathering; rank 0 receives it
            weights = engines.full_model_state(model)
            optimizer_state = engines.full_optimizer_state(model, self.optimizer.optimizer)
        if not self.is_main:  # every other process's own random streams, beside rank 0's
            rank = self.accelerator.process_index
            torch.save(rng if rng is not None else _rng_state(), tmp / f"rng-{rank}.pt")
        self.accelerator.wait_for_everyone()
        if self.is_main:
            self._write_checkpoint(tmp, model, rng, weights, optimizer_state, layout)
            os.replace(tmp, final)  # atomic on POSIX: the folder appears complete or not at all
            self._prune_checkpoints()
        self.accelerator.wait_for_everyone()
        return final

    def _launch_token(self) -> int:
        """The main process's id, the same on every process of the launch (names the
        temporary checkpoint folder that they all write into)."""
        token = [os.getpid()]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(token)
        return int(token[0])

    def _write_checkpoint(
        self,
        tmp: Path,
        model: nn.Module,
        rng: dict[str, Any] | None,
        weights: dict[str, Tensor],
        optimizer_state: dict[str, Any],
        layout: str,
    ) -> None:
        from safetensors.torch import save_file

        state: dict[str, Any] = {
            "scheduler": self.scheduler.state_dict(),
            "rng": rng if rng is not None else _rng_state(),
            "extra": self.extra_state(),
            "scaler": (
                self.accelerator.scaler.state_dict()
                if self.accelerator.scaler is not None
                else None
            ),
        }
        if layout == "full":
            trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
            if weights:  # gathered from the shards, keyed by name
                trainable = {n: weights[n].contiguous() for n in trainable_names}
                state["optimizer_by_name"] = optimizer_state
            else:
                trainable = {
                    n: p.detach().cpu().contiguous()
                    for n, p in model.named_parameters()
                    if p.requires_grad
                }
                state["optimizer"] = self.optimizer.state_dict()
            save_file(trainable, tmp / "trainable.safetensors")
        torch.save(state, tmp / "state.pt")
        (tmp / "trainer_state.json").write_text(
            json.dumps({"step": self.step, "layout": layout, **self.summary["run"]})
        )

    def _prune_checkpoints(self) -> None:
        ckpts = list_checkpoints(self.run_dir)
        for old in ckpts[: max(0, len(ckpts) - self.cfg.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)

    def _maybe_resume(self) -> None:
        path = self.resume_checkpoint()
        if self.is_main:
            self._remove_unfinished_writes()
        if path is not None:
            self.load_checkpoint(path)
            if self.is_main:
                self._drop_metrics_after(self.step)

    def _remove_unfinished_writes(self) -> None:
        """A run killed (kill -9, power loss) inside `save_checkpoint` leaves its temporary
        folder: never a checkpoint (only the final rename makes one), but as large as one."""
        for tmp in sorted(self.run_dir.glob(f".tmp-{CHECKPOINT_PREFIX}*")):
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"removed {tmp.name}, a checkpoint write that never finished")

    def _drop_metrics_after(self, step: int) -> None:
        """A run killed after its last checkpoint logged steps it will now train again: drop
        those records so that `metrics.jsonl` holds each step once (written atomically)."""
        path = self.run_dir / tracking.METRICS_FILE
        if not path.exists():
            return
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        if len(kept) != len(lines):
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text("".join(f"{line}\n" for line in kept))
            os.replace(tmp, path)

    def resume_checkpoint(self) -> Path | None:
        """The checkpoint `resume` points to (None: start fresh). Raises TrainingError early,
        before anything is written, when it cannot be used."""
        resume = self.recipe.resume
        if resume is None:
            return None
        if resume == "auto":
            ckpts = list_checkpoints(self.run_dir)
            if not ckpts:
                return None  # nothing yet: start from scratch
            path = self._latest_intact(ckpts)
            if path is None:
                raise TrainingError(f"resume: no intact checkpoint in {self.run_dir}")
        else:
            path = Path(resume)
            if path.is_dir() and not (path / "trainer_state.json").exists():
                ckpts = list_checkpoints(path)
                if not ckpts:
                    raise TrainingError(f"resume: no checkpoint found in {path}")
                path = ckpts[-1]
        try:
            step = _step_of(path)
        except (OSError, ValueError, KeyError) as exc:
            raise TrainingError(f"resume: {path} is not a readable checkpoint ({exc})") from exc
        if self.summary["run"]["engine"] == "deepspeed":
            raise TrainingError(
                f"resume: continuing {path} under DeepSpeed is not supported yet; resume it in "
                "one process, or under DDP or FSDP (docs/scaling.md)"
            )
        later = [p for p in list_checkpoints(self.run_dir) if _step_of(p) > step]
        if later:
            raise TrainingError(
                f"resume: {path} is older than {later[-1]} in {self.run_dir}; continuing from it "
                "would mix two trajectories in one folder. Move the later checkpoints away or "
                "resume in another output_dir"
            )
        return path

    def _latest_intact(self, ckpts: list[Path]) -> Path | None:
        """``resume: auto``: the newest checkpoint whose files read back; a damaged newer one
        (a truncated write, a full disk) is renamed ``<name>.corrupt`` with a warning, so that
        it neither blocks the resume nor counts as a later trajectory."""
        for path in reversed(ckpts):
            try:
                _read_checkpoint(path)
                return path
            except TrainingError as exc:
                damaged = path.with_name(path.name + ".corrupt")
                suffix = 1
                while damaged.exists():
                    damaged, suffix = path.with_name(f"{path.name}.corrupt-{suffix}"), suffix + 1
                if self.is_main:
                    print(f"warning: {exc}; set aside as {damaged.name}, trying an older one")
                    os.replace(path, damaged)
        return None

    def load_checkpoint(self, path: Path) -> None:
        """Resume from ``path`` whatever engine wrote it and whatever engine runs now."""
        step, weights, state = _read_checkpoint(path)
        model = self.accelerator.unwrap_model(self.model)
        optimizer = self.optimizer.optimizer  # the torch optimizer inside accelerate's wrapper
        if weights is None:  # sharded/: read (and resharded) by torch.distributed.checkpoint
            engines.load_sharded(path / "sharded", model, optimizer)
        else:
            missing = [
                n for n, p in model.named_parameters() if p.requires_grad and n not in weights
            ]
            if missing:
                raise TrainingError(f"checkpoint {path} lacks parameters: {missing[:5]}")
            by_name = state.get("optimizer_by_name")
            if by_name is None and engines.is_sharded(model):
                by_name = _optimizer_state_by_name(state["optimizer"], model, optimizer)
            if by_name is not None:
                engines.load_full_state(model, optimizer, weights, by_name)
            else:
                params = dict(model.named_parameters())
                with torch.no_grad():
                    for name, value in weights.items():
                        params[name].copy_(value)
                self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(self._process_rng(path, state))
        if state.get("scaler") is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.load_extra_state(state.get("extra", {}))
        self.step = int(step)
        if self.is_main:
            print(f"resumed from {path} at step {self.step}")

    def _process_rng(self, path: Path, state: dict[str, Any]) -> dict[str, Any]:
        """This process's random states: its own file when the checkpoint was written by as
        many processes as run now (``rng-<rank>.pt``; rank 0's are in ``state.pt``), else rank
        0's, on every process (a different process count cannot continue per-rank streams)."""
        rank = self.accelerator.process_index
        own = path / f"rng-{rank}.pt"
        written_by = json.loads((path / "trainer_state.json").read_text()).get("processes", 1)
        if rank == 0 or written_by != self.accelerator.num_processes or not own.exists():
            return state["rng"]
        try:
            return torch.load(own, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged file: name it
            raise TrainingError(f"checkpoint {path}: {own.name} is unreadable ({exc})") from exc


def learning_rate_schedule(optimizer: torch.optim.Optimizer, cfg: Any) -> Any:
    """transformers' schedule for ``trainer.scheduler`` after ``trainer.warmup_steps`` of
    linear warm-up (``get_scheduler``: the factor of step ``s < warmup`` is ``s / warmup``,
    so the first step of a warm-up trains at learning rate 0, as in transformers' Trainer and
    TRL), decaying to 0 at ``trainer.max_steps`` (``linear``, ``cosine``) or staying at 1
    (``constant``)."""
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(cfg.scheduler, cfg.scheduler)
    return get_scheduler(
        name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps
    )


def _optimizer_state_by_name(
    state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """An optimizer state dict keyed by position (``optimizer.state_dict()``) re-keyed by
    parameter name, the form a sharded model loads; positions follow this run's optimizer,
    which is built the same way as the one that saved it."""
    names_of = {p: n for n, p in model.named_parameters()}
    names = [names_of[p] for group in optimizer.param_groups for p in group["params"]]
    return {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[i] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }


def _read_checkpoint(path: Path) -> tuple[int, dict[str, Tensor] | None, dict[str, Any]]:
    """``(step, trainable weights, state)`` of a checkpoint folder (weights None: they are in
    its ``sharded/`` folder), or a TrainingError that names the file that cannot be read."""
    from safetensors.torch import load_file

    sharded = (path / "sharded" / ".metadata").is_file()
    names = ("trainer_state.json", "trainable.safetensors", "state.pt")
    for name in names:
        file = path / name
        if sharded and name == names[1]:
            continue
        if not file.is_file():
            raise TrainingError(f"checkpoint {path}: {name} is missing")
        if file.stat().st_size == 0:
            raise TrainingError(f"checkpoint {path}: {name} is empty (0 bytes; a cut-off write?)")
    current = names[0]
    try:
        step = int(json.loads((path / current).read_text())["step"])
        current = names[1]
        weights = None if sharded else load_file(path / current)
        current = names[2]
        state = torch.load(path / current, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise TrainingError(f"checkpoint {path}: cannot read {current} ({reason})") from exc
    return step, weights, state


def _step_of(path: Path) -> int:
    return int(json.loads((path / "trainer_state.json").read_text())["step"])


def list_checkpoints(run_dir: Path) -> list[Path]:
    found = []
    for path in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = path.name[len(CHECKPOINT_PREFIX) :]
        if suffix.isdigit() and (path / "trainer_state.json").exists():
            found.append((int(suffix), path))
    return [p for _, p in sorted(found)]


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)  # legacy format: the global RandomState is MT19937
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def _json(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


def _progress(total: int, initial: int, enabled: bool, every: int) -> Any:
    """A tqdm bar on a terminal; in a log file (stderr not a terminal, where tqdm would write a
    carriage return at every refresh) a plain line every ``every`` steps and at the last."""
    if enabled and not sys.stderr.isatty():
        return _ProgressLines(total, initial, every)
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        disable=not enabled,
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )


class _ProgressLines:
    """The part of tqdm's interface the loop uses, printing ``train: step 20/300 (7%), 4.10
    step/s, elapsed 5 s, about 1 min 09 s left, loss=0.6761`` lines to stderr."""

    def __init__(self, total: int, initial: int, every: int):
        self.total, self.n, self.every = total, initial, max(1, every)
        self.start, self.start_n = time.time(), initial
        self.postfix = ""

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n % self.every and self.n != self.total:
            return
        elapsed = time.time() - self.start
        rate = (self.n - self.start_n) / max(elapsed, 1e-9)
        left = (self.total - self.n) / rate if rate > 0 else 0.0
        line = (
            f"train: step {self.n}/{self.total} ({self.n / self.total:.0%}), {rate:.2f} step/s, "
            f"elapsed {clock(elapsed)}, about {clock(left)} left"
        )
        print(line + (f", {self.postfix}" if self.postfix else ""), file=sys.stderr, flush=True)

    def close(self) -> None:
        pass
