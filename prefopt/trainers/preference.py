"""Offline pairwise preference optimisation: every loss of kind "pairwise" (the DPO family).

Chosen and rejected completions go through the policy in ONE concatenated forward pass
([2B, T]); the reference likewise (or its log-probs come from the disk cache). A loss that does
not need a reference (SimPO) never triggers a reference forward, and no reference is built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prefopt.data import PackedPairCollator, PreferenceCollator, tokenize_preference
from prefopt.losses.base import LossOutput, PairLogps
from prefopt.models.logps import pair_logps  # noqa: F401  (re-exported: tests and users import it here)
from prefopt.registry import get_loss
from prefopt.trainers.policy import PolicyTrainer, to_device
from prefopt.trainers.smoothing import SoftLabelMixin


def summaries(loss_fn: Any, model: str) -> frozenset[str]:
    """The optional log-prob summaries a loss asks of the `model` ("policy" / "reference")
    forward; none for a loss that names none (a user's own loss, say)."""
    return frozenset(getattr(loss_fn, f"{model}_summaries", frozenset()))


class PreferenceTrainer(SoftLabelMixin, PolicyTrainer):
    data_kind = "preference"

    def build(self) -> None:
        self.loss_fn = get_loss(self.recipe.loss.name).build(self.recipe.loss)
        super().build()
        self.init_soft_labels()

    def _prepare_optimisation(self) -> None:
        super()._prepare_optimisation()
        self.check_soft_label_schedule()

    def make_collator(self) -> PreferenceCollator | PackedPairCollator:
        d = self.recipe.data
        if d.layout == "packed":
            return PackedPairCollator(
                pad_token_id=self.tokenizer.pad_token_id,
                row_length=d.pack_length or 2 * d.max_length,
            )
        return PreferenceCollator(pad_token_id=self.tokenizer.pad_token_id)

    def tokenize(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        d = self.recipe.data
        examples = tokenize_preference(
            records,
            self.tokenizer,
            max_length=d.max_length,
            max_prompt_length=d.max_prompt_length,
            bad_rows=self.bad_rows,
        )
        return examples

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        batch = self._collator(examples)
        batch["position"] = torch.tensor([e["position"] for e in examples])
        if self.ref_cache is not None:
            cached = self.ref_cache[examples[0]["split"]]
            pos = batch["position"]
            batch["ref_chosen"], batch["ref_rejected"] = cached[0][pos], cached[1][pos]
            batch["ref_chosen_tokens"], batch["ref_rejected_tokens"] = (
                cached[2][pos],
                cached[3][pos],
            )
        self.add_soft_labels(batch, examples)
        return batch

    # ---------------------------------------------------------------- IDS (see smoothing.py)

    def pair_deltas(self, batch: dict[str, Tensor]) -> Tensor:
        """The implicit-reward margin (DPO: z = beta (u_c - u_r)) that IDS turns into labels."""
        chosen, rejected = self.loss_fn.implicit_rewards(
            self.policy_logps(batch), self.reference_logps(batch)
        )
        return chosen - rejected

    def on_epoch_end(self, epoch: int) -> None:
        self.pending_log.update(self.maybe_update_soft_labels_on_epoch())

    def on_step_end(self, step: int) -> None:
        self.pending_log.update(self.maybe_update_soft_labels_on_step(step))

    def extra_state(self) -> dict[str, Tensor]:
        return self.soft_label_state()

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        self.load_soft_label_state(state)

    # ---------------------------------------------------------------- reference

    def build_reference(self) -> None:
        super().build_reference()
        self.ref_cache: dict[str, tuple[Tensor, ...]] | None = None
        needs, mode = self.loss_fn.needs_reference, self.reference_mode()
        self.build_loss_reference(needs, mode)
        if mode == "cached" and needs:
            from prefopt.models.ref_cache import cached_reference_logps

            self.ref_cache = {
                split: cached_reference_logps(self, examples, split)
                for split, examples in (
                    ("train", self.train_examples),
                    ("eval", self.eval_examples),
                )
                if examples
            }
            if not (self.world is not None and self.recipe.eval.enabled):
                self.reference = None  # the cache replaces it: no second copy in memory

    @torch.no_grad()
    def reference_logps(self, batch: dict[str, Tensor]) -> PairLogps | None:
        if not self.loss_fn.needs_reference:
            return None
        if "ref_chosen" in batch:
            return PairLogps(
                batch["ref_chosen"],
                batch["ref_rejected"],
                batch["ref_chosen_tokens"],
                batch["ref_rejected_tokens"],
            )
        with self.reference_forward():
            return pair_logps(self.reference_model(), batch, summaries(self.loss_fn, "reference"))

    def policy_logps(self, batch: dict[str, Tensor]) -> PairLogps:
        """The policy's log-probs with the summaries the loss asks for (LD-DPO, WPO)."""
        return pair_logps(self.model, batch, summaries(self.loss_fn, "policy"))

    # ---------------------------------------------------------------- loss

    def compute_loss(self, batch: dict[str, Tensor]) -> LossOutput:
        ref = self.reference_logps(batch)
        return self.loss_fn(self.policy_logps(batch), ref, batch)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out loss and implicit-reward metrics (preference accuracy of the policy)."""
        if not self.eval_examples:
            return {}
        self.model.eval()
        sums: dict[str, float] = {}
        count = 0
        bs = self.cfg.batch_size
        for start in range(0, len(self.eval_examples), bs):
            chunk = self.eval_examples[start : start + bs]
            batch = to_device(self.collate(chunk), self.device)
            out = self.loss_fn(self.policy_logps(batch), self.reference_logps(batch), batch)
            for name, value in {"loss": out.loss, **out.metrics}.items():
                sums[name] = sums.get(name, 0.0) + value.float().sum().item()
            count += len(chunk)
        self.model.train()
        return {name: total / count for name, total in sums.items()}
