"""How long completions are and whether they stop: the length drift of a policy, per prompt.

For ``K`` samples of each of ``P`` prompts (:class:`prefopt.models.generation.Samples`) and
their gold rewards, the mean completion length in tokens (EOS included), the share of
completions that end in EOS (the rest ran into ``max_new_tokens``) and the mean gold reward,
each with its standard error over prompts (the K samples of a prompt are averaged first: the
prompt is the unit, as in :mod:`prefopt.eval.gold`). docs/algorithms/pm.md uses it for PM
RLHF's drift to long completions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prefopt.eval.compare import standard_error
from prefopt.models.generation import Samples


def completion_summary(samples: Samples, gold: Tensor, eos_token_id: int) -> dict[str, Any]:
    """``mean_tokens``, ``eos_share``, ``gold`` and their ``_se`` over prompts, ``n_prompts``,
    ``samples_per_prompt``. ``gold``: ``[P * K]`` in the samples' order."""
    p = len(samples.prompts)
    k = len(samples.completions[0]) if samples.completions else 0
    if p == 0 or k == 0:
        raise ValueError("completion_summary needs at least one prompt with one sample")
    gold = torch.as_tensor(gold, dtype=torch.float64).reshape(-1)
    if gold.numel() != p * k:
        raise ValueError(f"{gold.numel()} gold rewards for {p * k} completions")
    per_prompt = {
        "mean_tokens": samples.completion_mask.sum(dim=1).double(),
        "eos_share": samples.ended_with_eos(eos_token_id).double(),
        "gold": gold,
    }
    out: dict[str, Any] = {"n_prompts": p, "samples_per_prompt": k}
    for name, values in per_prompt.items():
        by_prompt = values.reshape(p, k).mean(dim=1)
        out[name] = float(by_prompt.mean())
        out[f"{name}_se"] = standard_error(by_prompt)
    return out
