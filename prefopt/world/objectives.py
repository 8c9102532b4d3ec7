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

Degenerate text earns no credit: an **informativeness** factor ``rho`` in [0, 1] (1 for honest
text, near 0 for loops, repetition, restatement, copied prompts, lists and filler) scales every
*credit* of the weighted objectives while every *penalty* counts in full:

    gold = sum_k [ rho * max(c_k, 0) + min(c_k, 0) ],   c_k = W[i, k] * objective_k

with ``W = reward_scale * INSTRUCTIONS[i].weights``. ``rho`` is the product of ten terms: nine
piecewise-linear ramps ``clip((x - lo) / (hi - lo), 0, 1)`` (``lo > hi`` for a decreasing one)
set from the measured distributions of behaviour text (``docs/world.md``):

* word variety    = distinct words / words,                     ramp (0.35, 0.6);
* phrase variety  = distinct word trigrams / trigrams,           ramp (0.5, 0.9) (1 below 3 words);
* pair variety    = distinct word bigrams / bigrams,             ramp (0.75, 0.9) (1 below 2 words);
* no dominant word: 1 - (count of the most frequent word - 1) / (words - 1), ramp (0.5, 0.7)
  (1 below 2 words);
* repetition      = (uses of a content or sentiment word beyond its second, plus words said
  twice in a row) / words,                                       ramp (0.15, 0.03);
* content density = topic content words / words,                ramp (0.25, 0.55) (a noun, verb or
  adjective of some topic; function, sentiment, banned and instruction words carry no content);
* substance       = number of topic content words,               ramp (0, 3);
* part-of-speech balance = words not of the most common open tag (ADJ, NOUN, VERB) / open-tag
  words, ramp (0.1, 0.25) (1 below 3 open-tag words): a list of nouns or a pile of adjectives
  is not an answer;
* adjective run   = the longest run of adjectives,               ramp (7, 4);

times ``1 -`` the fraction of the completion's word trigrams that occur in the prompt (copying).
Format 2 of the world had the first, second, fourth and sixth ramps and the copy term.

