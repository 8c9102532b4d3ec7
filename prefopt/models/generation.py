"""Sampling completions from a causal-LM policy, and their per-token log-probabilities.

One implementation for the online trainer's rollouts and the gold evaluation. Prompts are
left-padded so that every row's prompt ends at the same column and ``generate`` appends there
(with the KV cache); everything after a row's first EOS is masked, the EOS itself is kept as a
completion token (so the model learns to stop), and the pad token must differ from EOS
(otherwise a padded position and a real stop cannot be told apart). Log-probabilities are
recomputed with the sampling temperature (logits / T), so that they are those of the
distribution the samples came from.

Shapes: ``R`` rollouts (prompts x samples per prompt, grouped by prompt: rows
``p*K .. p*K+K-1`` are prompt p's), ``P`` the width of the left-padded prompt block, ``T`` the
full width (prompt block + generated tokens).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from prefopt.data import PromptCollator, tokenize_prompts
from prefopt.data.collate import causal_mask, lay_shared_prefix
from prefopt.models.logps import attention_layout, takes_logits_to_keep, token_logps
from prefopt.models.penalties import sampling_processors
from prefopt.models.quiet import without_log_messages


@dataclass
class Samples:
    """Sampled completions of a batch of prompts.

    prompts: [P_n] prompt strings.
    completions: [P_n][K] decoded completion text (special tokens removed, stripped).
    sequences: [R, T] long, left-padded prompt ids then generated ids (pad after the first EOS).
    attention_mask: [R, T] long, 1 on real prompt tokens and on completion tokens.
    completion_mask: [R, T] long, 1 on completion tokens up to and including the first EOS.
    prompt_width: P, the column where every completion starts.
    logps: [R, T-1] float32 (the rollout convention: column j scores sequence column j+1) the
        sampled tokens' log-probs at the sampling temperature from the logits of `generate`
        itself, 0 off the completions; None unless asked for (``logps_from_generation``).
    """

    prompts: list[str]
    completions: list[list[str]]
    sequences: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    prompt_width: int = 0
    logps: Tensor | None = None

    @property
    def flat_prompts(self) -> list[str]:
        """[R] the prompt of every rollout."""
        k = len(self.completions[0]) if self.completions else 0
        return [p for p in self.prompts for _ in range(k)]

    @property
    def flat_completions(self) -> list[str]:
        """[R] every completion, grouped by prompt."""
        return [c for group in self.completions for c in group]

    def ended_with_eos(self, eos_token_id: int) -> Tensor:
        """[R] bool: the completion stopped at an EOS (rather than at max_new_tokens)."""
        is_eos = (self.sequences == eos_token_id) & self.completion_mask.bool()
        return is_eos.any(dim=1)

    def last_token_index(self) -> Tensor:
        """[R] column of each completion's last real token (its EOS when it has one)."""
        columns = torch.arange(self.completion_mask.shape[1], device=self.completion_mask.device)
        return (self.completion_mask * columns).argmax(dim=1)

    def select(self, groups: list[int]) -> Samples:
        """The prompts ``groups`` (indices into ``prompts``) with all their samples, in order."""
        k = len(self.completions[0]) if self.completions else 0
        rows = torch.tensor([g * k + j for g in groups for j in range(k)], dtype=torch.long)
        return Samples(
            [self.prompts[g] for g in groups],
            [self.completions[g] for g in groups],
            self.sequences[rows],
            self.attention_mask[rows],
            self.completion_mask[rows],
            self.prompt_width,
            self.logps[rows] if self.logps is not None else None,
        )


