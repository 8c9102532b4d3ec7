"""Presence and frequency penalties for sampling, as OpenAI's API and vLLM define them.

Zheng et al. (ExPO, arXiv 2404.16792) chose alpha from samples drawn with vLLM at temperature
0.7, top-k 50, top-p 0.9, ``presence_penalty=0.1`` and ``frequency_penalty=0.1``
(``chujiezheng/LLM-Extrapolation``, ``generate_ultrafeedback.py``). transformers' ``generate``
has neither penalty (5.x; its ``repetition_penalty`` is CTRL's multiplicative one, and counts
the prompt). With ``c_v`` the number of times token ``v`` occurs in the completion generated so
far (the prompt does not count),

    logits_v <- logits_v - frequency * c_v - presence * [c_v > 0]

applied to the raw logits before temperature, top-k and top-p (vLLM's order).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def completion_counts(input_ids: Tensor, prompt_width: int, vocab_size: int) -> Tensor:
    """``[B, V]`` float: how often each token occurs in ``input_ids[:, prompt_width:]``."""
    generated = input_ids[:, prompt_width:]
    counts = torch.zeros(input_ids.shape[0], vocab_size, device=input_ids.device)
    if generated.shape[1]:
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=counts.dtype))
    return counts


def penalise_logits(logits: Tensor, counts: Tensor, presence: float, frequency: float) -> Tensor:
    """``[B, V]`` logits minus ``frequency * counts`` minus ``presence`` where a count is > 0."""
    counts = counts.to(logits.dtype)
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


class PresenceFrequencyPenalty:
    """A transformers logits processor (``__call__(input_ids, scores) -> scores``) applying
    :func:`penalise_logits` to the tokens generated after column ``prompt_width``."""

    def __init__(self, presence: float, frequency: float, prompt_width: int):
        self.presence, self.frequency, self.prompt_width = presence, frequency, prompt_width

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        counts = completion_counts(input_ids, self.prompt_width, scores.shape[-1])
        return penalise_logits(scores, counts, self.presence, self.frequency)


def sampling_processors(cfg: Any, prompt_width: int) -> list[Any] | None:
    """The whole sampling chain in vLLM's order (penalties, temperature, top-k, top-p) when
    ``cfg`` sets ``presence_penalty`` or ``frequency_penalty``; None otherwise (``generate``'s
    own temperature, top-k and top-p then run as usual)."""
    presence = float(getattr(cfg, "presence_penalty", 0.0) or 0.0)
    frequency = float(getattr(cfg, "frequency_penalty", 0.0) or 0.0)
    if not presence and not frequency:
        return None
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    chain: list[Any] = [PresenceFrequencyPenalty(presence, frequency, prompt_width)]
    if cfg.temperature != 1.0:
        chain.append(TemperatureLogitsWarper(cfg.temperature))
    if cfg.top_k:
        chain.append(TopKLogitsWarper(cfg.top_k))
    if cfg.top_p < 1.0:
        chain.append(TopPLogitsWarper(cfg.top_p))
    return chain
