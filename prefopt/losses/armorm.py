"""ArmoRM's recipe section (Wang et al. 2024, arXiv 2406.12845, section 3.2 defaults).

Stage 1 fits one ridge regression per objective on frozen backbone features (or, as a
documented deviation, an MLP probe: ``regression: mlp``); stage 2 trains
the gating network with the Bradley-Terry loss on pairs. The trainer is
`prefopt.trainers.armorm.ArmoRMTrainer`; the model code is `prefopt.rewards.armorm_model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefopt.losses.base import LossConfig
from prefopt.registry import register_loss

POOLINGS = ("last", "mean", "last_mean", "all_layers")
REGRESSIONS = ("ridge", "mlp")


@dataclass
class ArmoRMConfig(LossConfig):
    """The `loss:` section of `recipes/armorm.yaml` (defaults: the paper's, section 3.2)."""

    name: str = "armorm"
    # Features of a sequence: "last" (paper: final layer, last token), "mean" (final layer,
    # mean over response tokens), "last_mean" (both), "all_layers" (last and mean of every
    # layer's hidden states, embeddings included) -- deviations for small backbones.
    pooling: str = "last"
    ridge_alphas: list[float] = field(
        default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0]
    )
    val_fraction: float = 0.2  # validation split that picks each objective's ridge alpha
    # Stage 1: "ridge" (paper: a linear layer, closed form) or "mlp" -- a deviation for small
    # backbones whose features hold the objectives non-linearly: an MLP probe (GELU) trained by
    # masked MSE on the same features, still one output per objective, still frozen in stage 2.
    regression: str = "ridge"
    regression_hidden: list[int] = field(default_factory=lambda: [512, 512])
    regression_epochs: int = 20
    regression_lr: float = 1e-3
    regression_weight_decay: float = 0.01
    regression_batch_size: int = 256
    gate_hidden: list[int] = field(default_factory=lambda: [1024, 1024, 1024])
    gate_dropout: float = 0.2
    temperature: float = 10.0  # T in softmax(z / T), fixed
    beta_init: float = 1.0  # learnable output scale (paper: 1)
    # Deviation (off by default): start beta at the maximum-likelihood scale of the uniformly
    # gated score on the training pairs instead of beta_init. With objective scores in [0, 1]
    # and AdamW at lr 1e-3, beta grows by ~0.3 in 300 steps, far below the scale the labels
    # need; the gate then saturates on one objective to widen margins (see armorm.md).
    fit_beta_init: bool = False
    verbosity_objective: str | None = "verbosity"  # null: no decorrelation
    decorrelation_threshold: float = 0.03  # Spearman(r'_i, r_verbosity) <= this
    # lambda of verbosity itself: 1 (authors) zeroes it in the gated score; 0 keeps it there,
    # so the gate may still weight verbosity (prefopt before this option existed)
    verbosity_penalty: float = 1.0
    max_length: int = 128
    max_prompt_length: int = 64
    # ratings on the world: "judged" (objectives discounted by informativeness, as a judge
    # would rate a degenerate text) or "raw" (the five objectives as computed)
    world_ratings: str = "judged"

    def validate(self) -> list[str]:
        problems = []
        if self.world_ratings not in ("judged", "raw"):
            problems.append(f"loss.world_ratings: {self.world_ratings!r} is not one of judged, raw")
        if self.pooling not in POOLINGS:
            problems.append(f"loss.pooling: {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.regression not in REGRESSIONS:
            problems.append(
                f"loss.regression: {self.regression!r} is not one of {', '.join(REGRESSIONS)}"
            )
        for key in ("regression_epochs", "regression_batch_size"):
            if getattr(self, key) < 1:
                problems.append(f"loss.{key} must be >= 1, got {getattr(self, key)}")
        if self.regression_lr <= 0:
            problems.append(f"loss.regression_lr must be > 0, got {self.regression_lr}")
        if any(h < 1 for h in self.regression_hidden):
            problems.append(
                f"loss.regression_hidden: sizes must be >= 1, got {self.regression_hidden}"
            )
        if not 0 < self.val_fraction < 1:
            problems.append(f"loss.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.verbosity_penalty not in (0.0, 1.0):
            problems.append(
                f"loss.verbosity_penalty must be 1 (zero verbosity, the authors') or 0 (keep "
                f"it), got {self.verbosity_penalty}"
            )
        if self.temperature <= 0:
            problems.append(f"loss.temperature must be > 0, got {self.temperature}")
        return problems


@register_loss("armorm", ArmoRMConfig, kind="armorm")
class ArmoRMObjective:
    """Stage 2's objective is the Bradley-Terry loss on ArmoRM scores; the trainer applies it."""

    needs_reference = False

    def __init__(self, config: ArmoRMConfig):
        self.config = config
