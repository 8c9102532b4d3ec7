"""Inputs, base class and metrics of the unpaired losses (KTO, BCO).

An unpaired example is a prompt, one completion and a binary label: desirable or not (no
second completion to compare with). A loss of kind ``unpaired`` is called with the policy's
and the reference's :class:`UnpairedLogps` of a micro-batch and its ``desirable`` flags, and
returns one loss per example; the trainer reduces them by the mean, as TRL does (desirable and
undesirable examples pooled).

Some losses estimate a quantity over the batch (KTO's reference point ``z0``, BCO's reward
shift ``delta``). Under data parallelism TRL averages it over the processes; the trainer passes
``batch_mean`` (a scalar's mean over the processes) for that, so that every process uses the
same value. Called without it (one process, tests), the loss uses its own batch.

Metrics (TRL's names): ``rewards/chosen`` and ``logps/chosen`` are means over the desirable
examples of the batch, ``rewards/rejected`` and ``logps/rejected`` over the undesirable ones
(each only when the batch has one), ``rewards/margins`` their difference when it has both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from prefopt.losses.base import LossConfig, LossOutput, detached

#: The mean of a scalar over data-parallel processes (identity on one process).
BatchMean = Callable[[Tensor], Tensor]


@dataclass
class UnpairedLogps:
    """Summed completion log-probabilities of a batch of unpaired examples under one model.

    completion: [B] sum of log p(token) over completion_i given prompt_i (EOS included).
    tokens: [B] number of completion tokens (float).
    mismatched: [B] the same for completion_{i-1} given prompt_i (cyclically: KTO's
        mismatched pairs for its KL estimate), or None when the loss needs none.
    """

    completion: Tensor
    tokens: Tensor
    mismatched: Tensor | None = None

    @staticmethod
    def cat(parts: list[UnpairedLogps]) -> UnpairedLogps:
        """One batch of several (e.g. the held-out chunks)."""
        mismatched = [p.mismatched for p in parts if p.mismatched is not None]
        return UnpairedLogps(
            torch.cat([p.completion for p in parts]),
            torch.cat([p.tokens for p in parts]),
            torch.cat(mismatched) if len(mismatched) == len(parts) else None,
        )


@dataclass
class UnpairedConfig(LossConfig):
    beta: float = 0.1

    def validate(self) -> list[str]:
        return [f"loss.beta must be > 0, got {self.beta}"] if self.beta <= 0 else []


class UnpairedLoss:
    """Base class: subclasses implement `example_loss` and, for state carried across steps
    (saved in checkpoints), `state_dict` / `load_state_dict`."""

    needs_reference: ClassVar[bool] = True
    needs_mismatched: ClassVar[bool] = False  # the collator adds KTO's mismatched rows

    def __init__(self, config: UnpairedConfig):
        self.config = config
        self.beta = config.beta

    def example_loss(
        self,
        log_ratios: Tensor,
        mismatched_log_ratios: Tensor | None,
        desirable: Tensor,
        training: bool,
        batch_mean: BatchMean,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-example loss [B] and extra metrics from ``log pi/pi_ref`` of each example."""
        raise NotImplementedError

    def __call__(
        self,
        policy: UnpairedLogps,
        ref: UnpairedLogps | None,
        desirable: Tensor,
        *,
        training: bool = True,
        batch_mean: BatchMean | None = None,
    ) -> LossOutput:
        """``training=False`` (held-out evaluation) leaves any running state as it is."""
        if ref is None:
            raise ValueError(f"loss {self.config.name!r} needs reference log-probs")
        mismatched = None
        if self.needs_mismatched:
            if policy.mismatched is None or ref.mismatched is None:
                raise ValueError(f"loss {self.config.name!r} needs the mismatched log-probs")
            mismatched = policy.mismatched - ref.mismatched
        log_ratios = policy.completion - ref.completion
        desirable = desirable.bool()
        loss, extra = self.example_loss(
            log_ratios, mismatched, desirable, training, batch_mean or (lambda x: x)
        )
        metrics = label_metrics(self.beta * log_ratios, policy.completion, desirable)
        return LossOutput(loss=loss, metrics={**metrics, **detached(**extra)})

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        pass


def label_metrics(rewards: Tensor, logps: Tensor, desirable: Tensor) -> dict[str, Tensor]:
    """TRL's ``rewards/*`` and ``logps/*``: scalar means over the desirable ("chosen") and the
    undesirable ("rejected") examples of the batch, each only when the batch has one."""
    metrics: dict[str, Tensor] = {}
    for side, mask in (("chosen", desirable), ("rejected", ~desirable)):
        if mask.any():
            metrics[f"rewards/{side}"] = rewards[mask].mean()
            metrics[f"logps/{side}"] = logps[mask].mean()
    if desirable.any() and (~desirable).any():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return detached(**metrics)