def concat_samples(parts: list[Samples], pad_token_id: int) -> Samples:
    """Several Samples (the same k) as one: each part's prompt block left-padded to the widest,
    its completions right-padded to the longest (as :func:`generate` joins its batches)."""
    width = max(p.prompt_width for p in parts)
    generated = max(p.sequences.shape[1] - p.prompt_width for p in parts)
    pad = torch.nn.functional.pad
    sequences, attention, completion, logps = [], [], [], []
    for part in parts:
        left, right = (
            width - part.prompt_width,
            generated - (part.sequences.shape[1] - part.prompt_width),
        )
        sequences.append(pad(part.sequences, (left, right), value=pad_token_id))
        attention.append(pad(part.attention_mask, (left, right)))
        completion.append(pad(part.completion_mask, (left, right)))
        if part.logps is not None:  # column j scores sequence column j + 1
            logps.append(pad(part.logps, (left, right)))
    if logps and len(logps) != len(parts):
        raise ValueError("concat_samples: some parts have sampling log-probs and some do not")
    return Samples(
        [p for part in parts for p in part.prompts],
        [c for part in parts for c in part.completions],
        torch.cat(sequences),
        torch.cat(attention),
        torch.cat(completion),
        width,
        torch.cat(logps) if logps else None,
    )


def is_kbit(model: nn.Module) -> bool:
    """Was the model (or the base of a peft model) loaded in 4 or 8 bit?"""
    return bool(
        getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    )


