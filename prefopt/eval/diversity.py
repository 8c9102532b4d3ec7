"""N-gram diversity of generated text: distinct-n and expectation-adjusted distinct n-grams.

Kirk et al. (2024), "Understanding the Effects of RLHF on LLM Generalisation and Diversity",
arXiv 2310.06452 (ALGORITHMS.md section 10), measure output diversity with EAD, the
expectation-adjusted distinct n-grams of Liu et al. (2022), "Rethinking and Refining the
Distinct Metric", arXiv 2202.13587 (eq. for EAD):

    EAD_n = N_distinct / ( V * (1 - ((V - 1) / V) ** C) )

with ``N_distinct`` the number of distinct n-grams, ``C`` the total number of n-grams and ``V``
the vocabulary size. The denominator is the expected number of distinct items among ``C``
uniform draws from ``V`` items, so EAD does not fall simply because a text is longer, which
plain distinct-n (``N_distinct / C``) does. Kirk et al. report the mean over n = 1..5.

Choices made here, each a parameter:

* Tokens are whitespace-separated words (``str.split()``). Kirk et al.'s released code also
  splits on spaces, after deleting ``.`` and newlines; we do not delete punctuation.
* N-grams never cross text boundaries; the n-grams of all texts in a set are pooled.
* ``V`` for n-grams (``ngram_space``): ``"vocab"`` uses ``V = vocab_size`` for every n, which
  is what Kirk et al.'s released code does (one ``vocab_size``, GPT-2's 50,257, for n = 1..5).
  ``"power"`` uses ``V = vocab_size ** n``, the number of possible n-grams, the literal reading
  of Liu et al.'s uniform-draw expectation applied to n-grams. With a realistic vocabulary both
  make ``V >> C`` for n >= 2, where EAD_n is close to distinct-n. With a small one (the world's
  265 tokens) ``"vocab"`` saturates for n >= 2: C n-grams cannot have more than C distinct ones,
  while ``V * (1 - ((V-1)/V) ** C)`` stops growing near V, so EAD_n grows with the text's
  length (uniformly random text: 1.02 at 6 words, 1.19 at 32) and a policy that lengthens its
  outputs looks more diverse. ``"power"`` keeps uniformly random text at 1 at every length;
  it is the default on the world (``eval.ead_ngram_space``), and every report names the space.
* ``ead_mean`` averages EAD_n over the orders that have at least one n-gram: an order with none
  (every text shorter than n) is undefined, not 0 -- otherwise texts shorter than 5 words would
  lose a fifth of their score for being short. A set with no n-grams at all (empty texts) has
  diversity 0.0 for both metrics, never NaN; ``distinct_n`` of an undefined order is 0.0.
* The denominator is computed as ``-V * expm1(C * log1p(-1/V))``, which is exact where the
  naive ``((V-1)/V) ** C`` rounds to 1 (``V = vocab_size ** 5``).

Per-input diversity is measured over the K samples of one prompt and averaged over prompts;
across-input diversity over one sample per prompt (the first), across prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

__all__ = [
    "across_input_diversity",
    "distinct_n",
    "ead",
    "ead_mean",
    "ngram_stats",
    "per_input_diversity",
]

NgramSpace = Literal["vocab", "power"]
NGRAM_SPACES = ("power", "vocab")


def _ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    tokens = text.split()
    return [tuple(tokens[k : k + n]) for k in range(len(tokens) - n + 1)]


def ngram_stats(texts: Sequence[str], n: int) -> tuple[int, int]:
    """``(distinct, total)`` n-gram counts of ``texts``, pooled over texts, whitespace tokens."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [g for text in texts for g in _ngrams(text, n)]
    return len(set(grams)), len(grams)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: distinct n-grams / total n-grams over ``texts`` (0.0 when there are none)."""
    distinct, total = ngram_stats(texts, n)
    return distinct / total if total else 0.0


def _expected_distinct(vocab: float, draws: int) -> float:
    """``V * (1 - ((V-1)/V) ** C)``: expected distinct items in C uniform draws from V."""
    if vocab == 1:
        return 1.0
    return -vocab * math.expm1(draws * math.log1p(-1.0 / vocab))


def ead(texts: Sequence[str], n: int, vocab_size: int, ngram_space: NgramSpace = "vocab") -> float:
    """EAD_n (Liu et al. 2022, arXiv 2202.13587; used by Kirk et al. 2024, arXiv 2310.06452).

    ``distinct / (V * (1 - ((V-1)/V) ** C))`` with ``V = vocab_size`` (``ngram_space="vocab"``,
    Kirk et al.'s code) or ``V = vocab_size ** n`` (``"power"``). 0.0 when there are no n-grams.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if ngram_space not in ("vocab", "power"):
        raise ValueError(f"ngram_space must be 'vocab' or 'power', got {ngram_space!r}")
    distinct, total = ngram_stats(texts, n)
    if total == 0:
        return 0.0
    vocab = float(vocab_size) if ngram_space == "vocab" else float(vocab_size) ** n
    return distinct / _expected_distinct(vocab, total)


def ead_mean(
    texts: Sequence[str], vocab_size: int, max_n: int = 5, ngram_space: NgramSpace = "vocab"
) -> float:
    """Mean of EAD_n over the orders n = 1..max_n that have n-grams (Kirk et al. report
    max_n = 5); 0.0 when ``texts`` have no words at all."""
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}")
    defined = [n for n in range(1, max_n + 1) if ngram_stats(texts, n)[1] > 0]
    if not defined:
        return 0.0
    return sum(ead(texts, n, vocab_size, ngram_space) for n in defined) / len(defined)


