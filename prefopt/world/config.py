"""Configuration of the synthetic preference world.

:class:`WorldConfig` is embedded as the ``world:`` section of recipe YAML files through
OmegaConf structured configs, so it only holds primitive fields (``int``, ``float``, ``str``,
``bool``). Everything about the world -- vocabulary, prompts, behaviour data, labels -- is a
deterministic function of this config: two equal configs give byte-identical materialised files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Bumped whenever generation logic changes, so on-disk caches keyed by config are invalidated.
WORLD_FORMAT_VERSION = 3

COMPARISON_COUNT_MODES = ("uniform", "long_tail")

#: Settings that shape only the preference pairs (and the evaluation prompts), never the
#: language, prompts or demonstrations: a model of the world's SFT stage does not depend on them.
PAIR_ONLY_FIELDS = (
    "n_train_pairs",
    "n_test_pairs",
    "n_ood_pairs",
    "label_temperature",
    "comparison_counts",
    "long_tail_exponent",
    "long_tail_max_count",
    "pair_quality_min",
    "pair_quality_max",
    "hard_pair_fraction",
    "n_eval_prompts",  # evaluation prompts only: they never reach training
)


@dataclass
class WorldConfig:
    """All knobs of the synthetic world (see ``docs/world.md``)."""

    # Master seed: the vocabulary, prompts, behaviour samples and labels all derive from it.
    seed: int = 0
    # Total number of topics, including the held-out out-of-distribution ones.
    n_topics: int = 8
    # The last `n_ood_topics` topics never appear in train/test data (only in the "ood" split).
    n_ood_topics: int = 2
    # Number of SFT demonstrations in the train split.
    n_sft: int = 2000
    # Number of SFT demonstrations in the test split.
    n_sft_test: int = 200
    # Number of train preference records (comparisons, counting repeats in long-tail mode).
    n_train_pairs: int = 2000
    # Number of in-distribution test preference pairs (always compared once).
    n_test_pairs: int = 500
    # Number of out-of-distribution preference pairs (held-out topics, compared once).
    n_ood_pairs: int = 500
    # Held-out prompts for generation-based evaluation, for each of the "test" and "ood" splits
    # (640 x 4 samples puts the standard error of a policy's mean gold near 0.045).
    n_eval_prompts: int = 640
    # Bradley-Terry temperature of the labels: P(first preferred) = sigmoid((R1 - R2) / T).
    label_temperature: float = 1.0
    # "uniform" (each train pair compared once) or "long_tail" (Zipf-distributed repeat counts).
    comparison_counts: str = "uniform"
    # Zipf exponent of the long-tail comparison counts (P(c) ~ c^-a; a=2 gives ~60% singletons).
    long_tail_exponent: float = 2.0
    # Upper bound on how many times one distinct pair is compared in long-tail mode.
    long_tail_max_count: int = 32
    # Maximum number of words in a behaviour response; length targets scale with it.
    max_response_words: int = 24
    # Degenerate text (loops, repetition, restatement, copied prompt, filler) keeps only a
    # share rho of its credit (docs/world.md); false: the format-1 world, which it could game.
    informativeness: bool = True
    # Global multiplier of the gold reward (sets the size of typical pair gaps vs. temperature).
    reward_scale: float = 2.0
    # Behaviour quality q of the SFT demonstrations (good but not optimal).
    sft_quality: float = 0.75
    # Behaviour qualities of preference responses are drawn uniformly from [min, max].
    pair_quality_min: float = 0.0
    # Upper end of the behaviour quality range for preference responses.
    pair_quality_max: float = 1.0
    # Fraction of pairs whose two responses share the same quality q (mostly hard pairs).
    hard_pair_fraction: float = 0.3
    # Fraction of in-distribution prompts (by hash) reserved for the test split.
    test_prompt_fraction: float = 0.2
    # Per-topic content vocabulary sizes.
    nouns_per_topic: int = 10
    # Number of verbs per topic.
    verbs_per_topic: int = 8
    # Number of adjectives per topic.
    adjectives_per_topic: int = 8
    # Number of positive sentiment words (and, separately, of negative ones).
    n_sentiment_words: int = 12
    # Number of banned ("unsafe") words.
    n_banned_words: int = 8
    # Number of determiners and of connectives (function words), each.
    n_function_words: int = 6
    # Number of synonymous instruction words per instruction type.
    instruction_synonyms: int = 2

    def validate(self) -> None:
        """Raise ``ValueError`` on inconsistent settings."""
        if self.comparison_counts not in COMPARISON_COUNT_MODES:
            raise ValueError(f"comparison_counts must be one of {COMPARISON_COUNT_MODES}")
        if not 0 <= self.n_ood_topics < self.n_topics:
            raise ValueError("need 0 <= n_ood_topics < n_topics")
        if self.label_temperature <= 0:
            raise ValueError("label_temperature must be > 0")
        if self.max_response_words < 4:
            raise ValueError("max_response_words must be >= 4")
        if not 0.0 <= self.pair_quality_min <= self.pair_quality_max <= 1.0:
            raise ValueError("need 0 <= pair_quality_min <= pair_quality_max <= 1")
        if not 0.0 < self.test_prompt_fraction < 1.0:
            raise ValueError("test_prompt_fraction must be in (0, 1)")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        counts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        negative = [k for k, v in counts.items() if type(v) is int and v < 0]
        if negative:
            raise ValueError(f"{', '.join(negative)} must be >= 0")
        empty = [k for k in ("n_topics", "n_sft", "n_train_pairs") if counts[k] < 1]
        if empty:
            raise ValueError(f"{', '.join(empty)} must be >= 1")
        for name in ("sft_quality", "hard_pair_fraction"):
            if not 0.0 <= counts[name] <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")


def coerce_config(cfg: Any) -> WorldConfig:
    """Accept a :class:`WorldConfig`, a mapping or an OmegaConf ``DictConfig``."""
    if isinstance(cfg, WorldConfig):
        out = dataclasses.replace(cfg)
    else:
        if not isinstance(cfg, Mapping):
            from omegaconf import OmegaConf  # local import: only needed for DictConfig input

            cfg = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(cfg, Mapping)
        names = {f.name for f in dataclasses.fields(WorldConfig)}
        unknown = set(cfg) - names
        if unknown:
            raise ValueError(f"unknown WorldConfig fields: {sorted(map(str, unknown))}")
        out = WorldConfig(**{str(k): v for k, v in cfg.items()})
    out.validate()
    return out


def config_dict(cfg: WorldConfig) -> dict[str, Any]:
    """Plain dict of the config fields (JSON-serialisable)."""
    return dataclasses.asdict(cfg)


def config_hash(cfg: WorldConfig) -> str:
    """Short stable hash of the config (and format version), used to key on-disk caches."""
    payload = json.dumps(
        {"version": WORLD_FORMAT_VERSION, "config": config_dict(cfg)}, sort_keys=True
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
