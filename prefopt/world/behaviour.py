"""Non-neural behaviour policies: a stochastic response generator with a quality knob q.

``behaviour_response(q)`` walks the hidden grammar and picks words:

* length: with probability q it is near the instruction's target (Gaussian noise whose width
  shrinks with q), otherwise uniform in ``[1, max_response_words]``;
* next tag: with probability q an allowed successor of the previous tag, else any tag;
* content words: with probability q from the prompt's topic (sometimes copying a prompt word),
  else from another topic; with probability q a content or sentiment word the response has
  not used yet (a good writer varies their wording; format 3 of the world); with probability
  ``0.1 (1 - q)`` a word is replaced by random junk
  (any word, e.g. an instruction word);
* adjective slots sometimes hold sentiment words, positive with probability ``0.5 + 0.45 q``
  (and more often for the ``cheer`` instruction); noun slots hold a banned word with
  probability ``0.3 (1 - q)^2``.

Even q = 1 is not optimal (sentiment words dilute relevance, the policy is only loosely aware of
the instruction weights), so SFT on q ~ 0.75 demonstrations leaves room for preference
optimisation. :func:`oracle_response` builds a near-optimal response for reference.
"""

from __future__ import annotations

import random

from prefopt.world.language import (
    ADJ,
    ALLOWED_TRANSITIONS,
    CONJ,
    DET,
    INSTRUCTION_NAMES,
    KIND_ADJ,
    KIND_NOUN,
    KIND_VERB,
    NOUN,
    START_TAGS,
    TAGS,
    VERB,
    Language,
    PromptInfo,
)
from prefopt.world.objectives import score_completion

SUCCESSORS = {a: [b for b in TAGS if (a, b) in ALLOWED_TRANSITIONS] for a in TAGS}
TAG_KIND = {NOUN: KIND_NOUN, VERB: KIND_VERB, ADJ: KIND_ADJ}
CHEER = INSTRUCTION_NAMES.index("cheer")
CAREFUL = INSTRUCTION_NAMES.index("careful")


def _choice(rng: random.Random, items: list[str] | tuple[str, ...]) -> str:
    return items[int(rng.random() * len(items))]


def sample_length(lang: Language, prompt: PromptInfo, q: float, rng: random.Random) -> int:
    m = lang.config.max_response_words
    if rng.random() < q:
        n = round(lang.target_length(prompt.instruction) + rng.gauss(0.0, 1.0 + 3.0 * (1 - q)))
    else:
        n = rng.randint(1, m)
    return int(min(max(n, 1), m))


def sample_tags(n: int, q: float, rng: random.Random) -> list[str]:
    tags = [_choice(rng, START_TAGS) if rng.random() < q else _choice(rng, TAGS)]
    while len(tags) < n:
        pool = SUCCESSORS[tags[-1]] if rng.random() < q else list(TAGS)
        tags.append(_choice(rng, pool))
    return tags


def _varied_choice(rng: random.Random, items: list[str], q: float, used: set[str]) -> str:
    """A word of ``items``; with probability ``q`` one the response has not used yet (a good
    writer varies their wording), when there is one."""
    if rng.random() < q:
        fresh = [w for w in items if w not in used]
        if fresh:
            return _choice(rng, fresh)
    return _choice(rng, items)


def _content_word(
    lang: Language,
    tag: str,
    prompt: PromptInfo,
    q: float,
    topics: list[int],
    rng: random.Random,
    used: set[str],
) -> str:
    kind = TAG_KIND[tag]
    topic = prompt.topic
    if topic is not None and rng.random() < q:
        copies = [w for w in prompt.words if w in lang.info and lang.info[w].kind == kind]
        if copies and rng.random() < 0.3:
            fresh = [w for w in copies if w not in used]
            if fresh or rng.random() >= q:  # a good writer does not copy the same word again
                return _choice(rng, fresh or copies)
        return _varied_choice(rng, lang.topic_words[topic][kind], q, used)
    others = [t for t in topics if t != topic] or topics
    return _choice(rng, lang.topic_words[others[int(rng.random() * len(others))]][kind])


