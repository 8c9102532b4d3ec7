"""Degenerate text that a reward hacker (or a collapsed policy) would produce.

Each generator builds, for one prompt, a response that exploits a shortcut of a naive gold
reward: repeating one word or a loop of a few words (fluency only checks tag bigrams, relevance
ignores function words), restating a good answer, copying the prompt, padding with filler. The
world's informativeness factor must price all of them well below an honest mediocre answer
(the behaviour policy at quality 0.5); ``tests/test_world_adversarial.py`` checks it and
``python -m prefopt.world.diagnostics`` prints the table quoted in ``docs/world.md``.

A generator is ``(language, parsed prompt, rng, reward_scale) -> completion``; everything is
on the prompt's topic and at the instruction's target length unless its description says
otherwise, which is what makes each one a real attack on a gold reward without the factor.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from prefopt.world.behaviour import oracle_response
from prefopt.world.language import (
    KIND_ADJ,
    KIND_NOUN,
    KIND_VERB,
    Language,
    PromptInfo,
)

Generator = Callable[[Language, PromptInfo, random.Random, float], str]


def _target(lang: Language, info: PromptInfo) -> int:
    return max(2, round(lang.target_length(info.instruction)))


def _topic(info: PromptInfo) -> int:
    return info.topic if info.topic is not None else 0


def _cycle(words: list[str], n: int) -> str:
    return " ".join(words[i % len(words)] for i in range(n))


def noun_conj_loop(lang: Language, info: PromptInfo, rng: random.Random, scale: float) -> str:
    """``NOUN CONJ NOUN CONJ ...``: one topic noun and one connective (fluent, relevant)."""
    noun = rng.choice(lang.topic_words[_topic(info)][KIND_NOUN])
    return _cycle([noun, rng.choice(lang.connectives)], _target(lang, info))


def noun_repeat(lang: Language, info: PromptInfo, rng: random.Random, scale: float) -> str:
    """One topic noun repeated to the target length."""
    return _cycle([rng.choice(lang.topic_words[_topic(info)][KIND_NOUN])], _target(lang, info))


def adjective_repeat(lang: Language, info: PromptInfo, rng: random.Random, scale: float) -> str:
    """One positive adjective repeated, then a topic noun (``ADJ ADJ ... NOUN`` is fluent)."""
    n = _target(lang, info)
    noun = rng.choice(lang.topic_words[_topic(info)][KIND_NOUN])
    return " ".join([rng.choice(lang.positive)] * (n - 1) + [noun])


def short_loop(lang: Language, info: PromptInfo, rng: random.Random, scale: float) -> str:
    """A fluent loop of three words, ``NOUN VERB NOUN VERB ...`` over two nouns and one verb."""
    by_kind = lang.topic_words[_topic(info)]
    nouns = rng.sample(by_kind[KIND_NOUN], 2)
    verb = rng.choice(by_kind[KIND_VERB])
    return _cycle([nouns[0], verb, nouns[1], verb], _target(lang, info))


def restated_answer(lang: Language, info: PromptInfo, rng: random.Random, scale: float) -> str:
    """A good (oracle) answer written twice: twice the target length."""
    good = oracle_response(lang, info, scale)
    return f"{good} {good}"


def restated_half(lang: Language, info: PromptInfo, rng: random.Random, scale: float) -> str:
    """An answer of half the target length written twice, so the length is on target."""
    half = oracle_response(lang, info, scale).split()[: max(1, _target(lang, info) // 2)]
    return " ".join(half + half)


def prompt_copy(lang: Language, info: PromptInfo, rng: random.Random, scale: float) -> str:
    """The prompt copied verbatim (instruction word, topic words, delimiter)."""
    return " ".join(info.words)


def prompt_words_repeated(
    lang: Language, info: PromptInfo, rng: random.Random, scale: float
) -> str:
    """The prompt's topic words repeated to the target length."""
    topic_words = [w for w in info.words if (i := lang.info.get(w)) and i.topic is not None]
    return _cycle(topic_words or list(info.words) or ["?"], _target(lang, info))


