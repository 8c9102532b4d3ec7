"""Label noise on preference pairs: a share of the training pairs with chosen and rejected
swapped, as Coste et al. 2024 (arXiv 2310.02743, section 4) train reward models with 25% of
the labels flipped to study over-optimisation under noisy preferences.

``flip_labels(records, rate, seed)`` swaps exactly ``round(rate * N)`` pairs, chosen uniformly
at random by ``seed`` (the same pairs for the same records, rate and seed). In a flipped pair
every field named for one side (``chosen``, ``gold_chosen``, ``objectives_chosen``... at the
top level and in ``metadata``) trades places with its ``rejected`` twin, ``margin`` and
``gold_gap`` change sign and ``label_agrees_with_gold`` is negated, so the record stays
self-consistent; ``metadata["label_flipped"]`` marks it. Records are copied, never changed in
place.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

SIGNED = ("margin", "gold_gap")


def flip_labels(
    records: Sequence[dict[str, Any]], rate: float, seed: int
) -> tuple[list[dict[str, Any]], int]:
    """``(records with round(rate * N) pairs flipped, how many were flipped)``."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"the label-flip rate must be in [0, 1], got {rate}")
    count = round(rate * len(records))
    chosen = set(random.Random(seed).sample(range(len(records)), count))
    out = [_flipped(r) if i in chosen else r for i, r in enumerate(records)]
    return out, count


def _flipped(record: dict[str, Any]) -> dict[str, Any]:
    out = _swap_sides(record)
    metadata = record.get("metadata")
    if isinstance(metadata, dict):
        out["metadata"] = _swap_sides(metadata) | {"label_flipped": True}
    return out


def _swap_sides(fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    for key, value in fields.items():
        if "chosen" in key and key.replace("chosen", "rejected") in fields:
            twin = key.replace("chosen", "rejected")
            out[key], out[twin] = fields[twin], value
    for key in SIGNED:
        if isinstance(fields.get(key), int | float) and not isinstance(fields[key], bool):
            out[key] = -fields[key]
    if isinstance(fields.get("label_agrees_with_gold"), bool):
        out["label_agrees_with_gold"] = not fields["label_agrees_with_gold"]
    return out
