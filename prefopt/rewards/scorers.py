"""One interface for everything that scores text: ``score(prompts, completions) -> Tensor [N]``.

Later stages (PPO rewards, the MPO split, the ExPO alpha search, evaluation, RETA) take any
`Scorer`: a trained Bradley-Terry reward model, an ensemble, ArmoRM, or the synthetic world's
gold reward. `load_scorer(spec)` builds one from a string:

* ``world`` -- the gold reward of the default world (or pass a `World` object directly);
  `GoldObjectiveScorer` is one of its objectives (``gold:<objective>`` in a recipe);
* a run directory or model folder of a reward model (`AutoModelForSequenceClassification`);
* an ArmoRM folder (holds ``armorm.json``);
* several of those joined by ``,`` -- an ensemble (mean, or mean - k * std with
  ``ensemble_mode="mean_minus_std"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from prefopt.data import SFTCollator
from prefopt.rewards.encoding import encode_pairs
from prefopt.rewards.ensemble import combine_rewards


@runtime_checkable
class Scorer(Protocol):
    def score(self, prompts: list[str], completions: list[str]) -> Tensor: ...


class RewardModelScorer:
    """A sequence-classification reward model (scalar head) and its tokenizer."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        max_length: int = 256,
        max_prompt_length: int = 128,
    ):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size, self.max_length, self.max_prompt_length = (
            batch_size,
            max_length,
            max_prompt_length,
        )
        self.collate = SFTCollator(pad_token_id=tokenizer.pad_token_id)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> RewardModelScorer:
        """A full model folder or a LoRA adapter folder (its base loads through peft). The
        length limits default to those of the run's recipe when `path` is a run directory."""
        from prefopt.models.loading import fuse_activations, load_tokenizer

        run_dir = Path(path)
        folder = _model_folder(run_dir)
        if (folder / "adapter_config.json").exists():
            from prefopt.models.quiet import quiet_bitsandbytes_import

            quiet_bitsandbytes_import()
            from peft import AutoPeftModelForSequenceClassification

            model = AutoPeftModelForSequenceClassification.from_pretrained(folder, num_labels=1)
        else:
            from transformers import AutoModelForSequenceClassification

            model = AutoModelForSequenceClassification.from_pretrained(folder)
        if (run_dir / "recipe.yaml").exists():
            from prefopt.config import load_recipe

            data = load_recipe(run_dir / "recipe.yaml").data
            kwargs.setdefault("max_length", data.max_length)
            kwargs.setdefault("max_prompt_length", data.max_prompt_length)
        return cls(fuse_activations(model), load_tokenizer(str(folder)), **kwargs)

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str]) -> Tensor:
        examples = encode_pairs(
            self.tokenizer, prompts, completions, self.max_length, self.max_prompt_length
        )
        out = []
        for start in range(0, len(examples), self.batch_size):
            batch = self.collate(examples[start : start + self.batch_size])
            logits = self.model(
                input_ids=batch["input_ids"].to(self.device),
                attention_mask=batch["attention_mask"].to(self.device),
            ).logits
            out.append(logits[:, 0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


class EnsembleScorer:
    """k scorers combined per response: mean, or mean - coef * std (uncertainty penalty
    against over-optimisation; Coste et al. 2024, arXiv 2310.02743)."""

    def __init__(self, scorers: list[Scorer], mode: str = "mean", coef: float = 1.0):
        if not scorers:
            raise ValueError("an ensemble needs at least one scorer")
        self.scorers, self.mode, self.coef = scorers, mode, coef

    def score(self, prompts: list[str], completions: list[str]) -> Tensor:
        stacked = torch.stack([s.score(prompts, completions) for s in self.scorers])
        return combine_rewards(stacked, self.mode, self.coef)


class GoldObjectiveScorer:
    """One of the world's five gold objectives (``relevance``, ``length``, ``fluency``,
    ``positivity``, ``safety``) as a reward: its share of the gold reward
    (:meth:`prefopt.world.World.gold_terms`), so that the five together sum to the gold reward.
    Spec ``gold:<objective>``."""

    def __init__(self, world: Any, objective: str):
        from prefopt.world import OBJECTIVE_NAMES

        if objective not in OBJECTIVE_NAMES:
            raise ValueError(
                f"unknown gold objective {objective!r}; use one of {', '.join(OBJECTIVE_NAMES)}"
            )
        self.world, self.index = world, OBJECTIVE_NAMES.index(objective)

    def score(self, prompts: list[str], completions: list[str]) -> Tensor:
        return self.world.gold_terms(prompts, completions)[:, self.index]


class WeightedScorer:
    """Several rewards of one rollout (``reward.components``): ``score_terms`` gives each
    reward's own scores ``[N, M]`` (logged apart, and normalised apart by GDPO), ``score``
    their weighted sum ``[N]``."""

    def __init__(self, scorers: list[Scorer], weights: list[float], names: list[str]):
        if not scorers or not len(scorers) == len(weights) == len(names):
            raise ValueError("a weighted scorer needs as many weights and names as scorers")
        self.scorers, self.names = scorers, names
        self.weights = torch.tensor(weights, dtype=torch.float32)

    def score_terms(self, prompts: list[str], completions: list[str]) -> Tensor:
        columns = [
            torch.as_tensor(s.score(prompts, completions), dtype=torch.float32).reshape(-1).cpu()
            for s in self.scorers
        ]
        return torch.stack(columns, dim=1)

    def score(self, prompts: list[str], completions: list[str]) -> Tensor:
        return self.score_terms(prompts, completions) @ self.weights


def _model_folder(path: Path) -> Path:
    """Accept a run directory (use its `model/`) or a model folder."""
    model = path / "model"
    markers = ("config.json", "armorm.json", "adapter_config.json")
    return model if any((model / m).exists() for m in markers) else path


def load_scorer(
    spec: str | Any, *, ensemble_mode: str = "mean", ensemble_coef: float = 1.0, device: str = "cpu"
) -> Scorer:
    if not isinstance(spec, str):
        if isinstance(spec, Scorer):
            return spec
        raise TypeError(f"cannot make a scorer from {type(spec).__name__}")
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) > 1:
        return EnsembleScorer(
            [load_scorer(p, device=device) for p in parts], ensemble_mode, ensemble_coef
        )
    if spec == "world":
        from prefopt.paths import cache_dir
        from prefopt.world import WorldConfig, build_world

        return build_world(WorldConfig(), cache_dir=cache_dir())
    folder = _model_folder(Path(spec))
    if (folder / "armorm.json").exists():
        from prefopt.rewards.armorm_model import ArmoRMScorer

        return ArmoRMScorer.from_pretrained(folder, device=device)
    if (folder / "config.json").exists() or (folder / "adapter_config.json").exists():
        return RewardModelScorer.from_pretrained(spec, device=device)
    raise FileNotFoundError(f"{spec}: not 'world', a reward-model folder or a run directory")
