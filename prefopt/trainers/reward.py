"""Reward-model training with the Bradley-Terry loss (ALGORITHMS.md section 2), optionally with
iterative data smoothing (section 6).

The model is a causal-LM backbone with a scalar head (`AutoModelForSequenceClassification`,
one label); chosen and rejected go through it in one concatenated forward pass. Held-out
metrics: accuracy, mean margin, reward mean / std, expected calibration error of
``sigmoid(r_c - r_r)``; on the synthetic world also the Bayes-optimal accuracy of the same
held-out pairs (the ceiling of any reward model), the model's expected accuracy on them (free of
the noise of the sampled labels) and the out-of-distribution accuracy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from prefopt.eval.calibration import expected_calibration_error
from prefopt.losses.base import LossOutput
from prefopt.models.loading import load_reward_backbone
from prefopt.models.logps import attention_layout
from prefopt.trainers.policy import to_device
from prefopt.trainers.preference import PreferenceTrainer


def pair_rewards(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Chosen and rejected rewards of a pair batch, packed or padded (``data.layout``)."""
    if "last_index" in batch:
        return packed_pair_rewards(model, batch)
    scores = (
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        .logits[:, 0]
        .float()
    )
    b = scores.shape[0] // 2
    return scores[:b], scores[b:]


def score_head(model: nn.Module) -> nn.Module:
    """The scalar head of a sequence-classification model (``score``, as every decoder model in
    transformers names it), through DDP and PEFT wrappers; the shallowest one if several."""
    heads = [
        (name.count("."), module)
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] == "score"
    ]
    if not heads:
        raise ValueError(
            "data.layout packed reads rewards from the model's `score` head, and this model has "
            "none: set data.layout padded"
        )
    return min(heads, key=lambda h: h[0])[1]


def packed_pair_rewards(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Rewards of a packed batch (:class:`prefopt.data.collate.PackedPairCollator`): one
    forward over the shared-prompt segments; the head's per-position scores are read at the
    last token of each chosen and each rejected completion (where the padded layout's pooling
    reads them), captured from the head's output so the forward still goes through the model
    (and any DDP wrapper) as a whole."""
    captured: list[Tensor] = []
    handle = score_head(model).register_forward_hook(
        lambda _module, _inputs, output: captured.append(output)
    )
    try:
        model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=attention_layout(model, batch["attention_mask"]),
            use_cache=False,
        )
    finally:
        handle.remove()
    per_position = captured[-1]
    scores = per_position.reshape(-1, per_position.shape[-1])[batch["last_index"], 0].float()
    b = scores.shape[0] // 2
    return scores[:b], scores[b:]


class RewardTrainer(PreferenceTrainer):
    def build_model(self) -> nn.Module:
        return load_reward_backbone(
            self.recipe.model,
            self.tokenizer,
            self.init_path,
            compute_dtype=self.compute_dtype,
            device=self.device,
        )

    def build_reference(self) -> None:
        self.reference = None
        self.reference_uses_adapter = False
        self.ref_cache = None

    def compute_loss(self, batch: dict[str, Tensor]) -> LossOutput:
        chosen, rejected = pair_rewards(self.model, batch)
        return self.loss_fn(chosen, rejected, batch)

    def pair_deltas(self, batch: dict[str, Tensor]) -> Tensor:
        chosen, rejected = pair_rewards(self.model, batch)
        return chosen - rejected

    @torch.no_grad()
    def held_out_rewards(self, examples: list[dict[str, Any]]) -> tuple[Tensor, Tensor]:
        was_training = self.model.training
        self.model.eval()
        chosen, rejected = [], []
        for start in range(0, len(examples), self.cfg.batch_size):
            batch = to_device(
                self.collate(examples[start : start + self.cfg.batch_size]), self.device
            )
            c, r = pair_rewards(self.model, batch)
            chosen.append(c.cpu())
            rejected.append(r.cpu())
        self.model.train(was_training)
        return torch.cat(chosen), torch.cat(rejected)

    def evaluate(self) -> dict[str, float]:
        if not self.eval_examples:
            return {}
        return reward_metrics(*self.held_out_rewards(self.eval_examples))

    def final_evaluation(self) -> dict[str, Any]:
        if self.world is None or self.recipe.data.source != "world":
            return {}
        test = self.world.preference_records(self.recipe.data.eval_split or "test")
        test = test[: self.recipe.data.max_eval_rows] if self.recipe.data.max_eval_rows else test
        examples = self._indexed(self.tokenize(test), "eval")
        kept = [test[e["index"]] for e in examples]  # the pairs `accuracy` is measured on
        bayes = self.world.bayes_accuracy(kept)
        chosen, rejected = self.held_out_rewards(examples)
        results: dict[str, Any] = {
            "bayes_accuracy": bayes["expected"],
            "label_agreement_with_gold": bayes["empirical_label_agreement"],
            "expected_accuracy": self.world.expected_accuracy(kept, chosen - rejected),
        }
        ood = self.tokenize(self.world.preference_records("ood"))
        ood = self._indexed(ood[: self.recipe.data.max_eval_rows or None], "eval")
        ood_metrics = reward_metrics(*self.held_out_rewards(ood))
        results["ood_accuracy"] = ood_metrics["accuracy"]
        return results


def reward_metrics(chosen: Tensor, rejected: Tensor) -> dict[str, float]:
    margin = chosen - rejected
    both = torch.cat([chosen, rejected])
    probs = torch.sigmoid(margin)
    # held-out Bradley-Terry cross-entropy against the data's labels (chosen preferred): the
    # quantity IDS is about (MLE's rises once once-compared pairs are overfitted)
    nll = torch.nn.functional.softplus(-margin.float())
    return {
        "loss": nll.mean().item(),
        "loss_se": (nll.std() / nll.numel() ** 0.5).item() if nll.numel() > 1 else 0.0,
        # a tie (margin exactly 0) counts as wrong; how many there were is reported beside it
        "accuracy": (margin > 0).float().mean().item(),
        "ties": int((margin == 0).sum()),
        "margin": margin.mean().item(),
        "reward_mean": both.mean().item(),
        "reward_std": both.std().item() if both.numel() > 1 else 0.0,
        "ece": expected_calibration_error(probs, torch.ones_like(probs)),
    }
