"""Offline training on unpaired feedback: every loss of kind "unpaired" (KTO, BCO).

An example is a prompt, one completion and a flag, desirable or not. Its records come from
``data.unpaired``: ``rows`` reads the source's unpaired rows (on the world, behaviour responses
labelled by the gold reward: ``World.unpaired_records``), ``pairs`` splits each preference pair
of the source into a desirable and an undesirable example. Batches are right-padded rows (the
packed layout, ``data.layout``, is for pairs). For KTO the collator adds the micro-batch's
mismatched pairs (prompt i with completion i-1), whose log-probs are computed without a graph.

The reference is a frozen copy of the initial policy or, with LoRA, the adapter-disabled
policy (``reference.mode`` auto, copy or adapter; ``cached`` is for pairs and refused by the
recipe check). A loss's state across steps (BCO's running reward shift) goes into every
checkpoint, so a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prefopt.data import UnpairedCollator, pairs_to_unpaired
from prefopt.data.loaders import records_kind
from prefopt.losses.base import LossOutput
from prefopt.losses.unpaired import BatchMean, UnpairedLogps
from prefopt.models.logps import unpaired_logps
from prefopt.registry import get_loss
from prefopt.trainers.policy import PolicyTrainer, to_device

STATE_PREFIX = "loss/"  # the loss's state in the checkpoint's extra state


class UnpairedTrainer(PolicyTrainer):
    def build(self) -> None:
        self.loss_fn = get_loss(self.recipe.loss.name).build(self.recipe.loss)
        self.data_kind = records_kind("unpaired", self.recipe.data.unpaired)
        super().build()

    def load_data(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        train, held_out = super().load_data()
        if self.data_kind == "preference":  # data.unpaired: pairs
            return pairs_to_unpaired(train), pairs_to_unpaired(held_out)
        return train, held_out

    def make_collator(self) -> UnpairedCollator:
        return UnpairedCollator(
            pad_token_id=self.tokenizer.pad_token_id,
            max_length=self.recipe.data.max_length,
            mismatched=self.loss_fn.needs_mismatched,
        )

    def tokenize(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.tokenize_demonstrations(records)

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        return self._collator(examples)

    def build_reference(self) -> None:
        super().build_reference()
        self.build_loss_reference(self.loss_fn.needs_reference, self.reference_mode())

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, Tensor]) -> UnpairedLogps | None:
        if not self.loss_fn.needs_reference:
            return None
        with self.reference_forward():
            return unpaired_logps(self.reference_model(), batch)

    # ---------------------------------------------------------------- loss

    def compute_loss(self, batch: dict[str, Tensor]) -> LossOutput:
        ref = self.reference_logps(batch)
        policy = unpaired_logps(self.model, batch)
        return self.loss_fn(policy, ref, batch["desirable"], batch_mean=self.process_mean())

    def process_mean(self) -> BatchMean | None:
        """A scalar's mean over the data-parallel processes (TRL's gather), or None alone."""
        if self.accelerator.num_processes == 1:
            return None
        return lambda x: self.accelerator.reduce(x.reshape(1), reduction="mean").reshape(())

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out loss and metrics, the loss called once on the whole held-out set (KTO's
        ``z0`` from all its mismatched pairs; BCO's ``delta`` as training left it)."""
        if not self.eval_examples:
            return {}
        self.model.eval()
        policy, ref, desirable = [], [], []
        bs = self.cfg.batch_size
        for start in range(0, len(self.eval_examples), bs):
            batch = to_device(self.collate(self.eval_examples[start : start + bs]), self.device)
            policy.append(unpaired_logps(self.model, batch))
            ref.append(self.reference_logps(batch))
            desirable.append(batch["desirable"])
        self.model.train()
        refs = [r for r in ref if r is not None]
        out = self.loss_fn(
            UnpairedLogps.cat(policy),
            UnpairedLogps.cat(refs) if refs else None,
            torch.cat(desirable),
            training=False,
        )
        metrics = {"loss": out.loss, **out.metrics}
        return {name: value.float().mean().item() for name, value in metrics.items()}

    # ---------------------------------------------------------------- state across steps

    def extra_state(self) -> dict[str, Tensor]:
        return {STATE_PREFIX + k: v for k, v in self.loss_fn.state_dict().items()}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        n = len(STATE_PREFIX)
        self.loss_fn.load_state_dict(
            {k[n:]: v for k, v in state.items() if k.startswith(STATE_PREFIX)}
        )