def check_special_tokens(tokenizer: Any) -> None:
    """Generation needs a pad token distinct from EOS (ALGORITHMS.md section 3)."""
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs both a pad and an EOS token for generation")
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError(
            "the tokenizer's pad token is its EOS token: padding could not be told from a real "
            "stop and EOS would be masked out of completions; add a distinct pad token"
        )


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    cfg: Any,
    device: torch.device,
    seed: int,
    max_prompt_length: int = 64,
    with_logps: bool = False,
) -> Samples:
    """Sample ``cfg.samples_per_prompt`` completions per prompt in batches of
    ``cfg.batch_size`` sequences (``temperature``, ``top_k``, ``top_p``, ``max_new_tokens``;
    stop at EOS; ``presence_penalty`` / ``frequency_penalty`` when ``cfg`` has them,
    :mod:`prefopt.models.penalties`). Each batch is seeded with ``seed + its first prompt's
    index``, so a set of prompts always gets the same samples from the same model."""
    examples = tokenize_prompts(
        [{"prompt": p} for p in prompts], tokenizer, max_prompt_length=max_prompt_length
    )
    collate = PromptCollator(pad_token_id=tokenizer.pad_token_id)
    k = cfg.samples_per_prompt
    per_batch = max(1, cfg.batch_size // k)
    pieces: list[tuple[Tensor, Tensor, int, Tensor | None]] = []
    was_training = model.training
    if not is_kbit(model):
        # a k-bit model stays in training mode: on CPUs with AVX512-BF16, bitsandbytes repacks
        # 4-bit weights for an inference-only kernel the first time a layer runs in eval mode,
        # and training through that layer afterwards fails. Dropout is off in every prefopt
        # model, so the two modes sample the same distribution.
        model.eval()
    # transformers' decoding loop warns that no attention_mask was passed although one is
    # (transformers 5.x): not shown while prefopt's own generation runs
    with (
        neutral_generation_config(model),
        without_log_messages("transformers.modeling_utils", "attention_mask"),
    ):
        for start in range(0, len(examples), per_batch):
            batch = collate(examples[start : start + per_batch])
            pieces.append(
                _generate_batch(model, batch, cfg, k, tokenizer, device, seed + start, with_logps)
            )
    model.train(was_training)
    return assemble_samples(prompts, pieces, tokenizer, k)


def _generate_batch(
    model: nn.Module,
    batch: dict[str, Tensor],
    cfg: Any,
    k: int,
    tokenizer: Any,
    device,
    seed: int,
    with_logps: bool = False,
) -> tuple[Tensor, Tensor, int, Tensor | None]:
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    prefilled: dict[str, Any] = {}
    if k > 1 and ids.shape[1] > 1:
        # each prompt's keys and values computed once for its k samples (generate's own
        # num_return_sequences would recompute the prompt k times): all but the last prompt
        # token go into a cache that is then repeated k times; generate continues from it and
        # draws exactly the samples it draws without it (tests/test_fast_paths.py)
        from transformers import DynamicCache

        cache = DynamicCache()
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate's own
        model(
            input_ids=ids[:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=positions[:, :-1],
            cache=cache,
            use_cache=True,
        )
        cache.batch_repeat_interleave(k)
        ids, mask, k_rows = ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0), 1
        prefilled = {"cache": cache}
    else:
        k_rows = k
    sampling: dict[str, Any] = {
        "temperature": cfg.temperature, "top_k": cfg.top_k or None, "top_p": cfg.top_p,
    }  # fmt: skip
    chain = sampling_processors(cfg, ids.shape[1])
    if chain is not None:  # presence / frequency penalties: the whole chain in vLLM's order
        if with_logps:
            raise ValueError(
                "presence / frequency penalties change the sampled distribution: its "
                "log-probabilities are not those of logits / temperature"
            )
        from transformers import LogitsProcessorList

        sampling = {"logits_processor": LogitsProcessorList(chain), "temperature": 1.0,
                    "top_k": None, "top_p": 1.0}  # fmt: skip
    torch.manual_seed(seed)
    # a transformers model or a PeftModel: both have generate(), which nn.Module lacks
    out = cast(Any, model).generate(
        input_ids=ids,
        attention_mask=mask,
        **prefilled,
        do_sample=True,
        **sampling,
        max_new_tokens=cfg.max_new_tokens,
        num_return_sequences=k_rows,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        return_dict_in_generate=True,
        output_logits=with_logps,
    )
    sequences = out.sequences
    logps = None
    if with_logps:
        # the raw logits of every generated position (before temperature and top-k / top-p),
        # divided by the temperature as the full forward's log-probs are
        logits = torch.stack(out.logits, dim=1).float() / cfg.temperature  # [R, G, V]
        logps = token_logps(logits, sequences[:, ids.shape[1] :])
    return sequences, mask.repeat_interleave(k_rows, dim=0), ids.shape[1], logps


@contextlib.contextmanager
def neutral_generation_config(model: nn.Module) -> Iterator[None]:
    """Sample from the model's own distribution: a checkpoint's ``generation_config`` (a hub
    chat model's ``repetition_penalty``, ``min_new_tokens``, ``no_repeat_ngram_size``...) would
    otherwise reshape every sample, and the log-probs recomputed for the loss, the KL and the
    gold evaluation would describe another distribution than the samples came from. Only the
    special-token ids are kept; the sampling settings come from the caller."""
    from transformers import GenerationConfig

    get_base = getattr(model, "get_base_model", None)  # a peft model: its transformers model
    target = get_base() if callable(get_base) else model
    original = getattr(target, "generation_config", None)
    if original is None:
        yield
        return
    target.generation_config = GenerationConfig(
        bos_token_id=original.bos_token_id,
        eos_token_id=original.eos_token_id,
        pad_token_id=original.pad_token_id,
        decoder_start_token_id=original.decoder_start_token_id,
    )
    try:
        yield
    finally:
        target.generation_config = original


def assemble_samples(
    prompts: list[str],
    pieces: list[tuple[Tensor, Tensor, int, Tensor | None]],
    tokenizer: Any,
    k: int,
) -> Samples:
    """Sampled batches -> one :class:`Samples` in ``generate``'s layout, for any engine.

    ``pieces`` are the batches in prompt order, each ``(sequences, prompt_mask, prompt_len,
    gen_logps)``: ``sequences`` [B, prompt_len + G] a left-padded prompt block followed by the
    generated tokens (anything after a row's first EOS is ignored: masked and set to pad),
    ``prompt_mask`` [B, prompt_len] the prompt block's attention mask, ``gen_logps`` [B, G] the
    sampled tokens' log-probs or None; ``B`` counts ``k`` rows per prompt, grouped by prompt.
    Batches of different widths get a common prompt block (each left-padded to the widest
    prompt) and a common generation width (right-padded with pad to the longest); completion
    tokens are everything up to and including the first EOS, texts are decoded without
    special tokens and stripped, and log-probs move to the columns that score them (column j
    scores sequence column j+1, 0 off the completions)."""
    prompt_width = max(prompt_len for _, _, prompt_len, _ in pieces)
    gen_width = max(out.shape[1] - prompt_len for out, _, prompt_len, _ in pieces)
    pad_id = tokenizer.pad_token_id
    pad = torch.nn.functional.pad
    sequences, attention, completion, texts, logps = [], [], [], [], []
    for out, prompt_mask, prompt_len, gen_logps in pieces:
        out, prompt_mask = out.cpu(), prompt_mask.cpu()
        gen = out[:, prompt_len:]
        # completion tokens: everything up to and including the first EOS
        is_eos = gen == tokenizer.eos_token_id
        after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
        gen_mask = (~after_eos).long()
        gen = gen.masked_fill(after_eos, pad_id)
        left, right = prompt_width - prompt_len, gen_width - gen.shape[1]
        prompt_ids = pad(out[:, :prompt_len], (left, 0), value=pad_id)
        prompt_mask = pad(prompt_mask, (left, 0))
        gen_ids, gen_mask_padded = pad(gen, (0, right), value=pad_id), pad(gen_mask, (0, right))
        sequences.append(torch.cat([prompt_ids, gen_ids], dim=1))
        attention.append(torch.cat([prompt_mask, gen_mask_padded], dim=1))
        completion.append(torch.cat([torch.zeros_like(prompt_mask), gen_mask_padded], dim=1))
        if gen_logps is not None:  # column prompt_width - 1 + j scores generated token j
            kept = pad(gen_logps.cpu() * gen_mask, (0, right))
            if prompt_width == 0:  # an empty prompt block: the first token has no context
                kept = kept[:, 1:]
            before = torch.zeros(kept.shape[0], max(prompt_width - 1, 0))
            logps.append(torch.cat([before, kept], dim=1))
        for row, row_mask in zip(gen, gen_mask, strict=True):
            kept = row[row_mask.bool()].tolist()
            texts.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
    grouped = [texts[i * k : (i + 1) * k] for i in range(len(prompts))]
    return Samples(
        prompts,
        grouped,
        torch.cat(sequences),
        torch.cat(attention),
        torch.cat(completion),
        prompt_width,
        torch.cat(logps) if logps else None,
    )


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counted from each row's first real token (left-padded prompts)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def forward_logits(
    model: nn.Module,
    sequences: Tensor,
    attention_mask: Tensor,
    temperature: float = 1.0,
    first: int = 0,
) -> Tensor:
    """[R, T-1-first, V] logits predicting tokens first+1..T-1, divided by the sampling
    temperature. With ``first`` > 0 (the prompt block's last column: completions start after
    it) only those positions are projected onto the vocabulary (``logits_to_keep``), so the
    prompt's positions never cost a full-vocabulary tensor."""
    kwargs: dict[str, Any] = {
        "input_ids": sequences,
        "attention_mask": attention_mask,
        "position_ids": position_ids(attention_mask),
        "use_cache": False,
    }
    if first > 0 and takes_logits_to_keep(model):
        logits = model(**kwargs, logits_to_keep=sequences.shape[1] - first).logits[:, :-1]
    else:
        logits = model(**kwargs).logits[:, first:-1]
    return logits / temperature if temperature != 1.0 else logits


