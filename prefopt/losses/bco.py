"""BCO: binary classifier optimisation on unpaired, binary feedback.

Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment" (arXiv
2404.04656): train a binary classifier whose logit is the implicit reward
``r(x, y) = beta (log pi(y|x) - log pi_ref(y|x))`` to map desirable completions to 1 and
undesirable ones to 0, with the logit shifted by the reward shift ``delta``:

    L_BCO = -E_desirable[log sigmoid(r(x, y) - delta)]
            -E_undesirable[log sigmoid(-(r(x, y) - delta))],

``delta`` being the running mean of the implicit rewards seen in training. As TRL's
BCOTrainer (the reference implementation), ``delta`` is updated with each training micro-batch
*before* its loss is computed, is left as it is in evaluation, and under data parallelism
averages every process's rewards. TRL keeps the mean of every reward seen (Welford update with
each example counted); every micro-batch here holds the same number of examples (the trainer
drops incomplete batches), so that mean is the running mean of the micro-batch means kept here
(``delta_k = delta_{k-1} + (m_k - delta_{k-1}) / k``).

State across steps: ``delta`` and the number of micro-batches it averages are saved in every
checkpoint (the trainer's extra state), so a resumed run continues with the same ``delta``.

Default beta = 0.1 (TRL's BCOConfig). Not implemented: the paper's underlying distribution
matching (UDM, a density-ratio weight on undesirable examples from a prompt classifier trained
on sentence embeddings); ``loss.density_ratio: udm`` is refused with that message.

Metrics: ``delta`` (TRL's name), ``rewards/*`` and ``logps/*`` (``prefopt.losses.unpaired``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from prefopt.losses.unpaired import UnpairedConfig, UnpairedLoss
from prefopt.registry import register_loss


@dataclass
class BCOConfig(UnpairedConfig):
    name: str = "bco"
    beta: float = 0.1  # TRL's BCOConfig
    density_ratio: str = "none"  # "udm" (underlying distribution matching): not implemented

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.density_ratio == "udm":
            problems.append(
                "loss.density_ratio: udm (BCO's underlying distribution matching, a density "
                "ratio from a prompt classifier on sentence embeddings) is not implemented in "
                "prefopt; use none"
            )
        elif self.density_ratio != "none":
            problems.append(f"loss.density_ratio: {self.density_ratio!r} is not one of none")
        return problems


@register_loss("bco", BCOConfig, kind="unpaired")
class BCOLoss(UnpairedLoss):
    """BCO (Jung et al. 2024) with the running reward shift ``delta``; no UDM."""

    def __init__(self, config: BCOConfig):
        super().__init__(config)
        self.delta = torch.zeros((), dtype=torch.float64)  # running mean reward
        self.updates = torch.zeros((), dtype=torch.int64)  # micro-batches averaged in delta

    def example_loss(self, log_ratios, mismatched_log_ratios, desirable, training, batch_mean):
        rewards = self.beta * log_ratios
        if training:
            self.update_delta(batch_mean(rewards.detach().float().mean()))
        z = rewards - self.delta.to(rewards)
        loss = torch.where(desirable, -F.logsigmoid(z), -F.logsigmoid(-z))
        return loss, {"delta": self.delta.float()}

    def update_delta(self, batch_reward: Tensor) -> None:
        self.updates = self.updates + 1
        mean = batch_reward.detach().cpu().double()
        self.delta = self.delta + (mean - self.delta) / self.updates

    def state_dict(self) -> dict[str, Tensor]:
        return {"delta": self.delta.clone(), "updates": self.updates.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.delta = state["delta"].double().cpu()
        self.updates = state["updates"].long().cpu()
