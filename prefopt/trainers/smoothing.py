"""Iterative data smoothing as a trainer mixin, shared by reward models and the DPO family.

The soft labels are per-example state: they live in a `SoftLabelStore` indexed by the example's
position in the training set, enter every batch as ``soft_labels``, are updated once per epoch
from the current model (Zhu, Jordan & Jiao 2024, arXiv 2401.16335, Algorithm 1), and travel in
checkpoints so that a resumed run continues with the same labels.
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