def pad_columns(per_token: Tensor, first: int) -> Tensor:
    """[R, T-1-first] per-token values back to the [R, T-1] convention (0 before ``first``)."""
    if not first:
        return per_token
    return torch.cat([per_token.new_zeros(per_token.shape[0], first), per_token], dim=1)


def rollout_token_logps(
    model: nn.Module,
    sequences: Tensor,
    attention_mask: Tensor,
    temperature: float = 1.0,
    first: int = 0,
) -> Tensor:
    """[R, T-1] log-prob of token t+1 given the tokens up to t, at ``temperature`` (fp32).
    Column j scores ``sequences[:, j + 1]``; mask it with ``completion_mask[:, 1:]``. Columns
    before ``first`` (prompt positions, when the caller says where completions start) are 0
    and never computed."""
    logits = forward_logits(model, sequences, attention_mask, temperature, first)
    return pad_columns(token_logps(logits, sequences[:, first + 1 :]), first)


@torch.no_grad()
def completion_logps(
    model: nn.Module,
    samples: Samples,
    device: torch.device,
    batch_size: int = 64,
    temperature: float = 1.0,
) -> Tensor:
    """[R] summed log-prob of each completion (EOS included) under ``model``."""
    out = []
    for start in range(0, samples.sequences.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        ids = samples.sequences[sl].to(device)
        mask = samples.attention_mask[sl].to(device)
        per_token = rollout_token_logps(model, ids, mask, temperature)
        comp = samples.completion_mask[sl].to(device)[:, 1:].to(per_token.dtype)
        out.append((per_token * comp).sum(-1).cpu())
    return torch.cat(out)


def shared_prompt_logits(
    model: nn.Module, sequences: Tensor, attention_mask: Tensor, prompt_width: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits of every completion position of a rollout batch with each distinct prompt computed
    ONCE for all the rows that share it (a group of samples of one prompt): one segment per
    prompt, ``prompt | completion_1 | ... | completion_n``, each completion attending to the
    prompt and causally to itself (never to its siblings), its positions continuing the prompt's
    -- the context every completion token has in its own row, so the same logits up to float
    rounding (tests/test_fast_paths.py). The rows may come in any order (a shuffled minibatch).

    sequences, attention_mask: [R, T], left-padded prompts in columns ``< prompt_width``, then
    the generated tokens. Returns ``logits`` [N, V] (N kept positions), ``index`` [R, G] (the
    kept position predicting each generated token, G = T - prompt_width) and ``targets`` [R, G]
    (those tokens): ``logits[index[r, t]]`` predicts ``sequences[r, prompt_width + t]``.
    """
    rows, width = sequences.shape
    g = width - prompt_width
    device = sequences.device
    prompts, group_of = torch.unique(sequences[:, :prompt_width], dim=0, return_inverse=True)
    members = [torch.nonzero(group_of == u).flatten().tolist() for u in range(len(prompts))]
    reals = [
        sequences[m[0], :prompt_width][attention_mask[m[0], :prompt_width].bool()] for m in members
    ]
    lengths = [len(p) + len(m) * g for p, m in zip(reals, members, strict=True)]
    span = max(lengths)
    n = len(members)
    ids = torch.zeros((n, span), dtype=sequences.dtype, device=device)
    pos = torch.zeros((n, span), dtype=torch.long, device=device)
    allowed = torch.zeros((n, span, span), dtype=torch.bool, device=device)
    causal = causal_mask(span, device)
    keep = torch.zeros((n, span), dtype=torch.bool, device=device)
    at = torch.zeros((rows, g), dtype=torch.long, device=device)  # flat position into n * span
    for u, (prompt, group) in enumerate(zip(reals, members, strict=True)):
        lp = len(prompt)
        if lp == 0:
            raise ValueError("shared-prompt logits need a prompt of at least one token")
        ids[u, :lp] = prompt
        starts = lay_shared_prefix(allowed[u], pos[u], 0, lp, [g] * len(group), causal)
        for r, start in zip(group, starts, strict=True):
            ids[u, start : start + g] = sequences[r, prompt_width:]
            # generated token t is predicted at the prompt's last position (t = 0), else at
            # the completion's own position t - 1
            at[r, 0] = u * span + lp - 1
            if g > 1:
                at[r, 1:] = u * span + start + torch.arange(g - 1, device=device)
        padding = torch.arange(lengths[u], span, device=device)
        allowed[u, padding, padding] = True  # padding attends to itself only
    keep.view(-1)[at.flatten()] = True
    rank = torch.cumsum(keep.view(-1).long(), 0) - 1
    kwargs: dict[str, Any] = {
        "input_ids": ids,
        "position_ids": pos,
        "attention_mask": attention_layout(model, allowed.unsqueeze(1)),
        "use_cache": False,
    }
    if takes_logits_to_keep(model):
        logits = model(**kwargs, logits_to_keep=keep).logits
        logits = logits.reshape(-1, logits.shape[-1])
    else:
        logits = model(**kwargs).logits[keep]
    return logits, rank[at], sequences[:, prompt_width:]
