"""Model loading (hub, local folder, tiny from config), LoRA, k-bit quantisation, references."""

from prefopt.models.loading import (
    build_tiny_model,
    disable_dropout,
    load_policy,
    load_pretrained,
    load_tokenizer,
    model_fingerprint,
    save_model,
)
from prefopt.models.logps import sequence_logps

__all__ = [
    "build_tiny_model",
    "disable_dropout",
    "load_policy",
    "load_pretrained",
    "load_tokenizer",
    "model_fingerprint",
    "save_model",
    "sequence_logps",
]
