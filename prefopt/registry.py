"""Registries: one plain dict per kind of pluggable piece, filled by decorators.

A loss registers itself with its name and its config dataclass; the recipe system looks the
name up to validate the `loss:` section against that dataclass before anything heavy loads.
A user's module registers the same way and is named in a recipe's `imports:` list.
Regularisers of the online trainer (per-token penalties such as KL or preference matching)
have their own registry of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar


@dataclass(frozen=True)
class LossEntry:
    name: str
    config_cls: type  # a dataclass; the `loss:` section of a recipe is validated against it
    build: Callable[[Any], Any]  # config instance -> loss object
    # "pairwise" (pairs of completions), "unpaired" (completions labelled desirable or not),
    # "sft" (demonstrations), "reward" (scalar RM), "armorm", "online"
    kind: str


LOSSES: dict[str, LossEntry] = {}
KINDS = frozenset({"pairwise", "unpaired", "sft", "reward", "armorm", "online"})

T = TypeVar("T")


def register_loss(
    name: str, config_cls: type, kind: str = "pairwise"
) -> Callable[[type[T]], type[T]]:
    """Register a loss class under `name`.

    The class is built as `cls(config)` with an instance of `config_cls`, and called by the
    trainer. `kind` picks which data and step the trainer uses:

    * ``pairwise``: called with (policy PairLogps, reference PairLogps | None, batch);
    * ``unpaired``: called with (policy UnpairedLogps, reference UnpairedLogps | None,
      desirable [B] bool) (KTO, BCO; ``prefopt.losses.unpaired``);
    * ``sft``: called with (policy SequenceLogps, batch);
    * ``reward``: called with (chosen rewards, rejected rewards, batch);
    * ``armorm``: the two-stage ArmoRM procedure (its trainer owns the loss);
    * ``online``: the clipped policy-gradient surrogate of the online trainer, called with
      per-token (log-probs, old log-probs, advantages, mask).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; use {', '.join(sorted(KINDS))}")

    def decorator(cls: type[T]) -> type[T]:
        if name in LOSSES and LOSSES[name].build is not cls:
            raise ValueError(f"a loss named {name!r} is already registered")
        LOSSES[name] = LossEntry(name=name, config_cls=config_cls, build=cls, kind=kind)
        return cls

    return decorator


def get_loss(name: str) -> LossEntry:
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(
            f"unknown loss {name!r}; registered losses: {', '.join(sorted(LOSSES))}"
        ) from None


@dataclass(frozen=True)
class RegulariserEntry:
    name: str
    config_cls: type  # a dataclass; the `regulariser:` section of a recipe is validated against it
    build: Callable[[Any], Any]  # config instance -> regulariser object


REGULARISERS: dict[str, RegulariserEntry] = {}


def register_regulariser(name: str, config_cls: type) -> Callable[[type[T]], type[T]]:
    """Register a per-token regulariser class under `name`.

    The class is built as `cls(config)` with an instance of `config_cls`; the online trainer
    calls its `penalty(logp, ref_logp, mask)` and adds `-coef * penalty` to the token rewards.
    """

    def decorator(cls: type[T]) -> type[T]:
        if name in REGULARISERS and REGULARISERS[name].build is not cls:
            raise ValueError(f"a regulariser named {name!r} is already registered")
        REGULARISERS[name] = RegulariserEntry(name=name, config_cls=config_cls, build=cls)
        return cls

    return decorator


def get_regulariser(name: str) -> RegulariserEntry:
    try:
        return REGULARISERS[name]
    except KeyError:
        raise KeyError(
            f"unknown regulariser {name!r}; registered regularisers: "
            f"{', '.join(sorted(REGULARISERS))}"
        ) from None


@dataclass(frozen=True)
class AdvantageEntry:
    name: str
    config_cls: type  # a dataclass; the `advantage:` section of a recipe is validated against it
    build: Callable[[Any], Any]  # config instance -> estimator object
    needs_critic: bool  # the online trainer builds a value model (or head) for it
    needs_group: bool  # it compares the samples of one prompt: rollout.samples_per_prompt >= 2


ADVANTAGES: dict[str, AdvantageEntry] = {}


def register_advantage(
    name: str, config_cls: type, *, needs_critic: bool = False, needs_group: bool = False
) -> Callable[[type[T]], type[T]]:
    """Register an advantage estimator class under `name`.

    The class is built as `cls(config)` with an instance of `config_cls`; the online trainer
    calls it with the rollout record (`prefopt.rl.rollout.Rollout`) and gets back per-token
    advantages and, for an estimator with a critic, the critic's returns. `needs_critic` and
    `needs_group` are what the trainer and the recipe checks read; nothing else names an
    estimator.
    """

    def decorator(cls: type[T]) -> type[T]:
        if name in ADVANTAGES and ADVANTAGES[name].build is not cls:
            raise ValueError(f"an advantage estimator named {name!r} is already registered")
        ADVANTAGES[name] = AdvantageEntry(
            name=name,
            config_cls=config_cls,
            build=cls,
            needs_critic=needs_critic,
            needs_group=needs_group,
        )
        return cls

    return decorator


def get_advantage(name: str) -> AdvantageEntry:
    try:
        return ADVANTAGES[name]
    except KeyError:
        raise KeyError(
            f"unknown advantage estimator {name!r}; registered estimators: "
            f"{', '.join(sorted(ADVANTAGES))}"
        ) from None


def register_policy_loss(name: str, config_cls: type) -> Callable[[type[T]], type[T]]:
    """Register a policy-loss form of the online trainer (PPO's clipped surrogate, CISPO,
    SAPO, GMPO...) under `name`: an ``online`` entry of the loss registry, so that
    ``loss.name`` picks it and the `loss:` section is validated against `config_cls`.

    The class is built as `cls(config)` and called with per-token ``(logps, old_logps,
    advantages, mask)`` (all ``[R, T]``) and an optional ``total_tokens`` (the valid tokens of
    the optimiser step over every process, for token-level aggregation over the global batch);
    it returns a `LossOutput` with a scalar loss, and has ``value_loss`` for the critic.
    """
    return register_loss(name, config_cls, kind="online")


def policy_losses() -> list[str]:
    """The registered policy-loss forms (the ``online`` losses), sorted."""
    return sorted(name for name, entry in LOSSES.items() if entry.kind == "online")
