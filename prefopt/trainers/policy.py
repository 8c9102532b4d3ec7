"""Shared set-up for trainers of a causal-LM policy (SFT and the DPO family).

Resolves the tokenizer, the data (the synthetic world by default, or any file / hub dataset),
the policy's initial weights, and the reference model; runs the world's gold evaluation at the
end.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from prefopt.config import ConfigError
from prefopt.data import (  # noqa: F401  (re-exported)
    BadRows,
    DataError,
    load_records,
    to_device,
    tokenize_sft,
)
from prefopt.data.loaders import file_builder
from prefopt.data.tokenize import unknown_tokens_problem
from prefopt.models.loading import (
    frozen_copy,
    load_policy,
    load_pretrained,
    load_tokenizer,
    save_model,
)
from prefopt.trainers import engines
from prefopt.trainers.base import Trainer, TrainingError

if TYPE_CHECKING:
    from peft import PeftModel

WORLD = "world"


def unresolved_check(key: str, name: str | None) -> str | None:
    """Trainers are given model folders: a pipeline name (``world:sft``) must have been
    resolved by ``prefopt.pipeline`` (``prefopt.train`` / ``prefopt train`` do it)."""
    if name is not None and name.strip().startswith("world:"):
        raise TrainingError(
            f"{key}: {name!r} is a pipeline name; run the recipe with prefopt.train or "
            "`prefopt train`, which resolve it to the cached model's folder"
        )
    return name


class PolicyTrainer(Trainer):
    """Base for trainers whose model is a causal-LM policy."""

    data_kind = "preference"  # or "sft", "unpaired": the records `load_data` reads

    def build(self) -> None:
        recipe = self.recipe
        self.world = None
        name = recipe.model.name_or_path
        if recipe.data.source == WORLD or name is None or name.startswith("world:"):
            from prefopt.paths import cache_dir
            from prefopt.world import build_world

            self.world = build_world(recipe.world, cache_dir=cache_dir())
        self.init_path = self.resolve_init_path()
        self.tokenizer = self.build_tokenizer()
        self._collator = self.make_collator()
        self.bad_rows = BadRows()
        records, eval_records = self.load_data()
        flipped = 0
        if recipe.data.label_noise and self.data_kind == "preference":
            from prefopt.data.noise import flip_labels  # Coste et al.'s label noise

            records, flipped = flip_labels(records, recipe.data.label_noise, recipe.seed)
        self.check_known_tokens(records, eval_records)
        self.train_examples = self._indexed(self.tokenize(records), "train")
        self.eval_examples = (
            self._indexed(self.tokenize(eval_records), "eval") if eval_records else []
        )
        self.summary["data"] = {
            "train_examples": len(self.train_examples),
            "eval_examples": len(self.eval_examples),
            "bad_rows": self.bad_rows.as_dict(),
            "labels_flipped": flipped,
        }
        if self.bad_rows.noteworthy and self.is_main:
            print(self.bad_rows.report())
        if not self.train_examples:
            raise DataError(
                f"no usable training row in {self.data_description()}: "
                + self.bad_rows.report().replace("\n", ";")
            )
        torch.manual_seed(recipe.seed)
        self.model = self.build_model()
        if self.init_path is None and not self.for_eval and self.is_main:
            # A tiny model built from config has no folder to reload it from: keep its initial
            # weights so that `prefopt eval` can compare against the untrained model later.
            save_model(self.model, self.tokenizer, self.run_dir / "initial_model")
        self.build_reference()

    # ---------------------------------------------------------------- pieces

    def build_model(self) -> nn.Module:
        return load_policy(
            self.recipe.model,
            self.tokenizer,
            self.init_path,
            compute_dtype=self.compute_dtype,
            device=self.device,
        )

    def resolve_init_path(self) -> str | None:
        name = self.recipe.model.name_or_path
        return unresolved_check("model.name_or_path", name)

    def build_tokenizer(self):
        cfg = self.recipe.model
        source = cfg.tokenizer or self.init_path
        if source is not None:
            return load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
        if self.world is None:
            raise TrainingError(
                "model.name_or_path is null (a tiny model from config) but no tokenizer is "
                "known: set model.tokenizer, or use data.source: world"
            )
        return self.world.tokenizer()

    def load_data(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        data = self.recipe.data
        if data.source == WORLD:
            assert self.world is not None
            if self.data_kind == "sft":
                train, held_out = self.world.sft_records("train"), self.world.sft_records("test")
            elif self.data_kind == "unpaired":
                train = self.world.unpaired_records("train")
                held_out = self.world.unpaired_records(data.eval_split or "test")
            else:
                train = self.world.preference_records("train")
                held_out = self.world.preference_records(data.eval_split or "test")
            if data.train_file:
                train, bad = load_records(
                    data.train_file,
                    kind=self.data_kind,
                    format="auto",
                    on_bad_row=data.on_bad_row,
                    tokenizer=self.tokenizer,
                    max_field_chars=data.max_field_chars,
                    allow_empty_prompt=data.allow_empty_prompt,
                )
                self.bad_rows.merge(bad)
            train = train[: data.max_rows] if data.max_rows else train
            held_out = held_out[: data.max_eval_rows] if data.eval_split else []
            return train, held_out
        kwargs = dict(
            kind=self.data_kind,
            format=data.format,
            data_dir=data.data_dir,
            on_bad_row=data.on_bad_row,
            tokenizer=self.tokenizer,
            max_field_chars=data.max_field_chars,
            allow_empty_prompt=data.allow_empty_prompt,
        )
        train, bad = load_records(data.source, split=data.split, max_rows=data.max_rows, **kwargs)
        self.bad_rows.merge(bad)
        held_out = []
        if data.eval_source:
            held_out, bad = load_records(
                data.eval_source, split=held_out_split(data), max_rows=data.max_eval_rows, **kwargs
            )
            self.bad_rows.merge(bad)
        elif data.eval_split and file_builder(data.source) is None:
            try:
                held_out, bad = load_records(
                    data.source, split=data.eval_split, max_rows=data.max_eval_rows, **kwargs
                )
                self.bad_rows.merge(bad)
            except (ValueError, KeyError, FileNotFoundError) as exc:  # DataError included
                if self.is_main:
                    print(f"no held-out split {data.eval_split!r} ({exc}); no held-out metrics")
        elif self.is_main:
            print("data.source is a file: set data.eval_source for held-out metrics")
        return train, held_out

    def data_description(self) -> str:
        data = self.recipe.data
        if data.source == WORLD:
            return f"data.train_file={data.train_file}" if data.train_file else "the world"
        return f"data.source={data.source}"

    def check_known_tokens(self, records: list[dict], eval_records: list[dict]) -> None:
        """Refuse, before any model loads, data the tokenizer cannot read: more than
        ``data.max_unknown_fraction`` of its tokens unknown (``<unk>``)."""
        data, model = self.recipe.data, self.recipe.model
        train_where = f"data.source={data.source}"
        if data.source == WORLD:
            train_where = f"data.train_file={data.train_file}" if data.train_file else "the world"
        eval_where = f"data.eval_source={data.eval_source}" if data.eval_source else train_where
        name = model.tokenizer or self.init_path or "the world's tokenizer"
        problems = [
            unknown_tokens_problem(
                rows, self.tokenizer, data.max_unknown_fraction, where=where, tokenizer_name=name
            )
            for rows, where in ((records, train_where), (eval_records, eval_where))
        ]
        if any(problems):
            raise ConfigError([next(p for p in problems if p)])

    def tokenize(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def tokenize_demonstrations(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Prompt/completion records (demonstrations, unpaired examples) to token ids within
        ``data``'s length limits; dropped rows are counted in ``self.bad_rows``."""
        d = self.recipe.data
        return tokenize_sft(
            records,
            self.tokenizer,
            max_length=d.max_length,
            max_prompt_length=d.max_prompt_length,
            bad_rows=self.bad_rows,
        )

    def make_collator(self) -> Any:
        raise NotImplementedError

    @staticmethod
    def _indexed(examples: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        """Tag examples with their split and position: the key of per-example state (IDS soft
        labels, cached reference log-probs)."""
        for position, example in enumerate(examples):
            example["split"], example["position"] = split, position
        return examples

    def build_reference(self) -> None:
        """Default: a frozen copy of the initial policy kept for the gold evaluation."""
        self.reference: nn.Module | None = None
        self.reference_uses_adapter = False

    def reference_mode(self) -> str:
        """``reference.mode`` with ``auto`` resolved: the adapter-disabled policy is the
        reference when the policy is LoRA and no other reference is named, else a copy."""
        mode = self.recipe.reference.mode
        if mode == "auto":
            lora_base = (
                self.recipe.model.lora is not None and not self.recipe.reference.name_or_path
            )
            return "adapter" if lora_base else "copy"
        return mode

    def build_loss_reference(self, needs: bool, mode: str) -> None:
        """The reference of a loss that ``needs`` one (mode ``adapter``, ``copy`` or
        ``cached``: the weights the cache is computed with), also kept on the world for the
        gold evaluation's KL when the loss needs none."""
        if mode == "adapter":
            if self.recipe.model.lora is None:
                raise TrainingError("reference.mode adapter needs model.lora")
            self.reference_uses_adapter = True
        elif mode in ("copy", "cached") or (mode == "none" and not needs):
            if needs or (self.world is not None and self.recipe.eval.enabled):
                self.reference = self.load_reference_weights()
        if mode == "none" and needs:
            raise TrainingError(
                f"loss {self.recipe.loss.name!r} needs a reference; reference.mode is none"
            )
        self.summary["reference"] = {"mode": mode if needs else "none (reference-free loss)"}

    def reference_forward(self):
        """Context in which `self.reference_model()` computes reference outputs."""
        import contextlib

        if self.reference_uses_adapter:
            return cast("PeftModel", self.unwrapped()).disable_adapter()
        return contextlib.nullcontext()

    def reference_model(self) -> nn.Module:
        if self.reference_uses_adapter:
            return self.unwrapped()
        assert self.reference is not None
        return self.reference

    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def load_reference_weights(self) -> nn.Module:
        """A frozen reference: `reference.name_or_path`, or the policy's initial weights."""
        cfg = self.recipe.reference
        if cfg.name_or_path:
            ref = load_pretrained(
                cfg.name_or_path,
                trust_remote_code=self.recipe.model.trust_remote_code,
                dtype=self.recipe.model.dtype,
            )
            ref.eval().requires_grad_(False)
            return ref.to(self.device)
        if self.recipe.model.lora is not None or self.recipe.model.quantization:
            if self.init_path is None:
                raise TrainingError(
                    "a LoRA policy needs reference.mode adapter or a pretrained base"
                )
            ref = load_pretrained(
                self.init_path,
                quantization=self.recipe.model.quantization,
                trust_remote_code=self.recipe.model.trust_remote_code,
                compute_dtype=self.compute_dtype,
                device=self.device,
                dtype=self.recipe.model.dtype,
            )
            ref.eval().requires_grad_(False)
            # a k-bit model is placed by its device_map; a plain one must follow the policy
            return ref if self.recipe.model.quantization else ref.to(self.device)
        return frozen_copy(self.model).to(self.device)

    # ---------------------------------------------------------------- outputs

    def save_outputs(self, path: Path) -> None:
        save_model(self.unwrapped(), self.tokenizer, path, state_dict=self.gathered_weights)

    def final_evaluation(self) -> dict[str, Any]:
        if self.world is None or not self.recipe.eval.enabled:
            return {}
        from prefopt.eval.gold import gold_evaluation

        chooser = None
        if self.recipe.eval.best_of_n > 1:  # best-of-n: reward.scorer picks among n samples
            from prefopt.rewards.scorers import load_scorer

            reward = self.recipe.reward
            chooser = self.world if reward.scorer == "world" else load_scorer(
                reward.scorer, device=str(self.device), ensemble_mode=reward.ensemble,
                ensemble_coef=reward.ensemble_coef,
            )  # fmt: skip
        # a sharded policy (FSDP, ZeRO-3) holds its full weights while it samples
        with engines.full_weights_for_generation(self.unwrapped()):
            results = gold_evaluation(
                policy=self.unwrapped(),
                reference=self.reference_model(),
                reference_context=self.reference_forward,
                tokenizer=self.tokenizer,
                world=self.world,
                cfg=self.recipe.eval,
                device=self.device,
                seed=self.recipe.seed,
                report_path=self.run_dir / "eval_report.md",
                max_prompt_length=self.recipe.data.max_prompt_length,
                best_of_scorer=chooser,
                progress=self.cfg.progress_bar,
            )
        return results


def held_out_split(data: Any) -> str:
    """The split to read from `data.eval_source`: a file is read whole; a folder or hub
    dataset gives its `data.eval_split` (default "test")."""
    if data.eval_source and file_builder(data.eval_source) is not None:
        return "train"  # the datasets name of a file's only split
    return data.eval_split or "test"
