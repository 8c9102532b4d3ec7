"""The ``hf`` engine: transformers' ``generate`` on the live policy
(:func:`prefopt.models.generation.generate`: batched, KV cache, left padding, stop at EOS).

It samples the very module it is given, so there is no copy of the weights and nothing to
sync: ``sync_weights`` only points it at the model it is handed (the same module in the online
trainer; another one in ExPO's alpha search, one model per alpha).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from prefopt.models.engines.base import RolloutEngine
from prefopt.models.generation import Samples, generate


class HFEngine(RolloutEngine):
    """``generate`` on the live model: the default engine."""

    name = "hf"
    samples_from_a_copy = False

    def sample(
        self,
        prompts: list[str],
        cfg: Any,
        seed: int,
        *,
        max_prompt_length: int = 64,
        with_logps: bool = False,
    ) -> Samples:
        return generate(
            self.model,
            self.tokenizer,
            prompts,
            cfg,
            self.device,
            seed,
            max_prompt_length=max_prompt_length,
            with_logps=with_logps,
        )

    def sync_weights(self, model: nn.Module) -> None:
        self.model = model
