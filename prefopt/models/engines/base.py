"""The rollout-engine interface: what samples completions for the online trainer, the gold
evaluation, ExPO's alpha search and ``prefopt eval`` (docs/engines.md).

An engine is built once from a policy (``build_engine``), samples with ``sample`` and is told
when the policy's weights changed (``sync_weights``). Its samples follow exactly the
conventions of :func:`prefopt.models.generation.generate` (:class:`Samples`): the left-padded
prompt block of width ``prompt_width``, completion tokens up to and including the first EOS,
pad after it, the masks, the decoded completions and, when asked, the sampled tokens' log-probs
at the sampling temperature. The same seed, prompts and weights give the same samples.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn

from prefopt.config import EngineSettings
from prefopt.models.generation import Samples

__all__ = ["EngineSettings", "RolloutEngine", "Samples"]


class RolloutEngine(abc.ABC):
    """Samples completions of a policy (see the module docstring)."""

    name: ClassVar[str]
    #: samples with its own copy of the weights (its own kernels, its own numerics), so its
    #: sampled tokens' log-probs are measured against the trainer's every rollout
    #: (``rollout/logp_diff_*``); False for ``generate`` on the live model
    samples_from_a_copy: ClassVar[bool] = True

    def __init__(
        self, model: nn.Module, tokenizer: Any, device: torch.device, settings: EngineSettings
    ):
        self.model, self.tokenizer, self.device, self.settings = model, tokenizer, device, settings

    @abc.abstractmethod
    def sample(
        self,
        prompts: list[str],
        cfg: Any,
        seed: int,
        *,
        max_prompt_length: int = 64,
        with_logps: bool = False,
    ) -> Samples:
        """``cfg.samples_per_prompt`` completions of each prompt (``cfg``: anything with
        ``samples_per_prompt``, ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``,
        ``batch_size``, optionally ``presence_penalty`` / ``frequency_penalty``: a
        RolloutConfig or an EvalConfig). ``with_logps``: ``Samples.logps`` [R, T-1], the sampled
        tokens' log-probs at the sampling temperature (column j scores column j+1, 0 off the
        completions)."""

    def sync_weights(self, model: nn.Module) -> None:  # noqa: B027  (optional to override)
        """``model``'s current weights are the ones to sample from from now on (called before a
        rollout whenever an optimiser step or a resume changed them since the last one)."""

    def sleep(self) -> None:  # noqa: B027
        """Free what the engine holds between rollouts (vLLM's sleep mode); default: nothing."""

    def wake_up(self) -> None:  # noqa: B027
        """Undo :meth:`sleep`; default: nothing."""

    def close(self) -> None:  # noqa: B027
        """Release the engine; default: nothing."""
