"""Weighted mixtures of pairwise losses: ``loss: {name: mix, parts: [...]}``.

Each part is a pairwise loss section of its own plus a ``weight`` (default 1.0)::

    loss:
      name: mix
      parts:
        - {name: sigmoid, weight: 0.8, beta: 0.1}
        - {name: bco_pair, weight: 0.2}
        - {name: pair_sft, weight: 1.0}

The loss of a pair is ``sum_k weight_k * loss_k``, so the batch mean is TRL's
``sum_k loss_weights[k] * mean(loss_k)`` (its ``loss_type`` list). Each part is validated
against its own config class, and its problems are reported under ``loss.parts.<i>.<key>``;
each part keeps its own settings (its own beta, f-divergence, ...), where TRL shares one
setting across the losses of a mixture. The metrics of part ``i`` are logged as
``<label>/<metric>`` (``<label>`` the part's name, with ``.<i>`` when a name repeats) plus
``<label>/loss``; the first part's metrics are also logged unprefixed (``rewards/margins``...).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor

from prefopt.losses.base import LossConfig, LossOutput, PairLogps
from prefopt.registry import LOSSES, register_loss


@dataclass
class MixConfig(LossConfig):
    name: str = "mix"
    # the parts: each a pairwise loss section (name + its own keys) with a `weight`
    parts: list[Any] = field(default_factory=list)

    def validate(self) -> list[str]:
        if not self.parts:
            return ["loss.parts: a mixture needs at least one part ({name: ..., weight: ...})"]
        return [p for i, part in enumerate(self.parts) for p in parse_part(i, part)[2]]

    def part_configs(self) -> list[tuple[float, Any]]:
        """(weight, config) of each part; raises ValueError listing the problems."""
        parsed = [parse_part(i, part) for i, part in enumerate(self.parts)]
        problems = [p for _, _, found in parsed for p in found]
        if problems or not parsed:
            raise ValueError("; ".join(problems or self.validate()))
        return [(weight, config) for weight, config, _ in parsed]

    def logps_summaries(self) -> tuple[frozenset[str], frozenset[str]]:
        """What the parts' settings need of the policy and reference forwards, together."""
        configs = [c for _, c, _ in (parse_part(i, p) for i, p in enumerate(self.parts))]
        needs = [c.logps_summaries() for c in configs if hasattr(c, "logps_summaries")]
        return (
            frozenset().union(*(policy for policy, _ in needs)),
            frozenset().union(*(reference for _, reference in needs)),
        )


def parse_part(index: int, part: Any) -> tuple[float, Any, list[str]]:
    """(weight, typed config, problems) of part `index` of a mixture, each problem under its
    full key ``loss.parts.<index>.<key>``."""
    key = f"loss.parts.{index}"
    if not isinstance(part, dict):
        return 0.0, None, [f"{key}: expected a mapping {{name: ..., weight: ...}}, got {part!r}"]
    values = dict(part)
    weight = values.pop("weight", 1.0)
    problems = []
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        problems.append(f"{key}.weight: expected a finite number, got {weight!r}")
        weight = 0.0
    elif weight <= 0:
        problems.append(f"{key}.weight must be > 0, got {weight}")
    name = values.get("name")
    pairwise = sorted(n for n, e in LOSSES.items() if e.kind == "pairwise" and n != "mix")
    if name not in LOSSES or LOSSES[name].kind != "pairwise" or name == "mix":
        if name is None:
            why = "is required"
        elif name == "mix":
            why = "'mix' cannot be a part of a mixture"
        elif name in LOSSES:
            why = f"{name!r} is a loss of kind {LOSSES[name].kind}, not a pairwise loss"
            why += "; the chosen completions' NLL is 'pair_sft'" if name == "sft" else ""
        else:
            why = f"unknown loss {name!r}"
        problems.append(f"{key}.name: {why}; pairwise losses: {', '.join(pairwise)}")
        return weight, None, problems
    config_cls = LOSSES[name].config_cls
    allowed = [f.name for f in fields(config_cls)]
    for unknown in [k for k in values if k not in allowed]:
        close = difflib.get_close_matches(str(unknown), allowed, n=2, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        problems.append(
            f"unknown key {f'{key}.{unknown}'!r}{hint} (valid keys of loss {name!r}: weight, "
            f"{', '.join(allowed)})"
        )
        values.pop(unknown)
    try:
        config: Any = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(config_cls), values))
    except OmegaConfBaseException as exc:
        where = getattr(exc, "full_key", None) or ""
        return weight, None, [*problems, f"{key}.{where}: {getattr(exc, 'msg', exc)}"]
    problems += [p.replace("loss.", f"{key}.", 1) for p in config.validate()]
    return weight, config, problems


def part_labels(names: list[str]) -> list[str]:
    """A metric prefix per part: its name, with ``.<index>`` when the name repeats."""
    return [n if names.count(n) == 1 else f"{n}.{i}" for i, n in enumerate(names)]


@register_loss("mix", MixConfig)
class MixLoss:
    """The weighted sum of pairwise losses; needs a reference when any part does."""

    supports_soft_labels = False

    def __init__(self, config: MixConfig):
        self.config = config
        self.parts = [(w, LOSSES[c.name].build(c)) for w, c in config.part_configs()]
        self.labels = part_labels([c.name for _, c in config.part_configs()])
        losses = [loss for _, loss in self.parts]
        self.needs_reference = any(loss.needs_reference for loss in losses)
        self.policy_summaries = frozenset().union(*(x.policy_summaries for x in losses))
        self.reference_summaries = frozenset().union(*(x.reference_summaries for x in losses))

    def __call__(
        self, policy: PairLogps, ref: PairLogps | None, batch: dict[str, Any] | None = None
    ) -> LossOutput:
        total: Tensor | None = None
        metrics: dict[str, Tensor] = {}
        for (weight, loss), label in zip(self.parts, self.labels, strict=True):
            out = loss(policy, ref if loss.needs_reference else None, batch)
            total = weight * out.loss if total is None else total + weight * out.loss
            if not metrics:
                metrics.update(out.metrics)
            metrics[f"{label}/loss"] = out.loss.detach().float()
            metrics.update({f"{label}/{k}": v for k, v in out.metrics.items()})
        assert total is not None
        return LossOutput(loss=total, metrics=metrics)
