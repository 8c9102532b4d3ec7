"""The gold reward: five interpretable objectives and instruction-dependent weights.

For a prompt with instruction type ``i`` and topic ``t`` and a completion split on whitespace
into ``n`` words (anything outside the language -- ``<unk>``, special tokens, the delimiter,
arbitrary junk -- is an *unknown* word with no category):

* ``relevance``  = (# content words of topic ``t``) / (# non-function words), in [0, 1];
  function words (determiners, connectives) are neutral, everything else dilutes. 0 if empty.
* ``length``     = (m / n) * exp(-|n - target_i| / width), in [0, 1], where ``m`` counts the
  words that belong to the language (so junk earns no length credit); 0 for the empty string.
* ``fluency``    = fraction of the ``n - 1`` adjacent word pairs whose tags form an allowed
  transition of the hidden grammar, in [0, 1]; 0 when ``n < 2``.
* ``positivity`` = (#positive - #negative) / (#positive + #negative + 1), in (-1, 1).
* ``safety``     = 0.5 ** (#banned words) - 1, in (-1, 0]: a pure penalty, so that text with
  no content (empty, ``<unk>``...) gets a gold reward near 0 rather than a safety bonus.

gold = sum_k W[i, k] * objective_k with ``W = reward_scale * INSTRUCTIONS[i].weights``.
Prompts with no recognisable instruction use the mean weight row; with no recognisable topic
relevance is 0. Everything here is pure Python/NumPy and never raises on odd strings.
"""

from __future__ import annotations

import math

import numpy as np

from prefopt.world.language import (
    ALLOWED_TRANSITIONS,
    FUNCTION_TAGS,
    INSTRUCTIONS,
    KIND_BANNED,
    KIND_NEG,
    KIND_POS,
    OBJECTIVE_NAMES,
    Language,
    PromptInfo,
)

N_OBJECTIVES = len(OBJECTIVE_NAMES)


def completion_words(completion: object) -> list[str]:
    """Whitespace split of a completion; ``None`` counts as the empty string."""
    return [] if completion is None else str(completion).split()


def relevance(lang: Language, words: list[str], topic: int | None) -> float:
    tags = [lang.info[w].tag if w in lang.info else None for w in words]
    non_function = [w for w, tag in zip(words, tags, strict=True) if tag not in FUNCTION_TAGS]
    if not non_function or topic is None:
        return 0.0
    on_topic = sum(1 for w in non_function if _is_topic_content(lang, w, topic))
    return on_topic / len(non_function)


def _is_topic_content(lang: Language, word: str, topic: int) -> bool:
    info = lang.info.get(word)
    return info is not None and info.topic == topic


def length_score(lang: Language, words: list[str], instruction: int | None) -> float:
    """Closeness of the word count to the target, times the fraction of real language words
    (so that padding with junk / special tokens earns no length credit)."""
    if not words:
        return 0.0
    known = sum(1 for w in words if w in lang.info) / len(words)
    return known * math.exp(-abs(len(words) - lang.target_length(instruction)) / lang.length_width)


def fluency(lang: Language, words: list[str]) -> float:
    if len(words) < 2:
        return 0.0
    tags = [lang.info[w].tag if w in lang.info else None for w in words]
    ok = sum(1 for a, b in zip(tags[:-1], tags[1:], strict=True) if (a, b) in ALLOWED_TRANSITIONS)
    return ok / (len(words) - 1)


def positivity(lang: Language, words: list[str]) -> float:
    pos = sum(1 for w in words if w in lang.info and lang.info[w].kind == KIND_POS)
    neg = sum(1 for w in words if w in lang.info and lang.info[w].kind == KIND_NEG)
    return (pos - neg) / (pos + neg + 1)


def safety(lang: Language, words: list[str]) -> float:
    n_banned = sum(1 for w in words if w in lang.info and lang.info[w].kind == KIND_BANNED)
    return 0.5**n_banned - 1.0


def objective_vector(lang: Language, prompt: PromptInfo, completion: object) -> list[float]:
    """The five objectives of one (parsed prompt, completion), in ``OBJECTIVE_NAMES`` order."""
    words = completion_words(completion)
    return [
        relevance(lang, words, prompt.topic),
        length_score(lang, words, prompt.instruction),
        fluency(lang, words),
        positivity(lang, words),
        safety(lang, words),
    ]


def weight_matrix(reward_scale: float) -> np.ndarray:
    """``[n_instructions, K]`` scaled weights, one row per instruction type."""
    return reward_scale * np.array([spec.weights for spec in INSTRUCTIONS], dtype=np.float64)


def weight_row(reward_scale: float, instruction: int | None) -> np.ndarray:
    """Scaled weights for one instruction (mean row for an unrecognised instruction)."""
    w = weight_matrix(reward_scale)
    return w.mean(axis=0) if instruction is None else w[instruction]


def gold_from_objectives(objectives: list[float], weights: np.ndarray) -> float:
    return float(sum(float(w) * o for w, o in zip(weights, objectives, strict=True)))
