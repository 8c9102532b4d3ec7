"""The rollout-engine interface (issue 22).

MINIMAL LOCAL COPY written by the `vllm` helper so that ``engines/vllm.py`` imports before the
`engine` helper's ``base.py`` is on main; it matches /work/notes/engine_interface.md and is
replaced by theirs at merge.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from prefopt.models.generation import Samples


@dataclass
class EngineSettings:
    """Which engine samples rollouts, and its resources."""

    name: str = "hf"  # hf | vllm
    gpu_memory_utilization: float = 0.3  # vLLM on GPUs: the share of GPU memory it reserves
    cpu_memory_utilization: float = 0.05  # vLLM's CPU backend: the share of host memory
    sleep: bool = False  # vLLM sleep mode between rollouts (GPU only)
    max_model_len: int = 0  # 0: prompt length + max_new_tokens


class RolloutEngine(abc.ABC):
    """Samples completions for the online trainer, the gold evaluation, ExPO and `prefopt eval`."""

    name: ClassVar[str]

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
        """Completions with exactly the conventions of prefopt.models.generation.generate."""

    def sync_weights(self, model: nn.Module) -> None:  # noqa: B027 (optional hook)
        """After every optimiser step."""

    def sleep(self) -> None:  # noqa: B027
        """Free the engine's memory between rollouts."""

    def wake_up(self) -> None:  # noqa: B027
        """Undo sleep."""

    def close(self) -> None:  # noqa: B027
        """Release the engine."""
