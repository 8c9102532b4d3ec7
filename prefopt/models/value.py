"""Value models for PPO: a value at every position of a sequence.

Two shapes (``value.mode``):

* ``separate``: its own transformer body and a linear head, initialised from the reward model
  when that is a sequence classifier of the same architecture (Huang et al., "The N+
  implementation details of RLHF with PPO": the value model starts as the reward model; its
  ``score`` head becomes the value head), else from the policy's body with a zero head;
* ``shared``: a linear head on the policy's last hidden state (one forward gives logits and
  values; the head trains with the policy's optimiser).

The value of position t is the expected return after the token at t has been emitted, read at
the same column as the log-prob of token t+1 is computed from (``values[:, :-1]`` pairs with
``rollout_token_logps``' columns).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefopt.models.generation import position_ids
from prefopt.models.loading import disable_dropout, fuse_activations

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueModel(nn.Module):
    """A transformer body (``AutoModel``) and a linear head: ``[R, T]`` ids -> ``[R, T]`` values."""

    def __init__(self, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
        ).last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()


def _hidden_size(config: Any) -> int:
    for name in ("hidden_size", "n_embd", "d_model"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ValueError(f"cannot tell the hidden size of {type(config).__name__}")


def zero_head(hidden_size: int) -> nn.Linear:
    """A value head that predicts 0 everywhere at first (no random initial advantages)."""
    head = nn.Linear(hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def value_model_from_reward_model(path: str | Path) -> ValueModel:
    """The reward model's body and its scalar ``score`` head (a sequence classifier)."""
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1)
    score = getattr(rm, "score", None)
    if not isinstance(score, nn.Linear):
        raise ValueError(f"{path}: the reward model has no linear `score` head to start from")
    head = nn.Linear(score.in_features, 1, bias=True)
    with torch.no_grad():
        head.weight.copy_(score.weight.float())
        head.bias.copy_(score.bias.float() if score.bias is not None else torch.zeros(1))
    model = ValueModel(rm.base_model, head)
    disable_dropout(model)
    fuse_activations(model)
    return model


def value_model_from_policy(path: str | Path) -> ValueModel:
    """The policy checkpoint's body (``AutoModel``) with a zero value head."""
    from transformers import AutoModel

    body = AutoModel.from_pretrained(str(path))
    model = ValueModel(body, zero_head(_hidden_size(body.config)))
    disable_dropout(model)
    fuse_activations(model)
    return model


def same_architecture(reward_model_path: str | Path, policy_path: str | Path) -> bool:
    """Is the reward model a sequence classifier of the policy's architecture, size and
    vocabulary (so it can read the policy's token ids)? A reward model with another tokenizer
    still scores text; only the critic then starts from the policy."""
    from transformers import AutoConfig

    try:
        rm, pol = (
            AutoConfig.from_pretrained(str(reward_model_path)),
            AutoConfig.from_pretrained(str(policy_path)),
        )
    except (OSError, ValueError):
        return False
    archs = rm.architectures or []
    return (
        rm.model_type == pol.model_type
        and _hidden_size(rm) == _hidden_size(pol)
        and getattr(rm, "vocab_size", None) == getattr(pol, "vocab_size", None)
        and any(a.endswith("ForSequenceClassification") for a in archs)
    )


class SharedValueHead(nn.Module):
    """``value.mode: shared``: a linear head on the policy's last hidden state."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.head = zero_head(hidden_size)

    def forward(self, last_hidden: Tensor) -> Tensor:
        return self.head(last_hidden.to(self.head.weight.dtype)).squeeze(-1).float()


def policy_hidden_size(model: nn.Module) -> int:
    return _hidden_size(model.config)  # type: ignore[arg-type]
