"""A new pairwise loss in a user's own module: exponential loss on the DPO margin.

    loss = exp(-z),  z = beta * ((l(y_c) - l_ref(y_c)) - (l(y_r) - l_ref(y_r)))

Train it without touching prefopt:  prefopt train examples/custom_loss.yaml
(the recipe's `imports: [examples.custom_loss]` imports this module, which registers the loss).
"""

from dataclasses import dataclass

import torch

from prefopt import register_loss
from prefopt.losses import DPOConfig, PairwiseLoss


@dataclass
class ExponentialConfig(DPOConfig):
    name: str = "exponential"
    beta: float = 0.1


@register_loss("exponential", ExponentialConfig)
class ExponentialLoss(PairwiseLoss):
    """Boosting-style exponential surrogate of the 0-1 preference loss."""

    def pair_loss(self, policy, ref, batch):
        return torch.exp(-self.logits(policy, ref))