def _set_metrics(
    texts: Sequence[str], vocab_size: int, max_n: int, ngram_space: NgramSpace
) -> dict[str, float]:
    metrics = {f"distinct_{n}": distinct_n(texts, n) for n in range(1, max_n + 1)}
    metrics["distinct_mean"] = sum(metrics.values()) / max_n
    metrics["ead"] = ead_mean(texts, vocab_size, max_n, ngram_space)
    return metrics


def per_input_diversity(
    samples: Sequence[Sequence[str]],
    vocab_size: int,
    max_n: int = 5,
    ngram_space: NgramSpace = "vocab",
) -> dict[str, float]:
    """Diversity among the K samples of each prompt, averaged over prompts (Kirk et al.).

    Args:
        samples: ``samples[q]`` is the list of completions sampled for prompt ``q``.
        vocab_size: ``V`` of EAD (the tokenizer's vocabulary size).

    Returns:
        ``distinct_1 .. distinct_{max_n}``, ``distinct_mean`` (their mean) and ``ead`` (EAD
        averaged over n = 1..max_n), each the mean over prompts.
    """
    if not samples:
        raise ValueError("per_input_diversity needs at least one prompt")
    if any(len(group) == 0 for group in samples):
        raise ValueError("every prompt needs at least one sample")
    per_prompt = [_set_metrics(group, vocab_size, max_n, ngram_space) for group in samples]
    return {key: sum(m[key] for m in per_prompt) / len(per_prompt) for key in per_prompt[0]}


def across_input_diversity(
    samples: Sequence[Sequence[str]],
    vocab_size: int,
    max_n: int = 5,
    ngram_space: NgramSpace = "vocab",
) -> dict[str, float]:
    """Diversity of one sample per prompt (the first), across prompts (Kirk et al.).

    Same keys as :func:`per_input_diversity`.
    """
    if not samples:
        raise ValueError("across_input_diversity needs at least one prompt")
    if any(len(group) == 0 for group in samples):
        raise ValueError("every prompt needs at least one sample")
    return _set_metrics([group[0] for group in samples], vocab_size, max_n, ngram_space)
