"""The generated language of the synthetic world: vocabulary, categories, grammar, prompts.

Design
------
Every word is a pronounceable pseudo-word (consonant-vowel syllables) drawn from a local RNG
seeded by ``WorldConfig.seed``, so the language carries no real-world meaning that a pretrained
model could exploit and a different seed gives a different language. Words fall into categories:

* per-topic content words: nouns, verbs and adjectives of each topic;
* function words: determiners and connectives;
* positive and negative sentiment words (grammatically adjectives);
* banned ("unsafe") words (grammatically nouns);
* instruction words (only meaningful as the first word of a prompt; no grammatical role).

Each category has a part-of-speech tag, and a fixed hidden transition table over tags
(:data:`ALLOWED_TRANSITIONS`) defines the grammar that the *fluency* objective measures.

Prompts have the form ``"<instruction word> <topic word> <topic word> :"``; the ``:``
delimiter is a separate token, so a completion appended after a space is unambiguous.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from prefopt.world.config import WorldConfig
from prefopt.world.rng import make_rng

DELIMITER = ":"
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)

# Part-of-speech tags of the hidden grammar.
DET, ADJ, NOUN, VERB, CONJ = "DET", "ADJ", "NOUN", "VERB", "CONJ"
TAGS = (DET, ADJ, NOUN, VERB, CONJ)
FUNCTION_TAGS = frozenset({DET, CONJ})

#: Hidden grammar: the set of allowed (previous tag, next tag) pairs.
ALLOWED_TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        (DET, ADJ),
        (DET, NOUN),
        (ADJ, ADJ),
        (ADJ, NOUN),
        (NOUN, VERB),
        (NOUN, CONJ),
        (VERB, DET),
        (VERB, ADJ),
        (VERB, NOUN),
        (CONJ, DET),
        (CONJ, ADJ),
        (CONJ, NOUN),
    }
)
#: Tags a fluent behaviour response starts with.
START_TAGS = (DET, ADJ, NOUN)

# Word kinds (finer than tags).
KIND_NOUN, KIND_VERB, KIND_ADJ = "noun", "verb", "adj"
KIND_DET, KIND_CONJ = "det", "conj"
KIND_POS, KIND_NEG, KIND_BANNED, KIND_INSTR = "positive", "negative", "banned", "instruction"
KIND_TAG = {
    KIND_NOUN: NOUN,
    KIND_VERB: VERB,
    KIND_ADJ: ADJ,
    KIND_DET: DET,
    KIND_CONJ: CONJ,
    KIND_POS: ADJ,
    KIND_NEG: ADJ,
    KIND_BANNED: NOUN,
}
CONTENT_KINDS = (KIND_NOUN, KIND_VERB, KIND_ADJ)

OBJECTIVE_NAMES = ("relevance", "length", "fluency", "positivity", "safety")


@dataclass(frozen=True)
class InstructionSpec:
    """An instruction type: its length target and how much it weighs each objective."""

    name: str
    target_fraction: float  # target length = round(target_fraction * max_response_words)
    weights: tuple[float, float, float, float, float]  # in OBJECTIVE_NAMES order, before scale
    summary: str


#: The instruction types. Weights are unscaled; gold = reward_scale * sum_k w_k * objective_k.
INSTRUCTIONS: tuple[InstructionSpec, ...] = (
    InstructionSpec("brief", 0.25, (1.0, 2.0, 0.5, 0.0, 0.5), "short and on topic"),
    InstructionSpec("cheer", 0.5, (0.5, 0.5, 0.5, 2.0, 0.5), "upbeat, positive tone"),
    InstructionSpec("careful", 0.4, (0.5, 0.5, 1.5, -0.5, 2.5), "safe, fluent, neutral"),
    InstructionSpec("explain", 0.85, (1.5, 1.0, 1.0, 0.0, 0.5), "long, on topic, fluent"),
)
INSTRUCTION_NAMES = tuple(spec.name for spec in INSTRUCTIONS)


@dataclass(frozen=True)
class WordInfo:
    """Category of one word of the language."""

    kind: str
    tag: str | None
    topic: int | None = None
    instruction: int | None = None


@dataclass(frozen=True)
class PromptInfo:
    """What the world reads out of a prompt string (``None`` when unrecognised)."""

    instruction: int | None
    topic: int | None
    words: tuple[str, ...]


@dataclass
class Language:
    """The vocabulary and grammar generated from a :class:`WorldConfig`."""

    config: WorldConfig
    topic_words: list[dict[str, list[str]]] = field(default_factory=list)
    determiners: list[str] = field(default_factory=list)
    connectives: list[str] = field(default_factory=list)
    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)
    banned: list[str] = field(default_factory=list)
    instruction_words: list[list[str]] = field(default_factory=list)
    info: dict[str, WordInfo] = field(default_factory=dict)
    junk_cache: dict[tuple[int, ...], list[str]] = field(
        default_factory=dict, repr=False, compare=False
    )

    # ----------------------------------------------------------------- construction
    @classmethod
    def generate(cls, cfg: WorldConfig) -> Language:
        """Draw all words from the language RNG stream of ``cfg.seed``."""
        rng = make_rng(cfg.seed, "language")
        maker = _WordMaker(rng)
        lang = cls(config=cfg)
        lang.instruction_words = [maker.many(cfg.instruction_synonyms, 2) for _ in INSTRUCTIONS]
        lang.determiners = maker.many(cfg.n_function_words, 1)
        lang.connectives = maker.many(cfg.n_function_words, 1)
        lang.positive = maker.many(cfg.n_sentiment_words, 2)
        lang.negative = maker.many(cfg.n_sentiment_words, 2)
        lang.banned = maker.many(cfg.n_banned_words, 2)
        sizes = {
            KIND_NOUN: cfg.nouns_per_topic,
            KIND_VERB: cfg.verbs_per_topic,
            KIND_ADJ: cfg.adjectives_per_topic,
        }
        for _ in range(cfg.n_topics):
            lang.topic_words.append({kind: maker.many(n, 2, 3) for kind, n in sizes.items()})
        lang._index()
        return lang

    def _index(self) -> None:
        for i, words in enumerate(self.instruction_words):
            for w in words:
                self.info[w] = WordInfo(KIND_INSTR, None, instruction=i)
        groups = [
            (KIND_DET, self.determiners),
            (KIND_CONJ, self.connectives),
            (KIND_POS, self.positive),
            (KIND_NEG, self.negative),
            (KIND_BANNED, self.banned),
        ]
        for kind, words in groups:
            for w in words:
                self.info[w] = WordInfo(kind, KIND_TAG[kind])
        for t, by_kind in enumerate(self.topic_words):
            for kind, words in by_kind.items():
                for w in words:
                    self.info[w] = WordInfo(kind, KIND_TAG[kind], topic=t)

    # ----------------------------------------------------------------- vocabulary
    @property
    def words(self) -> list[str]:
        """All words of the language in a fixed order (not including specials / delimiter)."""
        return list(self.info)

    def vocabulary(self) -> list[str]:
        """Tokenizer vocabulary: special tokens, the delimiter, then every word."""
        return [*SPECIAL_TOKENS, DELIMITER, *self.words]

    @property
    def n_topics(self) -> int:
        return self.config.n_topics

    @property
    def in_distribution_topics(self) -> list[int]:
        return list(range(self.config.n_topics - self.config.n_ood_topics))

    @property
    def ood_topics(self) -> list[int]:
        return list(range(self.config.n_topics - self.config.n_ood_topics, self.config.n_topics))

    def topic_name(self, topic: int | None) -> str:
        return "none" if topic is None else f"topic{topic}"

    def topic_content(self, topic: int) -> list[str]:
        """All content words (nouns, verbs, adjectives) of a topic."""
        by_kind = self.topic_words[topic]
        return [w for kind in CONTENT_KINDS for w in by_kind[kind]]

    def target_length(self, instruction: int | None) -> float:
        """Instruction-specific target length in words (mean target if unknown)."""
        m = self.config.max_response_words
        if instruction is None:
            return sum(round(s.target_fraction * m) for s in INSTRUCTIONS) / len(INSTRUCTIONS)
        return float(max(1, round(INSTRUCTIONS[instruction].target_fraction * m)))

    @property
    def length_width(self) -> float:
        """Scale (in words) of the exponential decay of the length objective."""
        return max(1.0, self.config.max_response_words / 6.0)

    # ----------------------------------------------------------------- prompts
    def format_prompt(self, instruction_word: str, topic_words: list[str]) -> str:
        return " ".join([instruction_word, *topic_words, DELIMITER])

    def parse_prompt(self, prompt: str) -> PromptInfo:
        """Recover instruction type and topic from any string; never raises."""
        words = tuple(str(prompt).split())
        instruction = next((i for w in words if (i := self._instruction_of(w)) is not None), None)
        topics = [
            info.topic for w in words if (info := self.info.get(w)) and info.topic is not None
        ]
        topic = Counter(topics).most_common(1)[0][0] if topics else None
        return PromptInfo(instruction, topic, words)

    def _instruction_of(self, word: str) -> int | None:
        info = self.info.get(word)
        return info.instruction if info is not None else None


class _WordMaker:
    """Draws unique pronounceable pseudo-words from consonant-vowel syllables."""

    CONSONANTS = "bdfgklmnprstvz"
    VOWELS = "aeiou"
    CODAS = ("", "", "", "n", "r", "s", "l")

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def syllable(self) -> str:
        return self.rng.choice(self.CONSONANTS) + self.rng.choice(self.VOWELS)

    def word(self, min_syl: int, max_syl: int) -> str:
        for _ in range(10_000):
            n = self.rng.randint(min_syl, max_syl)
            coda = self.rng.choice(self.CODAS)
            w = "".join(self.syllable() for _ in range(n)) + coda
            if w not in self.used:
                self.used.add(w)
                return w
        raise RuntimeError("vocabulary space exhausted; reduce the vocabulary size")

    def many(self, n: int, min_syl: int, max_syl: int | None = None) -> list[str]:
        return [self.word(min_syl, max_syl or min_syl) for _ in range(n)]
