"""ExPO: model extrapolation (Zheng et al., arXiv 2404.16792; ``../shared/ALGORITHMS.md`` s. 7).

Given an SFT checkpoint and a model aligned from it (DPO, RLHF...), ExPO moves further along the
direction of the alignment update, without any training:

    theta_expo = theta_aligned + alpha * (theta_aligned - theta_sft)
               = (1 + alpha) * theta_aligned - alpha * theta_sft

The paper writes it (section 2, its first numbered equation, eq. 1; the section / equation number
is *unverified* against the paper's latest revision, whose text was not available here) as
``theta_2 = (1 + alpha) theta_1 - alpha theta_0 = theta_1 + alpha Delta_theta`` with
``theta_0`` the SFT model and ``theta_1`` the aligned one. ``alpha = 0`` is the aligned model,
``alpha = -1`` the SFT model.

What is extrapolated, and how:

* every *parameter* (embeddings, attention and MLP weights, norms, the LM head); *buffers* (a
  causal mask, position ids, rotary frequencies) are copied from the aligned model unchanged;
* a tensor registered under several names (tied input / output embeddings) is updated exactly
  once -- applying the update under both names would move it by ``2 alpha`` instead of
  ``alpha``;
* the arithmetic is done in float32 (float64 stays float64) and cast back to the aligned
  tensor's dtype, so that a bf16 checkpoint's small differences are not rounded away before
  they are scaled (the authors' script works in bf16);
* both models must have the same parameter names and shapes: a resized vocabulary is refused
  with the offending key named, rather than broken silently.

LoRA: when the aligned model is a LoRA adapter on top of the SFT model, ``theta_aligned -
theta_sft`` is the adapter's delta ``Delta W = s * B A`` (``s = lora_alpha / r``), so ExPO is
``W + (1 + alpha) * s * B A``: the same adapter with every ``lora_B`` scaled by ``1 + alpha``
(:func:`extrapolate_lora`). The result stays a small adapter instead of a full copy of the
weights. Adapters for which that is not exact (DoRA, ``modules_to_save``, trainable tokens,
non-LoRA peft types) or whose base is not the SFT model are merged and extrapolated in full.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from prefopt.models.loading import load_pretrained, load_tokenizer, save_model
from prefopt.models.quiet import quiet_bitsandbytes_import

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

#: module names that hold a ``[vocab, hidden]`` matrix in Hugging Face models; a mismatch in
#: their first dimension is reported as a vocabulary mismatch
_VOCAB_MODULES = frozenset(
    {"wte", "embed_tokens", "word_embeddings", "embed_in", "embed_out", "lm_head", "shared"}
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


# ---------------------------------------------------------------------------- tensors
def extrapolate_state(
    sft: Mapping[str, Tensor], aligned: Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """``aligned + alpha * (aligned - sft)`` for every floating tensor of two state dicts.

    ExPO's update (arXiv 2404.16792, section 2, eq. 1:
    ``theta_expo = theta_aligned + alpha (theta_aligned - theta_sft)``), computed in float32 and
    cast back to each aligned tensor's dtype (and device); non-floating tensors (integer
    buffers, masks) are copied from ``aligned``. Inputs are not modified.

    Raises ValueError naming the first offending key when the key sets or a shape differ
    ("vocabulary sizes differ (A vs B)" for an embedding / LM head with another row count).
    A state dict holds buffers too, and has no notion of tied weights: to extrapolate a model,
    use :func:`extrapolate_model`, which skips buffers and updates a tied tensor once."""
    _check_alpha(alpha)
    _check_same_keys(list(sft), list(aligned))
    for key, tensor in aligned.items():
        _check_same_shape(key, tuple(sft[key].shape), tuple(tensor.shape))
    return {key: _extrapolated(sft[key], tensor, alpha) for key, tensor in aligned.items()}


def _extrapolated(sft: Tensor, aligned: Tensor, alpha: float) -> Tensor:
    """One tensor of :func:`extrapolate_state` (shapes already checked)."""
    if not aligned.is_floating_point():
        return aligned.detach().clone()
    work = torch.promote_types(aligned.dtype, torch.float32)
    theta_aligned = aligned.detach().to(work)
    theta_sft = sft.detach().to(device=aligned.device, dtype=work)
    return (theta_aligned + alpha * (theta_aligned - theta_sft)).to(aligned.dtype)


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise ValueError(f"ExPO: alpha must be a finite number, got {alpha!r}")


def _check_same_keys(sft_keys: list[str], aligned_keys: list[str]) -> None:
    sft_set, aligned_set = set(sft_keys), set(aligned_keys)
    for key in aligned_keys:
        if key not in sft_set:
            raise ValueError(
                f"ExPO: {key!r} is in the aligned model but not in the SFT model; both must "
                "have the same parameters (the same architecture)"
            )
    for key in sft_keys:
        if key not in aligned_set:
            raise ValueError(
                f"ExPO: {key!r} is in the SFT model but not in the aligned model; both must "
                "have the same parameters (the same architecture)"
            )


def _check_same_shape(
    key: str,
    sft_shape: tuple[int, ...],
    aligned_shape: tuple[int, ...],
    vocab_keys: Collection[str] = (),
) -> None:
    if sft_shape == aligned_shape:
        return
    rows_only = len(sft_shape) == len(aligned_shape) >= 1 and sft_shape[1:] == aligned_shape[1:]
    is_vocab = key in vocab_keys or bool(_VOCAB_MODULES & set(key.split(".")))
    if rows_only and is_vocab:
        raise ValueError(
            f"ExPO: {key!r}: vocabulary sizes differ ({sft_shape[0]} vs {aligned_shape[0]}, "
            "SFT vs aligned); extrapolation needs both models on the same vocabulary (was "
            "one model's embedding resized?)"
        )
    raise ValueError(f"ExPO: {key!r}: shapes differ (SFT {sft_shape} vs aligned {aligned_shape})")


# ---------------------------------------------------------------------------- modules
def extrapolate_model(sft_model: nn.Module, aligned_model: nn.Module, alpha: float) -> nn.Module:
    """A new model, ``theta_aligned + alpha (theta_aligned - theta_sft)`` (arXiv 2404.16792,
    section 2, eq. 1) over every parameter; buffers and everything else as in ``aligned_model``.

    The result is a deep copy of ``aligned_model``; neither input is modified. Tied parameters
    (one tensor under several names, e.g. GPT-2's ``wte`` and ``lm_head``) are updated once and
    stay tied. When ``aligned_model`` is a peft LoRA model on top of exactly the SFT weights,
    the result is that adapter with its delta scaled by ``1 + alpha`` (:func:`extrapolate_lora`);
    another peft model is merged first and extrapolated in full."""
    _check_alpha(alpha)
    if _is_peft(aligned_model):
        peft_model = cast("PeftModel", aligned_model)
        sft_plain = _merged_copy(sft_model) if _is_peft(sft_model) else sft_model
        if _lora_scaling_is_exact(peft_model) and _base_equals(peft_model, sft_plain):
            return extrapolate_lora(peft_model, alpha)
        return _extrapolate_in_place(_merged_copy(peft_model), sft_plain, alpha)
    sft_plain = _merged_copy(sft_model) if _is_peft(sft_model) else sft_model
    return _extrapolate_in_place(copy.deepcopy(aligned_model), sft_plain, alpha)


def _extrapolate_in_place(target: nn.Module, sft_model: nn.Module, alpha: float) -> nn.Module:
    """Replace ``target``'s parameters (a copy of the aligned model) by their ExPO values."""
    target_named = list(target.named_parameters(remove_duplicate=False))
    sft_named = dict(sft_model.named_parameters(remove_duplicate=False))
    _check_same_keys(list(sft_named), [name for name, _ in target_named])
    _check_same_tying(_tied_groups(target), _tied_groups(sft_model))
    vocab_keys = _vocab_keys(target) | _vocab_keys(sft_model)
    for name, param in target_named:
        _check_same_shape(name, tuple(sft_named[name].shape), tuple(param.shape), vocab_keys)
    updated: set[int] = set()
    with torch.no_grad():
        # remove_duplicate=True yields a tied Parameter once; the storage check also catches
        # two Parameter objects sharing one tensor's memory
        for name, param in target.named_parameters():
            if param.numel() and param.data_ptr() in updated:
                continue
            updated.add(param.data_ptr())
            param.copy_(_extrapolated(sft_named[name], param, alpha))
    return target


def _tied_groups(model: nn.Module) -> dict[str, frozenset[str]]:
    """Every parameter name -> the set of names under which its tensor is registered."""
    by_tensor: dict[int, set[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), set()).add(name)
    return {name: frozenset(names) for names in by_tensor.values() for name in names}


def _check_same_tying(aligned: dict[str, frozenset[str]], sft: dict[str, frozenset[str]]) -> None:
    for name, group in aligned.items():
        if group != sft[name]:
            raise ValueError(
                f"ExPO: {name!r} shares its tensor with {sorted(group - {name})} in the aligned "
                f"model but with {sorted(sft[name] - {name})} in the SFT model; both must tie "
                "the same weights (tie_word_embeddings)"
            )


def _vocab_keys(model: nn.Module) -> set[str]:
    """Names of the input / output embedding parameters, when the model says which they are."""
    modules: list[nn.Module] = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        fn = getattr(model, getter, None)
        module = fn() if callable(fn) else None
        if isinstance(module, nn.Module):
            modules.append(module)
    ids = {id(p) for module in modules for p in module.parameters()}
    return {n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in ids}


# ---------------------------------------------------------------------------- LoRA
def extrapolate_lora(peft_model: nn.Module, alpha: float) -> nn.Module:
    """A copy of a peft LoRA model whose adapter delta is ``(1 + alpha)`` times the original.

    With the SFT model as the adapter's base, ``theta_aligned - theta_sft`` is the adapter's
    delta, and ExPO (arXiv 2404.16792, section 2, eq. 1) becomes ``W + (1 + alpha) Delta W``.
    LoRA's delta is ``Delta W = s * B A`` (``s = lora_alpha / r``, transposed for Conv1D /
    embeddings, plus ``s * b_B`` with ``lora_bias``): linear in ``B`` (weight and bias) with
    ``A`` and ``s`` fixed, so multiplying every ``lora_B`` (``lora_embedding_B``) of the active
    adapters by ``1 + alpha`` scales the delta exactly. The input is not modified; whether its
    base is the SFT model is the caller's to know (:func:`extrapolate_model` checks).

    Refused (ValueError) where scaling B is not exact: DoRA (its magnitude renormalises
    ``W + s B A``), ``modules_to_save`` / trainable tokens (fully trained copies), other peft
    types."""
    _check_alpha(alpha)
    if not _is_peft(peft_model):
        raise ValueError(
            f"extrapolate_lora needs a peft PeftModel, got {type(peft_model).__name__}"
        )
    problem = _lora_scaling_problem(cast("PeftModel", peft_model))
    if problem:
        raise ValueError(
            f"extrapolate_lora: {problem}; merge the adapter and use extrapolate_model"
        )
    from peft.tuners.lora import LoraLayer

    scaled = copy.deepcopy(peft_model)
    adapters = _active_adapters(cast("PeftModel", scaled))
    with torch.no_grad():
        for module in scaled.modules():
            if not isinstance(module, LoraLayer):
                continue
            for adapter in adapters:
                for params in _lora_b_parameters(module, adapter):
                    for param in params:
                        param.mul_(1.0 + alpha)
    return scaled


def _lora_b_parameters(layer: Any, adapter: str) -> list[list[Tensor]]:
    """The parameters of ``adapter``'s B factor in one LoRA layer (Linear / Conv: the
    ``lora_B`` module's weight and bias; Embedding: the ``lora_embedding_B`` matrix)."""
    found: list[list[Tensor]] = []
    if adapter in getattr(layer, "lora_B", {}):
        found.append(list(layer.lora_B[adapter].parameters()))
    if adapter in getattr(layer, "lora_embedding_B", {}):
        found.append([layer.lora_embedding_B[adapter]])
    return found


def _is_peft(model: nn.Module) -> bool:
    quiet_bitsandbytes_import()
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _active_adapters(model: PeftModel) -> list[str]:
    active = model.active_adapters
    return [active] if isinstance(active, str) else list(active)


def _lora_scaling_problem(model: PeftModel) -> str | None:
    """Why scaling ``lora_B`` would not be ExPO for this adapter (None when it would be)."""
    from peft import PeftType

    for adapter in _active_adapters(model):
        config = model.peft_config[adapter]
        if config.peft_type != PeftType.LORA:
            return f"adapter {adapter!r} is {config.peft_type}, not LoRA"
        if getattr(config, "use_dora", False):
            return f"adapter {adapter!r} uses DoRA, whose delta is not linear in B"
        modules_to_save = getattr(config, "modules_to_save", None)
        if modules_to_save:
            return f"adapter {adapter!r} trains whole modules ({modules_to_save})"
        if getattr(config, "trainable_token_indices", None):
            return f"adapter {adapter!r} trains token embeddings (trainable_token_indices)"
    return None


def _lora_scaling_is_exact(model: PeftModel) -> bool:
    return _lora_scaling_problem(model) is None


def _base_equals(peft_model: PeftModel, sft_model: nn.Module) -> bool:
    """Are the adapter's frozen base weights exactly the SFT model's parameters?"""
    sft_named = dict(sft_model.named_parameters(remove_duplicate=False))
    base_named = {}
    for name, param in peft_model.get_base_model().named_parameters(remove_duplicate=False):
        if "lora_" in name:
            continue
        base_named[name.replace(".base_layer", "")] = param
    if set(base_named) != set(sft_named):
        return False
    for name, param in base_named.items():
        other = sft_named[name]
        if param.shape != other.shape or param.dtype != other.dtype:
            return False
        if not torch.equal(param.detach(), other.detach().to(param.device)):
            return False
    return True


def _merged_copy(peft_model: nn.Module) -> nn.Module:
    """The full weights of a peft model (adapter merged into a copy of its base)."""
    return cast(Any, copy.deepcopy(peft_model)).merge_and_unload()


# ---------------------------------------------------------------------------- folders
@dataclass
class ExpoPair:
    """An SFT model and its aligned model, loaded and checked to share one vocabulary.

    tokenizer: the aligned model's (the SFT model's when the aligned folder has none; None
    when neither has one)."""

    sft: nn.Module
    aligned: nn.Module
    tokenizer: PreTrainedTokenizerBase | None


def load_pair(
    sft_path: str,
    aligned_path: str,
    *,
    dtype: str = "fp32",
    trust_remote_code: bool = False,
) -> ExpoPair:
    """Load both models with :func:`prefopt.models.loading.load_pretrained` (a folder holding
    ``adapter_config.json`` loads as a peft model) and check that they share a vocabulary: the
    tokenizers' sizes and token ids (when both folders have one) and the input embeddings'
    shapes. Errors name both paths."""
    tokenizers = [_maybe_tokenizer(p, trust_remote_code) for p in (sft_path, aligned_path)]
    sft_tok, aligned_tok = tokenizers
    if sft_tok is not None and aligned_tok is not None:
        _check_same_tokenizer(sft_tok, aligned_tok, sft_path, aligned_path)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    sft = load_pretrained(sft_path, **kwargs)
    aligned = load_pretrained(aligned_path, **kwargs)
    _check_same_embeddings(sft, aligned, sft_path, aligned_path)
    return ExpoPair(sft, aligned, aligned_tok if aligned_tok is not None else sft_tok)


def load_and_extrapolate(
    sft_path: str,
    aligned_path: str,
    alpha: float,
    out: Path | None,
    *,
    dtype: str = "fp32",
    trust_remote_code: bool = False,
) -> nn.Module:
    """Load an SFT model and its aligned model, extrapolate (arXiv 2404.16792, section 2, eq. 1:
    ``theta_expo = theta_aligned + alpha (theta_aligned - theta_sft)``), and save the result to
    ``out`` (when given) in Hugging Face format with the aligned model's tokenizer.

    A LoRA aligned folder on the SFT model gives a LoRA folder back (the adapter scaled by
    ``1 + alpha``, its base still named in ``adapter_config.json``); anything else a full
    model folder. Returns the extrapolated model."""
    _check_alpha(alpha)
    pair = load_pair(sft_path, aligned_path, dtype=dtype, trust_remote_code=trust_remote_code)
    model = extrapolate_model(pair.sft, pair.aligned, alpha)
    if out is not None:
        save_model(model, pair.tokenizer, Path(out))
    return model


def _maybe_tokenizer(path: str, trust_remote_code: bool) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved with a model, or None when there is none (a local folder without
    tokenizer files, or a hub name that does not resolve to one)."""
    folder = Path(path)
    if folder.is_dir() and not any((folder / f).exists() for f in _TOKENIZER_FILES):
        return None
    try:
        return load_tokenizer(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None


def _check_same_tokenizer(
    sft_tok: PreTrainedTokenizerBase,
    aligned_tok: PreTrainedTokenizerBase,
    sft_path: str,
    aligned_path: str,
) -> None:
    n_sft, n_aligned = len(sft_tok), len(aligned_tok)
    if n_sft != n_aligned:
        raise ValueError(
            f"ExPO: vocabulary sizes differ ({n_sft} vs {n_aligned}): the tokenizer of the SFT "
            f"model {sft_path!r} has {n_sft} tokens, that of the aligned model {aligned_path!r} "
            f"{n_aligned}"
        )
    sft_vocab, aligned_vocab = sft_tok.get_vocab(), aligned_tok.get_vocab()
    if sft_vocab != aligned_vocab:
        token = next(
            t
            for t in sorted(set(sft_vocab) | set(aligned_vocab))
            if sft_vocab.get(t) != aligned_vocab.get(t)
        )
        raise ValueError(
            f"ExPO: the tokenizers of the SFT model {sft_path!r} and the aligned model "
            f"{aligned_path!r} have the same size but map tokens differently (token {token!r}: "
            f"id {sft_vocab.get(token)} vs {aligned_vocab.get(token)})"
        )


def _check_same_embeddings(
    sft: nn.Module, aligned: nn.Module, sft_path: str, aligned_path: str
) -> None:
    shapes = []
    for model in (sft, aligned):
        embeddings = cast(Any, model).get_input_embeddings()
        shapes.append(tuple(embeddings.weight.shape))
    if shapes[0] != shapes[1]:
        raise ValueError(
            f"ExPO: vocabulary sizes differ ({shapes[0][0]} vs {shapes[1][0]}): the input "
            f"embedding of the SFT model {sft_path!r} is {shapes[0]}, that of the aligned model "
            f"{aligned_path!r} {shapes[1]}"
        )