def _word_for_tag(
    lang: Language,
    tag: str,
    prompt: PromptInfo,
    q: float,
    topics: list[int],
    rng: random.Random,
    used: set[str],
) -> str:
    if tag == DET:
        return _choice(rng, lang.determiners)
    if tag == CONJ:
        return _choice(rng, lang.connectives)
    if tag == ADJ:
        p_sent = 0.3 + (0.4 * q if prompt.instruction == CHEER else 0.0)
        if rng.random() < p_sent:
            positive = rng.random() < 0.5 + 0.45 * q
            return _varied_choice(rng, lang.positive if positive else lang.negative, q, used)
    if tag == NOUN:
        p_ban = 0.3 * (1 - q) ** 2 * (0.5 if prompt.instruction == CAREFUL else 1.0)
        if rng.random() < p_ban:
            return _choice(rng, lang.banned)
    return _content_word(lang, tag, prompt, q, topics, rng, used)


def junk_pool(lang: Language, topics: list[int]) -> list[str]:
    """Words a low-quality policy may emit at random (never words of excluded topics)."""
    key = tuple(sorted(set(topics)))
    if key not in lang.junk_cache:
        lang.junk_cache[key] = [
            w for w, info in lang.info.items() if info.topic is None or info.topic in key
        ]
    return lang.junk_cache[key]


def behaviour_response(
    lang: Language,
    prompt: PromptInfo,
    q: float,
    rng: random.Random,
    topics: list[int],
) -> str:
    """One response of behaviour quality ``q``; off-topic words come only from ``topics``."""
    q = float(min(max(q, 0.0), 1.0))
    n = sample_length(lang, prompt, q, rng)
    junk = junk_pool(lang, topics)
    words: list[str] = []
    for tag in sample_tags(n, q, rng):
        if rng.random() < 0.1 * (1 - q):
            words.append(_choice(rng, junk))
        else:
            words.append(_word_for_tag(lang, tag, prompt, q, topics, rng, set(words)))
    return " ".join(words)


def random_text(lang: Language, rng: random.Random, topics: list[int] | None = None) -> str:
    """Uniformly random words of the language, uniform length: an untrained model's output."""
    pool = junk_pool(lang, topics if topics is not None else list(range(lang.n_topics)))
    n = rng.randint(1, lang.config.max_response_words)
    return " ".join(_choice(rng, pool) for _ in range(n))


def _oracle_candidate(lang: Language, topic: int, n: int, n_sent: int, sentiment: list[str]) -> str:
    """An alternating on-topic ``NOUN VERB NOUN ...`` chain of ``n - n_sent`` words with
    ``n_sent`` sentiment adjectives spread over its nouns (``ADJ NOUN VERB ADJ NOUN ...``:
    one before each noun in turn, then a second one, never a long adjective run)."""
    nouns = lang.topic_words[topic][KIND_NOUN]
    verbs = lang.topic_words[topic][KIND_VERB]
    chain = [
        (nouns if i % 2 == 0 else verbs)[(i // 2) % len(nouns if i % 2 == 0 else verbs)]
        for i in range(n - n_sent)
    ]
    n_nouns = (len(chain) + 1) // 2
    before = [n_sent // n_nouns + (1 if j < n_sent % n_nouns else 0) for j in range(n_nouns)]
    words: list[str] = []
    used = 0
    for i, word in enumerate(chain):
        if i % 2 == 0:
            for _ in range(before[i // 2]):
                words.append(sentiment[used % len(sentiment)])
                used += 1
        words.append(word)
    return " ".join(words)


def oracle_response(lang: Language, prompt: PromptInfo, reward_scale: float) -> str:
    """A near-optimal response: fully fluent, on topic, at the target length, with the best
    number of positive (or, where the instruction weighs positivity negatively, negative)
    adjectives for the instruction's weights (searched exhaustively)."""
    topic = prompt.topic if prompt.topic is not None else 0
    n = max(2, round(lang.target_length(prompt.instruction)))
    best, best_gold = "", -float("inf")
    for n_sent in range(n):
        for sentiment in (lang.positive, lang.negative):
            cand = _oracle_candidate(lang, topic, n, n_sent, sentiment)
            gold, _, _ = score_completion(
                lang, prompt, cand, reward_scale, lang.config.informativeness
            )
            if gold > best_gold:
                best, best_gold = cand, gold
    return best
