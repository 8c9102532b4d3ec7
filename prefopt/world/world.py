"""The :class:`World` object: gold reward oracle, datasets, tokenizer and on-disk cache.

A world is a pure function of its :class:`~prefopt.world.config.WorldConfig`. Datasets are
generated lazily (each from its own RNG stream) and memoised; ``build_world(cfg, cache_dir)``
additionally materialises everything into ``cache_dir/world-<config hash>/`` (written to a
temporary folder and renamed, so concurrent builders never see half-written folders) and
reloads from there when the folder already exists.

The gold reward is the ground truth for every evaluation in prefopt: trainers and evaluators
call :meth:`World.score` (the library-wide ``Scorer`` interface) on generated text.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerFast

from prefopt.world import data
from prefopt.world.behaviour import behaviour_response, oracle_response, random_text
from prefopt.world.config import (
    WORLD_FORMAT_VERSION,
    WorldConfig,
    coerce_config,
    config_dict,
    config_hash,
)
from prefopt.world.io import read_jsonl, write_jsonl
from prefopt.world.language import (
    INSTRUCTION_NAMES,
    INSTRUCTIONS,
    OBJECTIVE_NAMES,
    Language,
    PromptInfo,
)
from prefopt.world.objectives import (
    completion_words,
    informativeness,
    objective_vector,
    score_completion,
    weight_matrix,
    weight_row,
)
from prefopt.world.rng import make_rng
from prefopt.world.tokenizer import build_tokenizer

SFT_SPLITS = ("train", "test")
EVAL_SPLITS = ("test", "ood")
WORLD_JSON = "world.json"
TOKENIZER_DIR = "tokenizer"
ORACLE_QUALITY = "exp(gold)"


class World:
    """Synthetic preference world with a known gold reward (see ``docs/world.md``)."""

    def __init__(self, config: WorldConfig | Any | None = None, folder: str | None = None):
        self.config: WorldConfig = coerce_config(config if config is not None else WorldConfig())
        self.language = Language.generate(self.config)
        self.objective_names: list[str] = list(OBJECTIVE_NAMES)
        self.instruction_types: list[str] = list(INSTRUCTION_NAMES)
        self.folder: Path | None = Path(folder) if folder is not None else None
        self._tokenizer: PreTrainedTokenizerFast | None = None
        self._cache: dict[str, Any] = {}

    # ------------------------------------------------------------------ tokenizer
    def tokenizer(self) -> PreTrainedTokenizerFast:
        """The word-level tokenizer (built once; loaded from the cache folder if present)."""
        if self._tokenizer is None:
            tok_dir = self.folder / TOKENIZER_DIR if self.folder is not None else None
            if tok_dir is not None and tok_dir.is_dir():
                self._tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
            else:
                self._tokenizer = build_tokenizer(self.language)
        return self._tokenizer

    def save_tokenizer(self, path: str | os.PathLike[str]) -> None:
        self.tokenizer().save_pretrained(str(path))

    @property
    def vocab_size(self) -> int:
        """Number of tokens (special tokens + delimiter + words)."""
        return len(self.language.vocabulary())

    # ------------------------------------------------------------------ gold reward
    def parse_prompts(self, prompts: list[str]) -> list[PromptInfo]:
        return [self.language.parse_prompt(p) for p in prompts]

    def _objectives(self, prompts: list[str], completions: list[Any]) -> np.ndarray:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        rows = [
            objective_vector(self.language, info, c)
            for info, c in zip(self.parse_prompts(prompts), completions, strict=True)
        ]
        return np.array(rows, dtype=np.float64).reshape(len(rows), len(OBJECTIVE_NAMES))

    def _weights(self, prompts: list[str]) -> np.ndarray:
        rows = [
            weight_row(self.config.reward_scale, i.instruction) for i in self.parse_prompts(prompts)
        ]
        return np.array(rows, dtype=np.float64).reshape(len(rows), len(OBJECTIVE_NAMES))

    def objective_scores(self, prompts: list[str], completions: list[Any]) -> torch.Tensor:
        """``[N, K]`` objective values, columns in ``objective_names`` order."""
        return torch.from_numpy(self._objectives(prompts, completions)).float()

    def objective_weights(self, prompts: list[str]) -> torch.Tensor:
        """``[N, K]`` instruction-dependent weights (already multiplied by ``reward_scale``)."""
        return torch.from_numpy(self._weights(prompts)).float()

    def _rho(self, prompts: list[str], completions: list[Any]) -> np.ndarray:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if not self.config.informativeness:
            return np.ones(len(prompts), dtype=np.float64)
        return np.array(
            [
                informativeness(self.language, completion_words(c), info.words)
                for info, c in zip(self.parse_prompts(prompts), completions, strict=True)
            ],
            dtype=np.float64,
        )

    def _gold_terms(self, prompts: list[str], completions: list[Any]) -> np.ndarray:
        contributions = self._objectives(prompts, completions) * self._weights(prompts)
        rho = self._rho(prompts, completions)[:, None]
        return rho * np.clip(contributions, 0.0, None) + np.clip(contributions, None, 0.0)

    def _gold(self, prompts: list[str], completions: list[Any]) -> np.ndarray:
        return self._gold_terms(prompts, completions).sum(1)

    def gold_terms(self, prompts: list[str], completions: list[Any]) -> torch.Tensor:
        """``[N, K]`` each objective's share of the gold reward (``OBJECTIVE_NAMES`` order):
        ``rho * max(c_k, 0) + min(c_k, 0)``; a row sums to :meth:`gold_reward`."""
        return torch.from_numpy(self._gold_terms(prompts, completions)).float()

    def informativeness(self, prompts: list[str], completions: list[Any]) -> torch.Tensor:
        """``[N]`` share of its credit each completion keeps (1: honest, ~0: degenerate)."""
        return torch.from_numpy(self._rho(prompts, completions)).float()

    def gold_reward(self, prompts: list[str], completions: list[Any]) -> torch.Tensor:
        """``[N]`` gold reward: ``sum_k rho * max(c_k, 0) + min(c_k, 0)`` with
        ``c_k = weight_k(prompt) * objective_k(prompt, completion)`` and ``rho`` the
        completion's :meth:`informativeness`."""
        return torch.from_numpy(self._gold(prompts, completions)).float()

    def score(self, prompts: list[str], completions: list[Any]) -> torch.Tensor:
        """The library-wide ``Scorer`` interface; identical to :meth:`gold_reward`."""
        return self.gold_reward(prompts, completions)

    def oracle_quality(self, prompts: list[str], completions: list[Any]) -> torch.Tensor:
        """``[N]`` oracle quality ``J = exp(gold) > 0`` (the Bradley-Terry strength at T=1)."""
        return torch.from_numpy(np.exp(self._gold(prompts, completions))).float()

    def _score_one(self, info: PromptInfo, completion: str) -> tuple[float, list[float], float]:
        return score_completion(
            self.language,
            info,
            completion,
            self.config.reward_scale,
            self.config.informativeness,
        )

    # ------------------------------------------------------------------ datasets
    def _memo(self, key: str, make: Any) -> Any:
        """Generate (or read from the cache folder) once; hand out copies so that callers
        mutating records can never alter the world's data."""
        if key not in self._cache:
            path = self.folder / f"{key}.jsonl" if self.folder is not None else None
            self._cache[key] = read_jsonl(path) if path is not None and path.is_file() else make()
        return _clone(self._cache[key])

    def sft_records(self, split: str = "train") -> list[dict[str, Any]]:
        """SFT demonstrations ``{"prompt", "completion", "metadata"}`` (quality ``sft_quality``)."""
        _check(split, SFT_SPLITS)
        n = self.config.n_sft if split == "train" else self.config.n_sft_test
        return self._memo(
            f"sft_{split}", lambda: data.sft_records(self.language, split, n, self._score_one)
        )

    def preference_records(self, split: str = "train") -> list[dict[str, Any]]:
        """Labelled pairs ``{"prompt", "chosen", "rejected", "margin", "metadata"}``."""
        n = self._pair_count(split)
        return self._memo(
            f"pairs_{split}",
            lambda: data.preference_records(self.language, split, n, self._score_one),
        )

    def unpaired_records(self, split: str = "train") -> list[dict[str, Any]]:
        """Unpaired records ``{"prompt", "completion", "desirable", "metadata"}`` for KTO and
        BCO: behaviour responses, desirable iff their gold reward exceeds the median of the
        train split's (``metadata.threshold``; see :mod:`prefopt.world.data`)."""
        threshold = data.desirability_threshold(self._unpaired_samples("train"))
        return data.label_unpaired(self._unpaired_samples(split), threshold)

    def _unpaired_samples(self, split: str) -> list[dict[str, Any]]:
        n = 2 * self._pair_count(split)  # as many completions as the split's pairs hold
        return self._memo(
            f"unpaired_{split}",
            lambda: data.unpaired_samples(self.language, split, n, self._score_one),
        )

    def _pair_count(self, split: str) -> int:
        _check(split, data.PAIR_SPLITS)
        return {
            "train": self.config.n_train_pairs,
            "test": self.config.n_test_pairs,
            "ood": self.config.n_ood_pairs,
        }[split]

    def eval_prompts(self, split: str = "test") -> list[str]:
        """Held-out prompts for generation-based evaluation (``"test"`` or ``"ood"``)."""
        _check(split, EVAL_SPLITS)
        records = self._memo(f"eval_prompts_{split}", lambda: self._eval_prompt_records(split))
        return [r["prompt"] for r in records]

    def shifted_prompts(self, shift: str) -> list[str]:
        """``n_eval_prompts`` evaluation prompts under a graded shift (:data:`data.SHIFTS`)."""
        return self._memo(
            f"shift_prompts_{shift}",
            lambda: data.shifted_prompts(self.language, shift, self.config.n_eval_prompts),
        )

    def _eval_prompt_records(self, split: str) -> list[dict[str, Any]]:
        prompts = data.eval_prompts(self.language, split, self.config.n_eval_prompts)
        return [
            {"prompt": p, **data.prompt_fields(self.language, self.language.parse_prompt(p))}
            for p in prompts
        ]

    # ------------------------------------------------------------------ behaviour policies
    def sample_responses(
        self, prompts: list[str], n: int, quality: float | None = None, seed: int = 0
    ) -> list[list[str]]:
        """``n`` behaviour responses per prompt. ``quality=None`` draws q per response uniformly
        from ``[pair_quality_min, pair_quality_max]`` (the preference-data mixture)."""
        rng = make_rng(self.config.seed, "sample_responses", seed)
        out = []
        for info in self.parse_prompts(prompts):
            topics = self._behaviour_topics(info)
            out.append(
                [
                    behaviour_response(self.language, info, self._q(quality, rng), rng, topics)
                    for _ in range(n)
                ]
            )
        return out

    def _q(self, quality: float | None, rng: random.Random) -> float:
        if quality is not None:
            return float(quality)
        return rng.uniform(self.config.pair_quality_min, self.config.pair_quality_max)

    def _behaviour_topics(self, info: PromptInfo) -> list[int]:
        lang = self.language
        if info.topic is not None and info.topic in lang.ood_topics:
            return list(range(lang.n_topics))
        return lang.in_distribution_topics

    def random_responses(self, prompts: list[str], seed: int = 0) -> list[str]:
        """Uniformly random word sequences (what an untrained model emits), one per prompt."""
        rng = make_rng(self.config.seed, "random_responses", seed)
        return [random_text(self.language, rng) for _ in prompts]

    def oracle_responses(self, prompts: list[str]) -> list[str]:
        """Near-optimal responses (an upper reference for the achievable gold reward)."""
        return [
            oracle_response(self.language, i, self.config.reward_scale)
            for i in self.parse_prompts(prompts)
        ]

    def adversarial_responses(self, prompts: list[str], name: str, seed: int = 0) -> list[str]:
        """Degenerate responses of generator ``name`` (``prefopt.world.adversarial``)."""
        from prefopt.world.adversarial import adversarial_responses

        rng = make_rng(self.config.seed, f"adversarial|{name}", seed)
        return adversarial_responses(
            self.language, self.parse_prompts(prompts), name, rng, self.config.reward_scale
        )

    # ------------------------------------------------------------------ reporting
    def bayes_accuracy(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """``{"expected", "empirical_label_agreement", "n"}`` (see ``data.bayes_accuracy``)."""
        return data.bayes_accuracy(records, self.config.label_temperature)

    def expected_accuracy(self, records: list[dict[str, Any]], margins: Any) -> float:
        """Label-noise-free accuracy of a scorer on these pairs: the mean probability that a
        fresh label agrees with the sign of its margin (``chosen`` minus ``rejected``, a
        sequence or tensor, one per record), 1/2 on a tie. The same expectation as
        ``bayes_accuracy``'s ``expected``, for any scorer; per pair:
        ``per_pair_expected``."""
        values = torch.as_tensor(margins, dtype=torch.float64).reshape(-1)
        if len(records) != values.numel():
            raise ValueError(f"{len(records)} records but {values.numel()} margins")
        if not records:
            return float("nan")
        gaps = torch.tensor([r["metadata"]["gold_gap"] for r in records], dtype=torch.float64)
        return float(per_pair_expected(values, gaps, self.config.label_temperature).mean())

    def weights_table(self) -> dict[str, dict[str, float]]:
        """Scaled objective weights per instruction type."""
        w = weight_matrix(self.config.reward_scale)
        return {
            name: {k: float(w[i, j]) for j, k in enumerate(OBJECTIVE_NAMES)}
            for i, name in enumerate(INSTRUCTION_NAMES)
        }

    def describe(self) -> str:
        """Short human-readable description of the world."""
        lang, cfg = self.language, self.config
        lines = [
            f"prefopt synthetic world (seed={cfg.seed}, format v{WORLD_FORMAT_VERSION})",
            f"vocab: {self.vocab_size} tokens ({len(lang.words)} words), "
            f"{cfg.n_topics} topics ({cfg.n_ood_topics} held out for OOD)",
            "prompt format: '<instruction> <topic word> <topic word> :'",
            "gold = sum_k rho * max(c_k, 0) + min(c_k, 0), c_k = w_k(instruction) * "
            "objective_k, rho = informativeness"
            + ("" if self.config.informativeness else " (off: rho = 1)")
            + "; objectives: "
            + ", ".join(OBJECTIVE_NAMES),
            f"labels: Bradley-Terry, T={cfg.label_temperature}, counts={cfg.comparison_counts}",
            f"oracle quality J = {ORACLE_QUALITY}",
            "weights per instruction (target length):",
        ]
        for i, spec in enumerate(INSTRUCTIONS):
            w = ", ".join(f"{k}={v:g}" for k, v in self.weights_table()[spec.name].items())
            words = "/".join(lang.instruction_words[i])
            lines.append(
                f"  {spec.name} [{words}] ({lang.target_length(i):g} words, {spec.summary}): {w}"
            )
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """Contents of ``world.json``: config, description, weights, Bayes accuracies."""
        return {
            "format_version": WORLD_FORMAT_VERSION,
            "config": config_dict(self.config),
            "config_hash": config_hash(self.config),
            "description": self.describe(),
            "vocab_size": self.vocab_size,
            "objective_names": self.objective_names,
            "instruction_types": self.instruction_types,
            "weights": self.weights_table(),
            "oracle_quality": ORACLE_QUALITY,
            "bayes_accuracy": {
                s: self.bayes_accuracy(self.preference_records(s)) for s in data.PAIR_SPLITS
            },
        }

    # ------------------------------------------------------------------ materialisation
    def materialize(self, folder: str | os.PathLike[str]) -> Path:
        """Write tokenizer, datasets and ``world.json`` into ``folder`` (created)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.save_tokenizer(out / TOKENIZER_DIR)
        for split in SFT_SPLITS:
            write_jsonl(out / f"sft_{split}.jsonl", self.sft_records(split))
        for split in data.PAIR_SPLITS:
            write_jsonl(out / f"pairs_{split}.jsonl", self.preference_records(split))
        for split in EVAL_SPLITS:
            self.eval_prompts(split)
            write_jsonl(out / f"eval_prompts_{split}.jsonl", self._cache[f"eval_prompts_{split}"])
        text = json.dumps(_round_floats(self.summary()), indent=2, sort_keys=True)
        (out / WORLD_JSON).write_text(text + "\n", encoding="utf-8")
        return out


def per_pair_expected(margins: Tensor, gold_gaps: Tensor, temperature: float = 1.0) -> Tensor:
    """``[N]`` probability that a fresh label agrees with each margin's sign (1/2 on a tie)."""
    if torch.isnan(margins).any():
        raise ValueError("a margin is NaN: the scorer produced no usable score for some pair")
    p = torch.sigmoid(gold_gaps.double() / temperature)
    m = margins.double()
    return torch.where(m > 0, p, torch.where(m < 0, 1 - p, torch.full_like(p, 0.5)))


def _check(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")


def _clone(value: Any) -> Any:
    """Fast deep copy of JSON-like data (dicts, lists, immutable leaves)."""
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _round_floats(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _round_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round_floats(v) for v in value]
    return value


def world_folder(cfg: WorldConfig, cache_dir: str | os.PathLike[str]) -> Path:
    """Where ``build_world`` materialises ``cfg`` under ``cache_dir``."""
    return Path(cache_dir) / f"world-{config_hash(cfg)}"


def build_world(
    cfg: WorldConfig | Any | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> World:
    """Build the world of ``cfg`` (deterministic). With ``cache_dir``, materialise it under
    ``cache_dir/world-<hash>/`` or reuse that folder when it is already complete."""
    config = coerce_config(cfg if cfg is not None else WorldConfig())
    if cache_dir is None:
        return World(config)
    folder = world_folder(config, cache_dir)
    if not (folder / WORLD_JSON).is_file():
        _materialize_atomically(World(config), folder)
    return World(config, folder=str(folder))


def _materialize_atomically(world: World, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    os.chmod(tmp, 0o755)
    try:
        world.materialize(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: keep its copy if complete
            if not (folder / WORLD_JSON).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
