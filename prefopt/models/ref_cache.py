"""Reference log-probs computed once and cached on disk.

The cache key combines the tokenized data's fingerprint (every id of every example, in order)
and the reference weights' fingerprint, so a change of either recomputes. The file holds four
[N] tensors: chosen, rejected log-probs and their token counts.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from prefopt.data import to_device
from prefopt.models.loading import model_fingerprint
from prefopt.models.logps import pair_logps


class ReferenceHost(Protocol):
    """What the cache needs of a trainer (structurally; no trainer import from this layer)."""

    recipe: Any
    run_dir: Path
    device: torch.device
    cfg: Any
    _collator: Any

    @property
    def is_main(self) -> bool: ...

    def reference_forward(self) -> AbstractContextManager[Any]: ...

    def reference_model(self) -> nn.Module: ...


def data_fingerprint(examples: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps([e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]]).encode())
    return digest.hexdigest()[:16]


def cached_reference_logps(
    trainer: ReferenceHost, examples: list[dict[str, Any]], split: str
) -> tuple[Tensor, ...]:
    cfg = trainer.recipe.reference
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else trainer.run_dir.parent / ".ref_cache"
    with trainer.reference_forward():
        model = trainer.reference_model()
        key = f"{data_fingerprint(examples)}-{model_fingerprint(model)}"
    path = cache_dir / f"ref-logps-{key}.pt"
    if path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return tuple(stored[k] for k in ("chosen", "rejected", "chosen_tokens", "rejected_tokens"))
    columns: list[list[Tensor]] = [[], [], [], []]
    bs = trainer.cfg.batch_size
    with torch.no_grad(), trainer.reference_forward():
        model = trainer.reference_model()
        for start in range(0, len(examples), bs):
            batch = to_device(trainer._collator(examples[start : start + bs]), trainer.device)
            logps = pair_logps(model, batch)
            for column, value in zip(
                columns,
                (logps.chosen, logps.rejected, logps.chosen_tokens, logps.rejected_tokens),
                strict=True,
            ):
                column.append(value.float().cpu())
    result = tuple(torch.cat(c) for c in columns)
    if trainer.is_main:  # every process computed the same values; one writes them
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        names = ("chosen", "rejected", "chosen_tokens", "rejected_tokens")
        torch.save(dict(zip(names, result, strict=True)), tmp)
        tmp.replace(path)  # atomic: readers never see a partial file
        print(f"reference log-probs for {len(examples)} {split} pairs cached in {path}")
    return result
