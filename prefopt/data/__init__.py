"""Preference and SFT data: loading, validation, tokenization and batching.

The pipeline is ``load_records`` (file/folder/hub -> normalised records + `BadRows`), then
``tokenize_preference`` / ``tokenize_sft`` (records -> token ids with an exact prompt/completion
boundary), then a collator (ids -> padded tensors). See docs/data.md.
"""

from prefopt.data.collate import (
    PackedPairCollator,
    PreferenceCollator,
    PromptCollator,
    SFTCollator,
    UnpairedCollator,
    to_device,
)
from prefopt.data.loaders import (
    FORMATS,
    KINDS,
    detect_format,
    load_records,
    normalize_rows,
    pairs_to_unpaired,
)
from prefopt.data.records import BadRows, DataError, render_conversation
from prefopt.data.tokenize import tokenize_preference, tokenize_prompts, tokenize_sft

__all__ = [
    "to_device",
    "FORMATS",
    "KINDS",
    "BadRows",
    "DataError",
    "PackedPairCollator",
    "PreferenceCollator",
    "PromptCollator",
    "SFTCollator",
    "UnpairedCollator",
    "detect_format",
    "load_records",
    "normalize_rows",
    "pairs_to_unpaired",
    "render_conversation",
    "tokenize_preference",
    "tokenize_prompts",
    "tokenize_sft",
]