Prompts with no recognisable instruction use the mean weight row; with no recognisable topic
relevance is 0. Everything here is pure Python/NumPy and never raises on odd strings.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from prefopt.world.language import (
    ADJ,
    ALLOWED_TRANSITIONS,
    CONTENT_KINDS,
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
#: Word kinds whose repetition reads as repetition (function words recur in any text).
_WORDING_KINDS = frozenset({*CONTENT_KINDS, KIND_POS, KIND_NEG})


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


#: ``(lo, hi)`` of the ramps of the informativeness factor (see the module docstring).
WORD_VARIETY_RAMP = (0.35, 0.6)
PHRASE_VARIETY_RAMP = (0.5, 0.9)
NO_DOMINANT_WORD_RAMP = (0.5, 0.7)
CONTENT_DENSITY_RAMP = (0.25, 0.55)
PAIR_VARIETY_RAMP = (0.75, 0.9)
TAG_BALANCE_RAMP = (0.1, 0.25)
SUBSTANCE_RAMP = (0.0, 3.0)
REPETITION_RAMP = (0.15, 0.03)  # decreasing
ADJECTIVE_RUN_RAMP = (7.0, 4.0)  # decreasing: runs of up to 4 adjectives are free, 7 get nothing


def _ramp(x: float, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return min(1.0, max(0.0, (x - lo) / (hi - lo)))


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def informativeness_terms(
    lang: Language, words: list[str], prompt_words: tuple[str, ...]
) -> dict[str, float]:
    """The five raw measures behind :func:`informativeness` (before their ramps)."""
    n = len(words)
    if n == 0:
        return {
            "word_variety": 1.0,
            "phrase_variety": 1.0,
            "no_dominant_word": 1.0,
            "content_density": 0.0,
            "copy": 0.0,
            "pair_variety": 1.0,
            "tag_balance": 1.0,
            "adjective_run": 0.0,
            "substance": 0.0,
            "repetition": 0.0,
        }
    bigrams = _ngrams(words, 2)
    tags = [lang.info[w].tag if w in lang.info else None for w in words]
    open_tags = Counter(t for t in tags if t is not None and t not in FUNCTION_TAGS)
    n_open = sum(open_tags.values())
    minority = n_open - max(open_tags.values(), default=0)
    run = longest = 0
    for tag in tags:
        run = run + 1 if tag == ADJ else 0
        longest = max(longest, run)
    trigrams = _ngrams(words, 3)
    content = sum(1 for w in words if _is_topic_word(lang, w))
    prompt_trigrams = set(_ngrams(list(prompt_words), 3))
    copied = sum(1 for g in trigrams if g in prompt_trigrams)
    top = Counter(words).most_common(1)[0][1]
    return {
        "word_variety": len(set(words)) / n,
        "phrase_variety": len(set(trigrams)) / len(trigrams) if trigrams else 1.0,
        "no_dominant_word": 1.0 - (top - 1) / (n - 1) if n > 1 else 1.0,
        "content_density": content / n,
        "copy": copied / len(trigrams) if trigrams else 0.0,
        "pair_variety": len(set(bigrams)) / len(bigrams) if bigrams else 1.0,
        "tag_balance": minority / n_open if n_open >= 3 else 1.0,
        "adjective_run": float(longest),
        "substance": float(content),
        "repetition": _repetitions(lang, words) / n,
    }


def _repetitions(lang: Language, words: list[str]) -> int:
    """Uses of a content or sentiment word beyond its second, plus words said twice in a row."""
    counts = Counter(w for w in words if w in lang.info and lang.info[w].kind in _WORDING_KINDS)
    again = sum(1 for a, b in zip(words[:-1], words[1:], strict=True) if a == b)
    return sum(max(0, c - 2) for c in counts.values()) + again


def _is_topic_word(lang: Language, word: str) -> bool:
    info = lang.info.get(word)
    return info is not None and info.topic is not None


def informativeness(lang: Language, words: list[str], prompt_words: tuple[str, ...]) -> float:
    """``rho`` in [0, 1]: the share of its credit a completion keeps (module docstring)."""
    if not words:
        return 0.0
    t = informativeness_terms(lang, words, prompt_words)
    return (
        _ramp(t["word_variety"], WORD_VARIETY_RAMP)
        * _ramp(t["phrase_variety"], PHRASE_VARIETY_RAMP)
        * _ramp(t["no_dominant_word"], NO_DOMINANT_WORD_RAMP)
        * _ramp(t["content_density"], CONTENT_DENSITY_RAMP)
        * (1.0 - t["copy"])
        * _ramp(t["pair_variety"], PAIR_VARIETY_RAMP)
        * _ramp(t["tag_balance"], TAG_BALANCE_RAMP)
        * _ramp(t["adjective_run"], ADJECTIVE_RUN_RAMP)
        * _ramp(t["substance"], SUBSTANCE_RAMP)
        * _ramp(t["repetition"], REPETITION_RAMP)
    )


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


#: Objectives whose credit a judge discounts for degenerate text (all but safety, a penalty).
JUDGED = tuple(name for name in OBJECTIVE_NAMES if name != "safety")


def judged_objectives(objectives: list[float], rho: float) -> list[float]:
    """The objectives as a judge rates them: relevance, length, fluency and positivity of a
    degenerate text discounted by its informativeness ``rho``, safety as it is. With these
    ratings the instruction-dependent linear weighting reproduces the gold reward wherever the
    positivity term is a credit (99.4% of the default test pairs' gold signs, against 91.4%
    with the raw objectives); ArmoRM on the world regresses onto them."""
    return [
        rho * value if name in JUDGED else value
        for name, value in zip(OBJECTIVE_NAMES, objectives, strict=True)
    ]


def gold_from_objectives(objectives: list[float], weights: np.ndarray, rho: float = 1.0) -> float:
    """``sum_k rho * max(c_k, 0) + min(c_k, 0)`` with ``c_k = weights_k * objectives_k``."""
    total = 0.0
    for w, o in zip(weights, objectives, strict=True):
        c = float(w) * o
        total += rho * c if c > 0 else c
    return float(total)


def score_completion(
    lang: Language, prompt: PromptInfo, completion: object, reward_scale: float, penalise: bool
) -> tuple[float, list[float], float]:
    """``(gold, objectives, rho)`` of one completion; ``penalise=False`` fixes rho at 1 (the
    world before format version 2, kept as ``WorldConfig.informativeness=false``)."""
    objectives = objective_vector(lang, prompt, completion)
    words = completion_words(completion)
    rho = informativeness(lang, words, prompt.words) if penalise else 1.0
    weights = weight_row(reward_scale, prompt.instruction)
    return gold_from_objectives(objectives, weights, rho), objectives, rho
