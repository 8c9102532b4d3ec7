"""Word-level tokenizer of the world's language, built locally (no downloads).

A ``tokenizers`` WordLevel model with a Whitespace pre-tokenizer: every word of the language is
exactly one token, the ``:`` delimiter is its own token, and anything else becomes ``<unk>``.
Ids: ``<pad>=0, <unk>=1, <bos>=2, <eos>=3, ':'=4``, then the words. The tokenizer adds no BOS/EOS
automatically (callers decide), pads on the right, and decodes by joining tokens with spaces, so
``decode(ids, skip_special_tokens=True)`` gives back a completion string the world can score.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from prefopt.world.language import BOS, EOS, PAD, UNK, Language

MODEL_MAX_LENGTH = 128


def build_tokenizer(lang: Language) -> PreTrainedTokenizerFast:
    """The Hugging Face fast tokenizer of ``lang`` (save with ``save_pretrained``)."""
    vocab = {word: i for i, word in enumerate(lang.vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_MAX_LENGTH,
    )
