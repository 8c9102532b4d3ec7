"""Iterative data smoothing as a trainer mixin, shared by reward models and the DPO family.

The soft labels are per-example state: they live in a `SoftLabelStore` indexed by the example's
position in the training set, enter every batch as ``soft_labels``, are updated over the whole
training set from the current model (Zhu, Jordan & Jiao 2024, arXiv 2401.16335, Algorithm 1)
when each epoch ends or, with ``smoothing.update_every: N``, every N optimiser steps, and travel
in checkpoints so that a resumed run continues with the same labels. A run whose schedule
allows no update is refused before training (it would be plain MLE).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prefopt.rewards.ids import SoftLabelStore


class SoftLabelMixin:
    """Needs: `recipe`, `train_examples`, `collate_plain(examples)`, `pair_deltas(batch)`."""

    soft_labels: SoftLabelStore | None = None

    def init_soft_labels(self) -> None:
        if self.recipe.smoothing.method == "ids":  # type: ignore[attr-defined]
            self.soft_labels = SoftLabelStore.all_first_preferred(len(self.train_examples))  # type: ignore[attr-defined]

    def soft_label_updates(self) -> int:
        """How many label updates this run's schedule makes (before the last step)."""
        every = self.recipe.smoothing.update_every  # type: ignore[attr-defined]
        steps = self.cfg.max_steps  # type: ignore[attr-defined]
        if every > 0:
            return (steps - 1) // every  # an update after the last step would train nothing
        micro_batches = steps * self.cfg.grad_accum  # type: ignore[attr-defined]
        return (micro_batches - 1) // self.batches_per_epoch  # type: ignore[attr-defined]

    def check_soft_label_schedule(self) -> None:
        """Refuse a run in which no label update can happen (called once the number of steps
        per epoch is known, before the first step)."""
        from prefopt.trainers.base import TrainingError

        if self.soft_labels is not None and self.soft_label_updates() == 0:
            every = self.recipe.smoothing.update_every  # type: ignore[attr-defined]
            when = f"every {every} steps" if every else "when an epoch ends"
            raise TrainingError(
                f"smoothing.method=ids, but its labels move only {when} and this run of "
                f"{self.cfg.max_steps} steps ({self.batches_per_epoch} micro-batches per epoch, "  # type: ignore[attr-defined]
                f"{self.cfg.grad_accum} per step) "  # type: ignore[attr-defined]
                "makes no update: it would be plain MLE. Set smoothing.update_every to a "
                "number of steps smaller than trainer.max_steps, or train for more than "
                "one epoch"
            )

    def maybe_update_soft_labels_on_step(self, step: int) -> dict[str, float]:
        every = self.recipe.smoothing.update_every  # type: ignore[attr-defined]
        if self.soft_labels is None or every == 0 or step % every or step >= self.cfg.max_steps:  # type: ignore[attr-defined]
            return {}
        return self.update_soft_labels()

    def maybe_update_soft_labels_on_epoch(self) -> dict[str, float]:
        if self.soft_labels is None or self.recipe.smoothing.update_every:  # type: ignore[attr-defined]
            return {}
        return self.update_soft_labels()

    def add_soft_labels(self, batch: dict[str, Tensor], examples: list[dict[str, Any]]) -> None:
        if self.soft_labels is not None and examples[0]["split"] == "train":
            batch["soft_labels"] = self.soft_labels.get(batch["position"])

    @torch.no_grad()
    def update_soft_labels(self) -> dict[str, float]:
        """One IDS label update over the whole training set with the current model."""
        assert self.soft_labels is not None
        model = self.model  # type: ignore[attr-defined]
        was_training = model.training
        model.eval()
        bs = self.cfg.batch_size  # type: ignore[attr-defined]
        examples = self.train_examples  # type: ignore[attr-defined]
        for start in range(0, len(examples), bs):
            chunk = examples[start : start + bs]
            batch = self.collate(chunk)  # type: ignore[attr-defined]
            batch = {
                k: v.to(self.device) if isinstance(v, Tensor) else v  # type: ignore[attr-defined]
                for k, v in batch.items()
            }
            self.soft_labels.update(
                batch["position"],
                self.pair_deltas(batch).float(),
                self.recipe.smoothing.beta,  # type: ignore[attr-defined]
            )
        model.train(was_training)
        labels = self.soft_labels.labels
        return {"ids/label_mean": labels.mean().item(), "ids/label_min": labels.min().item()}

    def pair_deltas(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def soft_label_state(self) -> dict[str, Tensor]:
        return {} if self.soft_labels is None else {"ids_labels": self.soft_labels.labels.clone()}

    def load_soft_label_state(self, state: dict[str, Tensor]) -> None:
        if self.soft_labels is not None:
            if "ids_labels" not in state:
                raise ValueError("checkpoint has no IDS soft labels but smoothing.method is ids")
            self.soft_labels.load_state_dict({"labels": state["ids_labels"]})
