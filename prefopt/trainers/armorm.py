"""ArmoRM training (Wang et al. 2024, arXiv 2406.12845; ALGORITHMS.md section 8).

Stage 1: features of every training response from the frozen backbone; one ridge regression per
objective (no intercept, alpha picked on a validation split) onto the objective ratings -- or,
with ``loss.regression: mlp`` (a deviation), an MLP probe with one output per objective; the
verbosity decorrelation lambdas on the training responses. Stage 2: the gating network on
prompt features, trained with the Bradley-Terry loss on pairs through the common trainer loop
(checkpoints, logging, resume all apply); backbone and regression frozen. Checkpoints carry
stage 1, so a resumed run trains its gate against the objectives it started with.

Ratings: on the synthetic world, its per-objective scores of each response as a judge rates them
(``loss.world_ratings: judged``, the default: relevance, length, fluency and positivity of a
degenerate text discounted by its informativeness, see ``prefopt.world.objectives``; ``raw``:
the objectives themselves, which cannot express that discount) plus a verbosity column
(words / max words) used for decorrelation; on other data, each record's ``scores`` field
``{"chosen": {objective: value | null}, "rejected": {...}}`` (nulls are masked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from prefopt.losses.base import LossOutput
from prefopt.losses.reward import BradleyTerryConfig, BradleyTerryLoss
from prefopt.models.loading import load_backbone
from prefopt.rewards.armorm import (
    ArmoRMHead,
    fit_multi_objective_ridge,
    fit_objective_mlp,
    verbosity_decorrelation,
)
from prefopt.rewards.armorm_model import ArmoRMScorer, FeatureExtractor, settings_of
from prefopt.trainers.base import TrainingError
from prefopt.trainers.policy import PolicyTrainer
from prefopt.trainers.reward import reward_metrics
from prefopt.world.objectives import judged_objectives


class ArmoRMTrainer(PolicyTrainer):
    data_kind = "preference"

    def build(self) -> None:
        super().build()  # world, tokenizer, raw records (kept by load_data), backbone
        cfg = self.recipe.loss
        self.extractor = FeatureExtractor(
            self.backbone,
            self.tokenizer,
            cfg.pooling,
            self.device,
            cfg.max_length,
            cfg.max_prompt_length,
        )
        self.objective_names, ratings, mask = self.ratings(self.train_records)
        feats = self.pair_features(self.train_records)
        responses = torch.cat([feats["chosen"], feats["rejected"]])
        stage1: dict[str, Any] = {"objectives": self.objective_names, "regression": cfg.regression}
        weights, probe = None, None
        if cfg.regression == "mlp":
            probe, val_r2 = fit_objective_mlp(
                responses.to(self.device),
                ratings,
                mask,
                list(cfg.regression_hidden),
                cfg.regression_epochs,
                cfg.regression_lr,
                cfg.regression_weight_decay,
                cfg.regression_batch_size,
                cfg.val_fraction,
                self.recipe.seed,
            )
            probe = probe.cpu()
            stage1["val_r2"] = dict(zip(self.objective_names, val_r2, strict=True))
            with torch.no_grad():
                raw = probe(responses)
        else:
            weights, alphas = fit_multi_objective_ridge(
                responses, ratings, mask, list(cfg.ridge_alphas), cfg.val_fraction, self.recipe.seed
            )
            weights = weights.float()
            stage1["ridge_alpha"] = dict(zip(self.objective_names, alphas, strict=True))
            raw = responses @ weights
        verbosity = (
            self.objective_names.index(cfg.verbosity_objective)
            if cfg.verbosity_objective in self.objective_names
            else None
        )
        lambdas = None
        if verbosity is not None:
            lambdas = verbosity_decorrelation(
                raw,
                verbosity,
                threshold=cfg.decorrelation_threshold,
                verbosity_penalty=cfg.verbosity_penalty,
            )
        torch.manual_seed(self.recipe.seed)
        self.model = ArmoRMHead(
            weights,
            lambdas,
            verbosity,
            prompt_dim=feats["prompt"].shape[1],
            hidden_sizes=list(cfg.gate_hidden),
            dropout=cfg.gate_dropout,
            temperature=cfg.temperature,
            beta_init=cfg.beta_init,
            regression=probe,
        )
        stage1["r2"] = self.r_squared(raw, ratings, mask)
        stage1["verbosity_lambdas"] = None if lambdas is None else lambdas.tolist()
        self.summary["stage1"] = stage1
        if cfg.fit_beta_init:
            with torch.no_grad():
                self.model.gating.beta.fill_(self.fit_scale(feats))
            self.summary["stage1"]["beta_init"] = self.model.gating.beta.item()
        self.train_examples = self.feature_examples(feats, "train")
        self.eval_examples = (
            self.feature_examples(self.pair_features(self.eval_records), "eval")
            if self.eval_records
            else []
        )
        self.bt = BradleyTerryLoss(BradleyTerryConfig())

    @torch.no_grad()
    def fit_scale(self, feats: dict[str, Tensor]) -> float:
        """Maximum-likelihood beta for the uniformly gated score: argmin over a log grid of the
        mean BT loss of ``beta * mean_k(r'_c - r'_r)`` on the training pairs."""
        head = cast(ArmoRMHead, self.model)
        gap = (head.objectives(feats["chosen"]) - head.objectives(feats["rejected"])).mean(-1)
        grid = torch.logspace(-2, 3, 501)
        losses = torch.nn.functional.softplus(-grid[:, None] * gap[None, :].float()).mean(-1)
        return float(grid[losses.argmin()])

    def extra_state(self) -> dict[str, Tensor]:
        """Stage 1's frozen results (regression, lambdas): a resumed run trains its gate against
        exactly the objectives it started with, even where a refit would differ (e.g. an MLP
        probe refitted with non-deterministic GPU kernels)."""
        head = self.unwrapped()
        state = {
            f"stage1.{k}": v.detach().cpu()
            for k, v in head.state_dict().items()
            if not k.startswith("gating.")
        }
        # what summary.json says of that stage 1, which a resumed run cannot recompute
        report = self.summary["stage1"]
        if "val_r2" in report:
            state["stage1_report.val_r2"] = torch.tensor(list(report["val_r2"].values()))
        if "beta_init" in report:
            state["stage1_report.beta_init"] = torch.tensor(report["beta_init"])
        return state

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        frozen = {k.removeprefix("stage1."): v for k, v in state.items() if k.startswith("stage1.")}
        head = self.unwrapped()
        if not frozen:
            # a checkpoint from before stage 1 travelled with it: only the closed-form ridge
            # refits to exactly what its gate was trained against
            if self.recipe.loss.regression != "ridge":
                raise TrainingError(
                    "this checkpoint holds no ArmoRM stage 1 (it predates that); it can only "
                    "be resumed with loss.regression=ridge"
                )
            return
        expected = {k: v.shape for k, v in head.state_dict().items() if not k.startswith("gating.")}
        got = {k: v.shape for k, v in frozen.items()}
        if got != expected:
            differ = sorted(set(got) ^ set(expected)) or sorted(
                k for k in got if got[k] != expected[k]
            )
            raise TrainingError(
                "the checkpoint's ArmoRM stage 1 does not fit this recipe's (loss.regression, "
                f"loss.regression_hidden or the backbone changed?): differs at {differ[:4]}"
            )
        head.load_state_dict(frozen, strict=False)
        self.describe_restored_stage1(
            {k.removeprefix("stage1_report."): v for k, v in state.items() if "_report." in k}
        )

    def describe_restored_stage1(self, report: dict[str, Tensor]) -> None:
        """Make `summary["stage1"]` describe the restored stage 1, not the refit it replaced."""
        head = self.unwrapped()
        stage1 = self.summary["stage1"]
        responses = torch.cat(
            [
                torch.stack([e["chosen"] for e in self.train_examples]),
                torch.stack([e["rejected"] for e in self.train_examples]),
            ]
        )
        _, ratings, mask = self.ratings(self.train_records)
        with torch.no_grad():
            raw = head.raw_objectives(responses.to(head.lambdas.device)).cpu()
        stage1["r2"] = self.r_squared(raw, ratings, mask)
        stage1["verbosity_lambdas"] = head.lambdas.tolist()
        stage1.pop("val_r2", None)
        stage1.pop("beta_init", None)
        if "val_r2" in report:
            values = report["val_r2"].tolist()
            stage1["val_r2"] = dict(zip(self.objective_names, values, strict=True))
        if "beta_init" in report:
            stage1["beta_init"] = float(report["beta_init"])
        stage1["restored_from_checkpoint"] = True

    # ---------------------------------------------------------------- data

    def build_model(self):
        """The frozen backbone; the trainable model is the ArmoRM head. Any checkpoint with a
        transformer body works: a causal LM or, as in the paper, a Bradley-Terry reward model
        (its head is dropped; the features are the body's final hidden states)."""
        if self.init_path is None:
            raise TrainingError("ArmoRM needs a pretrained backbone: set model.name_or_path")
        self.backbone = load_backbone(
            self.init_path,
            trust_remote_code=self.recipe.model.trust_remote_code,
            dtype=self.recipe.model.dtype,
        )
        return self.backbone

    def tokenize(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return records  # features are computed from the text in build()

    def make_collator(self) -> None:
        return None

    def load_data(self):
        train, held_out = super().load_data()
        self.train_records, self.eval_records = train, held_out
        return train, held_out

    def ratings(self, records: list[dict[str, Any]]) -> tuple[list[str], Tensor, Tensor]:
        """[2N, K] targets (chosen rows, then rejected rows) and their mask."""
        if self.world is not None and self.recipe.data.source == "world":
            names = [*self.world.objective_names, "verbosity"]
            max_words = self.recipe.world.max_response_words

            judged = self.recipe.loss.world_ratings == "judged"

            def row(record: dict[str, Any], side: str) -> list[float]:
                words = len(record[side].split()) / max_words
                meta = record["metadata"]
                objectives = meta[f"objectives_{side}"]
                if judged:
                    objectives = judged_objectives(objectives, meta[f"informativeness_{side}"])
                return [*objectives, words]

            values = [row(r, "chosen") for r in records] + [row(r, "rejected") for r in records]
            t = torch.tensor(values, dtype=torch.float64)
            return names, t, torch.ones_like(t, dtype=torch.bool)
        scored = [r for r in records if isinstance(r.get("scores"), dict)]
        if len(scored) != len(records):
            raise TrainingError(
                "ArmoRM needs per-objective ratings: every record's `scores` field "
                "must be {'chosen': {objective: value}, 'rejected': {...}}"
            )
        names = sorted(
            {k for r in records for side in ("chosen", "rejected") for k in r["scores"][side]}
        )
        cells = [
            [r["scores"][side].get(n) for n in names]
            for side in ("chosen", "rejected")
            for r in records
        ]
        mask = torch.tensor([[v is not None for v in row] for row in cells])
        t = torch.tensor(
            [[0.0 if v is None else float(v) for v in row] for row in cells], dtype=torch.float64
        )
        return names, t, mask

    def pair_features(self, records: list[dict[str, Any]]) -> dict[str, Tensor]:
        prompts = [r["prompt"] for r in records]
        return {
            "prompt": self.extractor.prompts(prompts),
            "chosen": self.extractor.responses(prompts, [r["chosen"] for r in records]),
            "rejected": self.extractor.responses(prompts, [r["rejected"] for r in records]),
        }

    @staticmethod
    def feature_examples(feats: dict[str, Tensor], split: str) -> list[dict[str, Any]]:
        return [
            {
                "prompt": feats["prompt"][i],
                "chosen": feats["chosen"][i],
                "rejected": feats["rejected"][i],
                "split": split,
                "position": i,
            }
            for i in range(feats["prompt"].shape[0])
        ]

    @staticmethod
    def r_squared(pred: Tensor, y: Tensor, mask: Tensor) -> list[float]:
        """In-sample R^2 per objective of stage-1 predictions ``[N, K]`` (rated rows only)."""
        pred = pred.double()
        out = []
        for k in range(y.shape[1]):
            m = mask[:, k]
            resid = ((y[m, k] - pred[m, k]) ** 2).sum()
            total = ((y[m, k] - y[m, k].mean()) ** 2).sum().clamp(min=1e-12)
            out.append(float(1 - resid / total))
        return out

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Tensor]:
        return {
            key: torch.stack([e[key] for e in examples]) for key in ("prompt", "chosen", "rejected")
        }

    # ---------------------------------------------------------------- loss and metrics

    def compute_loss(self, batch: dict[str, Tensor]) -> LossOutput:
        chosen = self.model(batch["chosen"], batch["prompt"])["score"]
        rejected = self.model(batch["rejected"], batch["prompt"])["score"]
        return self.bt(chosen, rejected)

    @torch.no_grad()
    def scores_of(self, examples: list[dict[str, Any]]) -> tuple[Tensor, Tensor]:
        head = self.unwrapped()
        was_training = head.training
        head.eval()
        batch = {k: v.to(self.device) for k, v in self.collate(examples).items()}
        chosen = head(batch["chosen"], batch["prompt"])["score"].cpu()
        rejected = head(batch["rejected"], batch["prompt"])["score"].cpu()
        head.train(was_training)
        return chosen, rejected

    def evaluate(self) -> dict[str, float]:
        return reward_metrics(*self.scores_of(self.eval_examples)) if self.eval_examples else {}

    def final_evaluation(self) -> dict[str, Any]:
        if self.world is None or self.recipe.data.source != "world":
            return {}
        test = self.eval_records
        results: dict[str, Any] = {"bayes_accuracy": self.world.bayes_accuracy(test)["expected"]}
        chosen, rejected = self.scores_of(self.eval_examples)
        results["expected_accuracy"] = self.world.expected_accuracy(test, chosen - rejected)
        ood = self.world.preference_records("ood")[: self.recipe.data.max_eval_rows or None]
        ood_examples = self.feature_examples(self.pair_features(ood), "eval")
        results["ood_accuracy"] = reward_metrics(*self.scores_of(ood_examples))["accuracy"]
        results["gate_by_instruction"] = self.gate_by_instruction(test)
        results["beta"] = self.unwrapped().gating.beta.detach().item()
        return results

    @torch.no_grad()
    def gate_by_instruction(self, records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        """Mean gate weight per objective for each instruction type: what the gate learned."""
        head = self.unwrapped().eval()
        prompts = [r["prompt"] for r in records]
        gate = head.gating(self.extractor.prompts(prompts).to(self.device)).cpu()
        table: dict[str, dict[str, float]] = {}
        for instruction in sorted({r["metadata"]["instruction"] for r in records}):
            rows = [i for i, r in enumerate(records) if r["metadata"]["instruction"] == instruction]
            mean = gate[rows].mean(0)
            table[instruction] = {
                n: round(float(v), 4) for n, v in zip(self.objective_names, mean, strict=True)
            }
        return table

    def unwrapped(self) -> ArmoRMHead:
        return cast(ArmoRMHead, super().unwrapped())

    def scorer(self) -> ArmoRMScorer:
        return ArmoRMScorer(self.extractor, self.unwrapped(), self.objective_names)

    def save_outputs(self, path: Path) -> None:
        settings = settings_of(self.recipe.loss, int(self.train_examples[0]["prompt"].shape[0]))
        self.scorer().save_pretrained(path, settings)


__all__ = ["ArmoRMTrainer"]
