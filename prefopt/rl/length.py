"""Completion length in online RL: DAPO's overlong reward shaping and the length-bias report.

* Overlong reward shaping -- Yu et al. 2025 (DAPO, arXiv 2503.14476), sec. 3.4, eq. 13: with
  ``L_max`` the maximum number of new tokens and ``L_cache`` a buffer below it,

      R_length(y) = 0                                   if |y| <= L_max - L_cache
                  = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
                  = -1                                  if |y| > L_max,

  scaled by ``penalty`` (1 in the paper) and added to the reward. ``|y|`` counts completion
  tokens, the EOS included; a completion cut at ``L_max`` gets the full -1.
* Length bias -- Dr. GRPO (Liu et al. 2025, arXiv 2503.20783, sec. 3.1, fig. 5) and DAPO report
  the mean length of correct and of incorrect responses: GRPO's per-sequence normalisation
  lets incorrect responses grow. The world's gold reward is not binary, so "correct" is a gold
  reward above a ``threshold``: in the gold evaluation the reference policy's mean gold on the
  same prompt (the sample beats the SFT policy there), in a rollout batch the batch's median
  (the better half).
"""

from __future__ import annotations

import torch
from torch import Tensor


def overlong_penalty(lengths: Tensor, max_length: int, buffer: int, penalty: float = 1.0) -> Tensor:
    """[R] DAPO's soft overlong punishment (<= 0) of completions of ``lengths`` tokens."""
    if not 0 < buffer <= max_length:
        raise ValueError(f"need 0 < buffer <= max_length, got {buffer}, {max_length}")
    start = max_length - buffer
    ramp = (start - lengths.float()) / buffer
    shaped = torch.where(lengths <= start, torch.zeros_like(ramp), ramp)
    return penalty * torch.where(lengths > max_length, -torch.ones_like(ramp), shaped)


def length_by_correctness(
    lengths: Tensor, gold: Tensor, threshold: Tensor | float = 0.0
) -> dict[str, float]:
    """Mean completion length of the correct (``gold > threshold``; ``threshold`` a number or
    one per sample) and incorrect samples and the fraction correct; a side with no sample is
    left out (no NaN in the logs)."""
    correct = gold > threshold
    out = {"correct_fraction": float(correct.float().mean())}
    for name, rows in (("length_correct", correct), ("length_incorrect", ~correct)):
        if rows.any():
            out[name] = float(lengths[rows].float().mean())
    return out