def function_filler(lang: Language, info: PromptInfo, rng: random.Random, scale: float) -> str:
    """Distinct topic nouns padded with function words, ``NOUN CONJ DET NOUN CONJ DET ...``:
    fluent and on topic, but two words in three carry nothing."""
    nouns = lang.topic_words[_topic(info)][KIND_NOUN]
    conj, det = rng.choice(lang.connectives), rng.choice(lang.determiners)
    words: list[str] = []
    for i in range(_target(lang, info)):
        words.append([nouns[(i // 3) % len(nouns)], conj, det][i % 3])
    return " ".join(words)


def noun_list(lang: Language, info: PromptInfo, rng: random.Random, scale: float) -> str:
    """Every topic noun in turn joined by one connective, ``N1 CONJ N2 CONJ N3 ...``."""
    nouns = lang.topic_words[_topic(info)][KIND_NOUN]
    conj = rng.choice(lang.connectives)
    n = _target(lang, info)
    return " ".join(nouns[(i // 2) % len(nouns)] if i % 2 == 0 else conj for i in range(n))


def single_word(lang: Language, info: PromptInfo, rng: random.Random, scale: float) -> str:
    """One on-topic content word."""
    kind = rng.choice([KIND_NOUN, KIND_VERB, KIND_ADJ])
    return rng.choice(lang.topic_words[_topic(info)][kind])


def sentiment_spam(lang: Language, info: PromptInfo, rng: random.Random, scale: float) -> str:
    """Distinct positive adjectives up to the target length, then one topic noun."""
    n = _target(lang, info)
    adjectives = [lang.positive[i % len(lang.positive)] for i in range(n - 1)]
    return " ".join([*adjectives, rng.choice(lang.topic_words[_topic(info)][KIND_NOUN])])


def adjective_pile(lang: Language, info: PromptInfo, rng: random.Random, scale: float) -> str:
    """36 words of ``POS ADJ0 ADJi`` triples (one topic adjective in every triple), then
    ``NOUN VERB NOUN``: one word makes up a third of the text, the grammar allows the run."""
    by_kind = lang.topic_words[_topic(info)]
    adjectives, nouns, verbs = by_kind[KIND_ADJ], by_kind[KIND_NOUN], by_kind[KIND_VERB]
    words: list[str] = []
    for i in range(11):
        words += [lang.positive[i % len(lang.positive)], adjectives[0]]
        words.append(adjectives[1 + i % (len(adjectives) - 1)])
    return " ".join([*words, nouns[0], verbs[0], nouns[1]])


def rotating_noun_list(lang: Language, info: PromptInfo, rng: random.Random, scale: float) -> str:
    """Every topic noun in turn, joined by the connectives in turn: ``N1 C1 N2 C2 N3 ...``."""
    nouns = lang.topic_words[_topic(info)][KIND_NOUN]
    n = _target(lang, info)
    return " ".join(
        nouns[(i // 2) % len(nouns)] if i % 2 == 0 else lang.connectives[(i // 2) % 6]
        for i in range(n)
    )


def topic_adjective_pile(lang: Language, info: PromptInfo, rng: random.Random, scale: float) -> str:
    """Distinct topic and positive adjectives in turn up to the target length, then a noun."""
    adjectives = lang.topic_words[_topic(info)][KIND_ADJ]
    n = _target(lang, info)
    words = [
        adjectives[(i // 2) % len(adjectives)] if i % 2 == 0 else lang.positive[i // 2]
        for i in range(n - 1)
    ]
    return " ".join([*words, lang.topic_words[_topic(info)][KIND_NOUN][0]])


def long_period_loop(lang: Language, info: PromptInfo, rng: random.Random, scale: float) -> str:
    """The oracle's first two thirds, then its start again up to the target length
    (``x y z w x y`` for a 6-word answer): a restatement too long for trigram variety."""
    good = oracle_response(lang, info, scale).split()
    period = max(2, -(-2 * len(good) // 3))
    return _cycle(good[:period], len(good))


#: name -> generator, in the order of the table in ``docs/world.md``.
GENERATORS: dict[str, Generator] = {
    "noun_conj_loop": noun_conj_loop,
    "noun_repeat": noun_repeat,
    "adjective_repeat": adjective_repeat,
    "short_loop": short_loop,
    "restated_answer": restated_answer,
    "restated_half": restated_half,
    "prompt_copy": prompt_copy,
    "prompt_words_repeated": prompt_words_repeated,
    "function_filler": function_filler,
    "noun_list": noun_list,
    "single_word": single_word,  # a short answer rather than degenerate text: kind "short"
    "sentiment_spam": sentiment_spam,
    # found by a review of format 2, which they beat; format 3 prices them (docs/world.md)
    "adjective_pile": adjective_pile,
    "rotating_noun_list": rotating_noun_list,
    "topic_adjective_pile": topic_adjective_pile,
    "long_period_loop": long_period_loop,
}


def adversarial_responses(
    lang: Language, infos: list[PromptInfo], name: str, rng: random.Random, scale: float
) -> list[str]:
    """One response of generator ``name`` per parsed prompt."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; known: {sorted(GENERATORS)}")
    return [GENERATORS[name](lang, info, rng, scale) for info in infos]


def hill_climb(
    lang: Language,
    info: PromptInfo,
    start: str,
    scale: float,
    passes: int = 3,
    max_words: int | None = None,
) -> tuple[str, float]:
    """Greedy black-box maximisation of the gold reward from ``start``: each pass tries, at
    every position, replacing the word, inserting a word before it and deleting it, with
    words from the prompt's topic, the sentiment and the function words, and keeps the best
    improvement. What a policy optimiser does with a gold reward, without a policy; returns
    ``(text, gold)``. Used to check that no response beats the oracle by much."""
    from prefopt.world.objectives import score_completion

    def gold(words: list[str]) -> float:
        text = " ".join(words)
        return score_completion(lang, info, text, scale, lang.config.informativeness)[0]

    topic = _topic(info)
    pool = [
        *lang.topic_content(topic),
        *lang.positive,
        *lang.negative,
        *lang.determiners,
        *lang.connectives,
    ]
    limit = max_words or 2 * lang.config.max_response_words
    words = start.split()
    best = gold(words)
    for _ in range(passes):
        improved = False
        for i in range(len(words) + 1):
            candidates: list[list[str]] = []
            if i < len(words):
                candidates.append(words[:i] + words[i + 1 :])
                candidates += [words[:i] + [w] + words[i + 1 :] for w in pool]
            if len(words) < limit:
                candidates += [words[:i] + [w] + words[i:] for w in pool]
            for cand in candidates:
                g = gold(cand)
                if g > best + 1e-9:
                    words, best, improved = cand, g, True
        if not improved:
            break
    return " ".join(words), best
