"""Supervised fine-tuning on demonstrations (the first stage of every pipeline)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prefopt.data import SFTCollator
from prefopt.losses.base import LossOutput
from prefopt.models.loading import frozen_copy
from prefopt.models.logps import sequence_logps
from prefopt.registry import get_loss
from prefopt.trainers.policy import PolicyTrainer, to_device


class SFTTrainer(PolicyTrainer):
    data_kind = "sft"

    def build(self) -> None:
        super().build()
        self.loss_fn = get_loss(self.recipe.loss.name).build(self.recipe.loss)

    def make_collator(self) -> SFTCollator:
        return SFTCollator(pad_token_id=self.tokenizer.pad_token_id)

    def tokenize(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.tokenize_demonstrations(records)

    def collate(self, examples):
        return self._collator(examples)

    def build_reference(self) -> None:
        # The evaluation's reference for SFT is the initial model (before any training).
        super().build_reference()
        if self.world is not None and self.recipe.eval.enabled:
            if self.recipe.reference.name_or_path:  # `prefopt eval`: the saved initial model
                self.reference = self.load_reference_weights()
            else:
                self.reference = frozen_copy(self.model).to(self.device)

    def compute_loss(self, batch: dict[str, Tensor]) -> LossOutput:
        logps, n_tokens = sequence_logps(
            self.model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        )
        return self.loss_fn(logps, n_tokens, batch)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        if not self.eval_examples:
            return {}
        self.model.eval()
        total_nll, total_tokens, per_example = 0.0, 0.0, 0.0
        bs = self.cfg.batch_size
        for start in range(0, len(self.eval_examples), bs):
            batch = to_device(self._collator(self.eval_examples[start : start + bs]), self.device)
            logps, n = sequence_logps(
                self.model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
            )
            total_nll -= logps.sum().item()
            total_tokens += n.sum().item()
            per_example -= (logps / n.clamp(min=1)).sum().item()
        self.model.train()
        # nll_per_token: mean over examples of each one's per-token NLL (as the training metric);
        # token_nll: every held-out token weighted the same (perplexity = exp(token_nll))
        return {
            "nll_per_token": per_example / len(self.eval_examples),
            "token_nll": total_nll / max(total_tokens, 1.0),
        }
