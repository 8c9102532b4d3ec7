"""Datasets of the world: prompts, SFT demonstrations, labelled preference pairs.

Splits
------
* ``train`` / ``test``: prompts over the in-distribution topics; a prompt string belongs to the
  test split iff a hash of (seed, prompt) falls below ``test_prompt_fraction``, so train and
  test prompts are disjoint yet identically distributed.
* ``ood``: prompts over the held-out topics (the last ``n_ood_topics``). Words of held-out
  topics never occur anywhere in train/test data (neither in prompts nor as distractors).

Unpaired data (KTO, BCO)
------------------------
One behaviour response per prompt, of quality drawn as the pairs' are; it is *desirable* iff its
gold reward exceeds the median gold reward of the train split's responses (one bar for every
split, so about half of the train responses are desirable). The train split holds as many
responses as the train pairs do (two per pair), and likewise for test and ood.

Labels
------
Two behaviour responses are drawn for the same prompt, with qualities ``q1, q2`` uniform in
``[pair_quality_min, pair_quality_max]`` (for ``hard_pair_fraction`` of pairs ``q1 = q2``, which
yields small gold gaps). The first is preferred with Bradley-Terry probability
``sigmoid((R1 - R2) / label_temperature)``; chosen/rejected are the *labelled* order, so the chosen
response has the lower gold reward for some pairs (label noise). In ``long_tail`` mode each
distinct train pair is compared ``c`` times, ``c ~ Zipf(long_tail_exponent)`` capped at
``long_tail_max_count``, each comparison labelled independently (test/ood pairs are always
compared once).

All randomness comes from ``numpy.random.default_rng([seed, stream])`` with one stream per
dataset, so each dataset is reproducible independently of the others.
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics
from collections.abc import Callable
from typing import Any

from prefopt.world.behaviour import behaviour_response
from prefopt.world.io import FLOAT_DECIMALS
from prefopt.world.language import INSTRUCTIONS, Language, PromptInfo
from prefopt.world.rng import make_rng

PAIR_SPLITS = ("train", "test", "ood")

#: ``(parsed prompt, completion) -> (gold, objectives, informativeness)``
ScoreFn = Callable[[PromptInfo, str], tuple[float, list[float], float]]


def rounded(x: float) -> float:
    """Floats stored in records are rounded so that JSON files are stable and round-trip."""
    return round(float(x), FLOAT_DECIMALS)


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


# --------------------------------------------------------------------------- prompts
def is_test_prompt(seed: int, prompt: str, fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}|{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_topics(lang: Language, split: str) -> list[int]:
    return lang.ood_topics if split == "ood" else lang.in_distribution_topics


def sample_prompt(lang: Language, split: str, rng: random.Random) -> str:
    """A random prompt of ``split`` (rejection on the hash-based train/test membership)."""
    topics = split_topics(lang, split)
    cfg = lang.config
    for _ in range(10_000):
        word = rng.choice(lang.instruction_words[rng.randrange(len(INSTRUCTIONS))])
        prompt = lang.format_prompt(word, rng.sample(lang.topic_content(rng.choice(topics)), 2))
        if split == "ood" or is_test_prompt(cfg.seed, prompt, cfg.test_prompt_fraction) == (
            split == "test"
        ):
            return prompt
    raise RuntimeError("could not sample a prompt for split " + split)


def eval_prompts(lang: Language, split: str, n: int) -> list[str]:
    """``n`` distinct held-out prompts (fewer if the split has fewer distinct prompts)."""
    rng = make_rng(lang.config.seed, f"eval_{split}")
    seen: dict[str, None] = {}
    for _ in range(50 * n):
        if len(seen) >= n:
            break
        seen.setdefault(sample_prompt(lang, split, rng), None)
    return list(seen)


#: Graded distribution shifts of the evaluation prompts, nearest first (Kirk et al. 2024, arXiv
#: 2310.06452, find RLHF's advantage over SFT grows with the shift): ``long``, prompts of four
#: topic words instead of two (in-distribution topics); ``distractor``, two words of an
#: in-distribution topic and one of a held-out topic; ``ood``, held-out topics (the ``ood``
#: split); ``ood_long``, held-out topics and four words.
SHIFTS = ("long", "distractor", "ood", "ood_long")


def shifted_prompts(lang: Language, shift: str, n: int) -> list[str]:
    """``n`` distinct evaluation prompts under ``shift`` (one of :data:`SHIFTS`); each shift
    draws from its own random stream, so the other datasets do not change."""
    if shift == "ood":
        return eval_prompts(lang, "ood", n)
    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; shifts: {', '.join(SHIFTS)}")
    rng = make_rng(lang.config.seed, f"eval_shift_{shift}")
    topics = lang.ood_topics if shift == "ood_long" else lang.in_distribution_topics
    seen: dict[str, None] = {}
    for _ in range(50 * n):
        if len(seen) >= n:
            break
        word = rng.choice(lang.instruction_words[rng.randrange(len(INSTRUCTIONS))])
        content = lang.topic_content(rng.choice(topics))
        if shift == "distractor":
            unseen = lang.topic_content(rng.choice(lang.ood_topics))
            words = [*rng.sample(content, 2), rng.choice(unseen)]
        else:
            words = rng.sample(content, 4)
        seen.setdefault(lang.format_prompt(word, words), None)
    return list(seen)


def prompt_fields(lang: Language, info: PromptInfo) -> dict[str, str]:
    instr = "unknown" if info.instruction is None else INSTRUCTIONS[info.instruction].name
    return {"instruction": instr, "topic": lang.topic_name(info.topic)}


# --------------------------------------------------------------------------- SFT
def sft_records(lang: Language, split: str, n: int, score: ScoreFn) -> list[dict[str, Any]]:
    rng = make_rng(lang.config.seed, f"sft_{split}")
    topics = split_topics(lang, split)
    out = []
    for _ in range(n):
        prompt = sample_prompt(lang, split, rng)
        info = lang.parse_prompt(prompt)
        completion = behaviour_response(lang, info, lang.config.sft_quality, rng, topics)
        gold, _, _ = score(info, completion)
        meta = {"gold": rounded(gold), **prompt_fields(lang, info)}
        out.append({"prompt": prompt, "completion": completion, "metadata": meta})
    return out


# --------------------------------------------------------------------------- pairs
def _draw_qualities(lang: Language, rng: random.Random) -> tuple[float, float]:
    cfg = lang.config
    q1 = rng.uniform(cfg.pair_quality_min, cfg.pair_quality_max)
    if rng.random() < cfg.hard_pair_fraction:
        return q1, q1
    return q1, (rng.uniform(cfg.pair_quality_min, cfg.pair_quality_max))


def _draw_pair(lang: Language, split: str, rng: random.Random, score: ScoreFn) -> dict[str, Any]:
    """A prompt and two distinct responses with their gold rewards and objectives."""
    topics = split_topics(lang, split)
    prompt = sample_prompt(lang, split, rng)
    info = lang.parse_prompt(prompt)
    q1, q2 = _draw_qualities(lang, rng)
    r1 = behaviour_response(lang, info, q1, rng, topics)
    r2 = r1
    for _ in range(20):
        r2 = behaviour_response(lang, info, q2, rng, topics)
        if r2 != r1:
            break
    (g1, o1, rho1), (g2, o2, rho2) = score(info, r1), score(info, r2)
    return {
        "prompt": prompt,
        "info": info,
        "responses": (r1, r2),
        "gold": (g1, g2),
        "objectives": (o1, o2),
        "informativeness": (rho1, rho2),
        "quality": (q1, q2),
    }


def _label(pair: dict[str, Any], rng: random.Random, temperature: float) -> dict[str, Any]:
    """One Bradley-Terry labelled comparison of a drawn pair, as a preference record."""
    g1, g2 = pair["gold"]
    first = rng.random() < sigmoid((g1 - g2) / temperature)
    c, r = (0, 1) if first else (1, 0)
    gap = pair["gold"][c] - pair["gold"][r]
    meta = {
        "gold_chosen": rounded(pair["gold"][c]),
        "gold_rejected": rounded(pair["gold"][r]),
        "gold_gap": rounded(gap),
        "label_agrees_with_gold": bool(gap >= 0),
        "objectives_chosen": [rounded(x) for x in pair["objectives"][c]],
        "objectives_rejected": [rounded(x) for x in pair["objectives"][r]],
        "informativeness_chosen": rounded(pair["informativeness"][c]),
        "informativeness_rejected": rounded(pair["informativeness"][r]),
        "quality_chosen": rounded(pair["quality"][c]),
        "quality_rejected": rounded(pair["quality"][r]),
    }
    return {
        "prompt": pair["prompt"],
        "chosen": pair["responses"][c],
        "rejected": pair["responses"][r],
        "margin": None,
        "metadata": meta,
    }


def comparison_count(lang: Language, split: str, rng: random.Random) -> int:
    cfg = lang.config
    if split != "train" or cfg.comparison_counts == "uniform":
        return 1
    counts = range(1, cfg.long_tail_max_count + 1)
    return rng.choices(counts, weights=[c**-cfg.long_tail_exponent for c in counts])[0]


def preference_records(lang: Language, split: str, n: int, score: ScoreFn) -> list[dict[str, Any]]:
    """``n`` labelled comparisons for ``split`` (repeats of a pair share its ``pair_id``)."""
    rng = make_rng(lang.config.seed, f"pairs_{split}")
    records: list[dict[str, Any]] = []
    pair_index = 0
    while len(records) < n:
        pair = _draw_pair(lang, split, rng, score)
        count = min(comparison_count(lang, split, rng), n - len(records))
        for k in range(count):
            rec = _label(pair, rng, lang.config.label_temperature)
            rec["metadata"].update(prompt_fields(lang, pair["info"]))
            rec["metadata"].update(
                {
                    "pair_id": f"{split}-{pair_index:06d}",
                    "n_comparisons": count,
                    "comparison_index": k,
                }
            )
            records.append(rec)
        pair_index += 1
    if lang.config.comparison_counts == "long_tail" and split == "train":
        rng.shuffle(records)
    return records


# --------------------------------------------------------------------------- unpaired
def unpaired_samples(lang: Language, split: str, n: int, score: ScoreFn) -> list[dict[str, Any]]:
    """``n`` behaviour responses, one per prompt, of quality ``q ~ U[pair_quality_min,
    pair_quality_max]`` (the mixture the pairs are drawn from), with their gold reward in
    ``metadata.gold``; :func:`label_unpaired` decides which are desirable."""
    rng = make_rng(lang.config.seed, f"unpaired_{split}")
    topics = split_topics(lang, split)
    cfg = lang.config
    out = []
    for _ in range(n):
        prompt = sample_prompt(lang, split, rng)
        info = lang.parse_prompt(prompt)
        quality = rng.uniform(cfg.pair_quality_min, cfg.pair_quality_max)
        completion = behaviour_response(lang, info, quality, rng, topics)
        gold, _, _ = score(info, completion)
        meta = {"gold": rounded(gold), "quality": rounded(quality), **prompt_fields(lang, info)}
        out.append({"prompt": prompt, "completion": completion, "metadata": meta})
    return out


def desirability_threshold(samples: list[dict[str, Any]]) -> float:
    """The bar of the desirability rule: the median gold reward of ``samples`` (the train
    split's), so that about half of the behaviour responses are desirable."""
    return rounded(statistics.median(r["metadata"]["gold"] for r in samples))


def label_unpaired(samples: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """Unpaired records: a response is desirable iff its gold reward exceeds ``threshold``
    (strictly); the threshold is kept in ``metadata.threshold``."""
    return [
        {
            **r,
            "desirable": r["metadata"]["gold"] > threshold,
            "metadata": {**r["metadata"], "threshold": threshold},
        }
        for r in samples
    ]


# --------------------------------------------------------------------------- Bayes accuracy
def bayes_accuracy(records: list[dict[str, Any]], temperature: float) -> dict[str, float]:
    """Best achievable accuracy on these labels, given the gold rewards.

    ``expected``: mean over records of ``max(p, 1 - p)`` with ``p = sigmoid(gold_gap / T)`` --
    the expected accuracy of the Bayes-optimal predictor (the gold reward itself) on fresh
    labels. ``empirical_label_agreement``: fraction of records whose label agrees with the sign
    of the gold gap (the gold reward's accuracy on *these* labels).
    """
    if not records:
        return {"expected": float("nan"), "empirical_label_agreement": float("nan"), "n": 0.0}
    probs = [sigmoid(r["metadata"]["gold_gap"] / temperature) for r in records]
    agree = [bool(r["metadata"]["label_agrees_with_gold"]) for r in records]
    return {
        "expected": sum(max(p, 1 - p) for p in probs) / len(records),
        "empirical_label_agreement": sum(agree) / len(records),
        "n": float(len(records)),
    }
