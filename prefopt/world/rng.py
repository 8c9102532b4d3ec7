"""Local, seeded random streams (never the global RNG state).

Each dataset of the world draws from its own ``random.Random`` stream, seeded by a string that
combines the world seed and the stream name. String seeds are hashed with SHA-512 by
``random.Random`` (independently of ``PYTHONHASHSEED``), so streams are reproducible across
processes and platforms, and generating one dataset never shifts another.
"""

from __future__ import annotations

import random


def make_rng(seed: int, *stream: int | str) -> random.Random:
    """The random stream ``stream`` of world seed ``seed``."""
    return random.Random("prefopt-world|" + "|".join(str(s) for s in (seed, *stream)))
