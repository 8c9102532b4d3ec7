"""Synthetic preference world with a known gold reward (``docs/world.md``).

Every prefopt recipe runs offline on this world by default, and every evaluation reports the
gold reward of generated text rather than a falling loss. Typical use::

    from prefopt.world import WorldConfig, build_world

    world = build_world(WorldConfig(seed=0), cache_dir="runs/.worlds")
    tok = world.tokenizer()
    pairs = world.preference_records("train")
    rewards = world.score(prompts, completions)   # [N] float32 gold reward
"""

from prefopt.world.config import WorldConfig, coerce_config, config_hash
from prefopt.world.io import read_jsonl, write_jsonl
from prefopt.world.language import (
    DELIMITER,
    INSTRUCTION_NAMES,
    INSTRUCTIONS,
    OBJECTIVE_NAMES,
    SPECIAL_TOKENS,
)

# World (and its tokenizer) import transformers: load them on first use so that validating a
# recipe, which needs only WorldConfig, stays fast.
_LAZY = {"World", "build_world", "world_folder"}


def __getattr__(name: str):
    if name in _LAZY:
        from prefopt.world import world

        return getattr(world, name)
    raise AttributeError(name)


__all__ = [
    "DELIMITER",
    "INSTRUCTIONS",
    "INSTRUCTION_NAMES",
    "OBJECTIVE_NAMES",
    "SPECIAL_TOKENS",
    "World",
    "WorldConfig",
    "build_world",
    "coerce_config",
    "config_hash",
    "read_jsonl",
    "world_folder",
    "write_jsonl",
]
