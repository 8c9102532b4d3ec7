"""What both sides train on, built by the benchmark itself: a BPE tokenizer trained on the data,
a randomly initialised GPT-2 (policy), a differently seeded GPT-2 (the DPO reference, so that the
first-batch DPO loss is not log 2), a GPT-2 sequence classifier (the reward model, also the PPO
critic's start), and the data files (pairs that fit in ``max_length`` tokens; prompts of at most
``max_prompt_length`` tokens for the online algorithms).

Data: the HH-RLHF harmless-base test split in ``../shared/data`` when present, else the
synthetic world's pairs. Both sides read the same jsonl files, with explicit
``prompt``/``chosen``/``rejected`` fields.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HH_FILE = (
    Path(__file__).resolve().parents[1] / ".." / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
)
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


@dataclass(frozen=True)
class ModelShape:
    """The issue's model: GPT-2, 6 layers, hidden 512, 8 heads, vocabulary 8,192 (23.6M)."""

    layers: int = int(os.environ.get("BENCH_LAYERS", "6"))
    hidden: int = int(os.environ.get("BENCH_HIDDEN", "512"))
    heads: int = int(os.environ.get("BENCH_HEADS", "8"))
    vocab: int = 8192
    positions: int = 1024


def read_pairs(limit: int | None = None) -> tuple[list[dict[str, str]], str]:
    """(pairs with prompt/chosen/rejected, a description of the source)."""
    if HH_FILE.exists():
        from prefopt.data.loaders import parse_hh
        from prefopt.data.records import BadRow

        pairs = []
        with gzip.open(HH_FILE, "rt", encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = parse_hh(json.loads(line))
                except BadRow:
                    continue
                pairs.append({k: record[k] for k in ("prompt", "chosen", "rejected")})
        return pairs[:limit], f"HH-RLHF harmless-base test ({HH_FILE.resolve()})"
    from prefopt.paths import cache_dir
    from prefopt.world import WorldConfig, build_world

    world = build_world(WorldConfig(), cache_dir=cache_dir())
    records = world.preference_records("train")
    pairs = [{k: str(r[k]) for k in ("prompt", "chosen", "rejected")} for r in records]
    return pairs[:limit], "the synthetic world's train pairs (../shared/data absent)"


def train_tokenizer(texts: Sequence[str], vocab: int, folder: Path) -> Any:
    """A byte-level BPE tokenizer trained on `texts`; BOS is added by its post-processor, so
    that a plain ``tokenizer(text)`` (TRL) and prefopt's explicit BOS give the same ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, core.token_to_id(BOS))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )
    tokenizer.save_pretrained(folder)
    return tokenizer


def joint_ids(tokenizer: Any, prompt: str, completion: str) -> list[int]:
    """How TRL tokenizes: the whole text with special tokens, EOS appended as text."""
    return list(tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"])


def split_ids(tokenizer: Any, prompt: str, completion: str) -> list[int]:
    """How prefopt tokenizes: BOS + prompt ids + completion ids + EOS, pieces apart."""
    enc = tokenizer([prompt, completion], add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id, *enc[0], *enc[1], tokenizer.eos_token_id]


def select_pairs(
    pairs: Sequence[dict[str, str]],
    n: int,
    max_length: int,
    length: Callable[[str, str], int | None],
) -> list[dict[str, str]]:
    """The first `n` pairs whose chosen and rejected sequences both fit in `max_length` tokens.
    ``length(prompt, completion)`` is the sequence's token count, or None when the two sides
    would tokenize it differently (such a pair is skipped: both sides must see the same ids)."""
    out = []
    for pair in pairs:
        lengths = [length(pair["prompt"], pair[k]) for k in ("chosen", "rejected")]
        if all(n_tokens is not None and n_tokens <= max_length for n_tokens in lengths):
            out.append(dict(pair))
            if len(out) == n:
                return out
    raise ValueError(f"only {len(out)} pairs fit in {max_length} tokens; {n} needed")


def select_prompts(
    pairs: Sequence[dict[str, str]], n: int, max_prompt_length: int, length: Callable[[str], int]
) -> list[str]:
    """The first `n` distinct prompts of at most `max_prompt_length` tokens."""
    seen: dict[str, None] = {}
    for pair in pairs:
        if pair["prompt"] not in seen and length(pair["prompt"]) <= max_prompt_length:
            seen[pair["prompt"]] = None
            if len(seen) == n:
                return list(seen)
    raise ValueError(f"only {len(seen)} prompts fit in {max_prompt_length} tokens; {n} needed")


def gpt2_config(shape: ModelShape, tokenizer: Any, **extra: Any) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=shape.positions,
        n_embd=shape.hidden,
        n_layer=shape.layers,
        n_head=shape.heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_models(shape: ModelShape, tokenizer: Any, root: Path) -> dict[str, str]:
    """Save the policy (seed 0), the reference (seed 1) and the reward model (seed 2) folders."""
    import torch
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    folders = {}
    for name, seed in (("policy", 0), ("reference", 1)):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(gpt2_config(shape, tokenizer))
        folders[name] = _save(model, tokenizer, root / name)
    torch.manual_seed(2)
    rm = GPT2ForSequenceClassification(gpt2_config(shape, tokenizer, num_labels=1))
    folders["reward_model"] = _save(rm, tokenizer, root / "reward_model")
    return folders


def _save(model: Any, tokenizer: Any, folder: Path) -> str:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_jsonl(rows: Sequence[dict[str, Any]], path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def build_assets(
    root: Path, n_pairs: int, max_length: int, n_prompts: int, max_prompt: int
) -> dict:
    """Everything the runs need, under `root`; returns the paths and counts (a manifest)."""
    pairs, source = read_pairs()
    tokenizer = train_tokenizer(
        [p[k] for p in pairs for k in ("prompt", "chosen", "rejected")],
        ModelShape().vocab,
        root / "tokenizer",
    )

    def pair_length(prompt: str, completion: str) -> int | None:
        joint = joint_ids(tokenizer, prompt, completion)
        return len(joint) if joint == split_ids(tokenizer, prompt, completion) else None

    selected = select_pairs(pairs, n_pairs, max_length, pair_length)
    prompts = select_prompts(pairs, n_prompts, max_prompt, lambda p: len(tokenizer(p)["input_ids"]))
    folders = build_models(ModelShape(), tokenizer, root / "models")
    return {
        "source": source,
        "pairs_file": write_jsonl(selected, root / "pairs.jsonl"),
        "prompts_file": write_jsonl(
            [{"prompt": p, "chosen": " a", "rejected": " b"} for p in prompts],
            root / "prompts.jsonl",
        ),
        "n_pairs": len(selected),
        "n_prompts": len(prompts),
        **folders,
    }
