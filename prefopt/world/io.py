"""Deterministic JSON-lines I/O: the same records always give the same bytes."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FLOAT_DECIMALS = 6


def _normalise(value: Any) -> Any:
    """Round floats to a fixed number of decimals (recursively); reject NaN / inf."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("non-finite float in record")
        return round(value, FLOAT_DECIMALS)
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    return value


def dumps_record(record: dict[str, Any]) -> str:
    """One JSON line: sorted keys, compact separators, ASCII only, rounded floats."""
    return json.dumps(_normalise(record), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def write_jsonl(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> None:
    """Write records as deterministic JSON lines (``\\n`` line endings, UTF-8)."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(dumps_record(record) + "\n")


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON-lines file written by :func:`write_jsonl`."""
    with open(Path(path), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
