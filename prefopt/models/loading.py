"""Load or build models and tokenizers, add LoRA / k-bit quantisation, save portable models.

Everything a run saves loads back with plain `transformers` / `peft`: a full model folder
(`AutoModelForCausalLM.from_pretrained`) or a LoRA adapter folder (`PeftModel` /
`AutoPeftModelForCausalLM`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from prefopt.models.quiet import quiet_bitsandbytes_import, without_log_messages
from prefopt.paths import say

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from prefopt.config import LoraSettings, ModelConfig, TinyModelConfig


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        # Padding positions are masked out everywhere, so reusing EOS as PAD is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
    """A randomly initialised GPT-2 or Llama model sized by `cfg`, vocabulary from `tokenizer`.

    Dropout is zero: preference losses compare log-probs of the same sequences under two
    models, and dropout noise would bias them (TRL disables it for DPO for the same reason).
    """
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    special = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vocab = len(tokenizer)
    inner = cfg.intermediate or 4 * cfg.hidden
    if cfg.family == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_positions=cfg.max_positions,
            n_embd=cfg.hidden,
            n_layer=cfg.layers,
            n_head=cfg.heads,
            n_inner=inner,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **special,
        )
        return GPT2LMHeadModel(config)
    if cfg.family == "llama":
        llama_config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=cfg.hidden,
            intermediate_size=inner,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            num_key_value_heads=cfg.heads,
            max_position_embeddings=cfg.max_positions,
            attention_dropout=0.0,
            tie_word_embeddings=True,
            **special,
        )
        return LlamaForCausalLM(llama_config)
    raise ValueError(f"model.tiny.family: unknown family {cfg.family!r}; use gpt2 or llama")


def build_tiny_reward_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
    """A tiny causal-LM backbone with a scalar head (`*ForSequenceClassification`, 1 label)."""
    from transformers import AutoModelForSequenceClassification

    lm = build_tiny_model(cfg, tokenizer)
    config = cast("PreTrainedConfig", lm.config)
    config.num_labels = 1
    return AutoModelForSequenceClassification.from_config(config)


def load_reward_backbone(
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    init_path: str | None,
    compute_dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> nn.Module:
    """A reward model: a causal-LM backbone (pretrained or tiny) with a new scalar head, through
    `AutoModelForSequenceClassification(num_labels=1)`, so the saved model loads with plain
    transformers. The score of a sequence is the head's output at its last non-pad token."""
    if init_path is None:
        _no_quantized_tiny(cfg)
        model = build_tiny_reward_model(cfg.tiny, tokenizer)
    else:
        from transformers import AutoModelForSequenceClassification

        kwargs = load_kwargs(
            dtype=cfg.dtype,
            quantization=cfg.quantization,
            compute_dtype=compute_dtype,
            device=device,
            trust_remote_code=cfg.trust_remote_code,
        )
        # transformers prints a table of the keys the checkpoint lacks; the new scalar head is
        # always among them: _say_what_loading_left_out says so in one line, and names the rest
        with without_log_messages("transformers.modeling_utils", "LOAD REPORT"):
            model, info = AutoModelForSequenceClassification.from_pretrained(
                init_path, num_labels=1, output_loading_info=True, **kwargs
            )
        _say_what_loading_left_out(init_path, info)
        if cfg.quantization == "4bit":
            check_4bit_widths(model)
    model_config = cast("PreTrainedConfig", model.config)
    if model_config.pad_token_id is None:
        model_config.pad_token_id = tokenizer.pad_token_id
    return _adapted(model, cfg, task_type="SEQ_CLS")


#: The new head of a sequence-classification model on a causal-LM checkpoint.
HEAD_KEYS = ("score", "classifier")


def _say_what_loading_left_out(path: str, info: dict[str, Any]) -> None:
    missing = list(info.get("missing_keys") or [])
    head = [k for k in missing if k.split(".")[0] in HEAD_KEYS]
    other = [k for k in missing if k not in head]
    unexpected = list(info.get("unexpected_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if head:
        say(f"reward model: a new scalar head ({', '.join(head)}) on {path}")
    if other or mismatched:
        _log.warning(
            "loading %s as a reward model: %s newly initialised%s", path, ", ".join(other),
            f"; shapes differ for {', '.join(map(str, mismatched))}" if mismatched else "",
        )  # fmt: skip
    if unexpected:
        _log.info("loading %s as a reward model: unused %s", path, ", ".join(unexpected))


def _no_quantized_tiny(cfg: ModelConfig) -> None:
    if cfg.quantization:
        raise ValueError("model.quantization needs a pretrained model (model.name_or_path)")


def check_4bit_widths(model: nn.Module) -> None:
    """Refuse a 4-bit model with a linear layer narrower than its quantisation block.

    bitsandbytes quantises weights in blocks of ``blocksize`` (64) values; on CPUs with
    AVX512-BF16 it repacks 4-bit weights per ``in_features // blocksize`` block, which is 0 for
    a narrower layer and crashes deep inside its kernel (``shape '[96, 0]' is invalid``). Whether
    that crash happens depends on the CPU, so the check does not: it refuses on every machine."""
    quiet_bitsandbytes_import()
    try:
        import bitsandbytes as bnb
    except ImportError:  # pragma: no cover - no k-bit model can exist without it
        return
    for name, module in model.named_modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        state = getattr(module.weight, "quant_state", None)
        blocksize = int(getattr(state, "blocksize", 64) or 64)
        if module.in_features < blocksize:
            from prefopt.config import ConfigError

            raise ConfigError(
                [
                    f"model.quantization=4bit: layer {name!r} has in_features="
                    f"{module.in_features}, narrower than the 4-bit block size {blocksize}; "
                    f"bitsandbytes cannot run it. Use a model whose linear layers are at least "
                    f"{blocksize} wide, or no quantization"
                ]
            )


def _adapted(model: nn.Module, cfg: ModelConfig, task_type: str) -> nn.Module:
    """The common tail of loading a trainable model (policy or reward model): gradient
    checkpointing and LoRA (with k-bit preparation) when configured, then dropout off."""
    if cfg.gradient_checkpointing:
        cast("PreTrainedModel", model).gradient_checkpointing_enable()
    if cfg.lora is not None:
        model = add_lora(
            model, cfg.lora, quantized=cfg.quantization is not None, task_type=task_type
        )
    disable_dropout(model)
    fuse_activations(model)
    return model


def quantization_config(kind: str | None, compute_dtype: torch.dtype) -> Any:
    if kind is None:
        return None
    quiet_bitsandbytes_import()  # transformers imports it to load a k-bit model
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"model.quantization: {kind!r} is not one of null, 4bit, 8bit")


WEIGHT_DTYPES: dict[str, Any] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "auto": "auto",
}


def load_kwargs(
    *,
    dtype: str = "fp32",
    quantization: str | None = None,
    compute_dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """`from_pretrained` arguments. Weights load in `dtype` (fp32 by default: transformers 5
    would otherwise keep a checkpoint's own fp16/bf16, and AdamW on half-precision weights loses
    small updates; mixed precision comes from `trainer.precision`). A k-bit model is placed on
    `device` (this process's device) by bitsandbytes."""
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": WEIGHT_DTYPES[dtype]}
    qconfig = quantization_config(quantization, compute_dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": str(device or ("cuda" if torch.cuda.is_available() else "cpu"))}
    return kwargs


def load_pretrained(
    path: str,
    *,
    quantization: str | None = None,
    compute_dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    device: torch.device | str | None = None,
    dtype: str = "fp32",
) -> nn.Module:
    """`AutoModelForCausalLM.from_pretrained` on a hub name or a local folder (a LoRA adapter
    folder loads its base model and the adapter, merged-free, through peft)."""
    from transformers import AutoModelForCausalLM

    kwargs = load_kwargs(
        dtype=dtype,
        quantization=quantization,
        compute_dtype=compute_dtype,
        device=device,
        trust_remote_code=trust_remote_code,
    )
    if (Path(path) / "adapter_config.json").exists():
        quiet_bitsandbytes_import()
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, is_trainable=False, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if quantization == "4bit":
        check_4bit_widths(model)
    return fuse_activations(model)


def load_backbone(path: str, trust_remote_code: bool = False, dtype: str = "fp32") -> nn.Module:
    """The transformer body of any checkpoint (`AutoModel`): a causal LM, a reward model..."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(
        path, **load_kwargs(dtype=dtype, trust_remote_code=trust_remote_code)
    )


def add_lora(
    model: nn.Module, lora: LoraSettings, quantized: bool, task_type: str = "CAUSAL_LM"
) -> nn.Module:
    check_lora_targets(model, lora.target_modules)
    quiet_bitsandbytes_import()
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) if lora.target_modules else None,
        task_type=task_type,
    )
    return get_peft_model(model, config)


ADAPTABLE_LAYERS = ("Linear", "Conv1D", "Embedding", "Linear4bit", "Linear8bitLt")


def check_lora_targets(model: nn.Module, targets: Sequence[str] | None) -> None:
    """Every name in ``model.lora.target_modules`` must match a module of the model as peft
    matches them (the full name, or its last dotted parts); otherwise a ConfigError listing the
    model's adaptable layers, instead of peft's traceback."""
    from prefopt.config import ConfigError

    if not targets or "all-linear" in targets:
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        layers = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if type(module).__name__ in ADAPTABLE_LAYERS and name
            }
        )
        raise ConfigError(
            [
                f"model.lora.target_modules: {', '.join(map(repr, missing))} names no module of "
                f"{type(model).__name__}; its adaptable layers: {', '.join(layers)} (or "
                "'all-linear', or null for peft's default)"
            ]
        )


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "adapter_model.bin", "*.pt")


def model_source_problem(name: str, key: str, *, tokenizer: bool = True) -> str | None:
    """What is wrong with a model (or tokenizer) source before anything loads it, as one line
    naming ``key``, or None. A folder must hold what ``save_pretrained`` writes (config,
    weights, and a tokenizer when ``tokenizer``); a path that does not exist is reported as a
    missing folder when it reads as a path (``/x``, ``./x``, ``~/x``, ``a/b/c``, or ``a/b``
    where ``a`` is a local folder), never handed to the hub as a repo id."""
    path = Path(name).expanduser()
    if path.is_dir():
        present = {p.name for p in path.iterdir()}
        if not present:
            return f"{key}={name}: the folder is empty (expected a model saved by save_pretrained)"
        adapter = "adapter_config.json" in present
        tokenizer_only = key == "model.tokenizer"
        missing = []
        if "config.json" not in present and not adapter and not tokenizer_only:
            missing.append("config.json")
        weights = any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS)
        if not weights and not tokenizer_only:
            missing.append("weights (*.safetensors)")
        if tokenizer and not present & set(TOKENIZER_FILES):
            missing.append("tokenizer files (tokenizer.json or tokenizer_config.json)")
        if missing:
            fix = " (or set model.tokenizer)" if missing[-1].startswith("tokenizer") else ""
            return f"{key}={name}: not a model folder, no {', '.join(missing)}{fix}"
        return None
    if path.exists():
        return f"{key}={name}: a file, not a model folder"
    first = Path(name.split("/", 1)[0]).expanduser()
    reads_as_path = (
        name.startswith(("/", "./", "../", "~", "."))
        or name.count("/") > 1
        or name.endswith("/")
        or ("/" in name and first.is_dir())
    )
    if reads_as_path:
        return f"{key}={name}: no such folder (a local path; hub names read 'org/name')"
    return None


def load_policy(
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    init_path: str | None,
    compute_dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> nn.Module:
    """The trainable policy: pretrained from `init_path` (or tiny from config when None), then
    LoRA (and k-bit preparation) when configured. Dropout is disabled."""
    if init_path is None:
        _no_quantized_tiny(cfg)
        model = build_tiny_model(cfg.tiny, tokenizer)
    else:
        model = load_pretrained(
            init_path,
            quantization=cfg.quantization,
            compute_dtype=compute_dtype,
            trust_remote_code=cfg.trust_remote_code,
            device=device,
            dtype=cfg.dtype,
        )
    return _adapted(model, cfg, task_type="CAUSAL_LM")


def fuse_activations(model: nn.Module) -> nn.Module:
    """GPT-2's ``gelu_new`` (`NewGELUActivation`: the tanh approximation written as five
    elementwise tensor ops) replaced in place by the same function as one fused kernel
    (``torch.nn.functional.gelu(approximate="tanh")``, transformers' ``gelu_pytorch_tanh``):
    equal up to float rounding, one pass over the activations instead of five (about 12% of a
    training step of a GPT-2 on CPU; docs/performance.md). The config is unchanged, so a saved
    model is the same model."""
    from transformers.activations import NewGELUActivation, PytorchGELUTanh

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, PytorchGELUTanh())
    return model


@contextlib.contextmanager
def attention_implementation(
    models: Sequence[nn.Module | None], impl: str | None
) -> Iterator[None]:
    """The transformers models inside ``models`` (also under DDP, PEFT or a value model's
    wrapper) run attention ``impl`` for the duration (transformers' ``set_attn_implementation``,
    read at every forward), then what each had again. Nothing changes with ``impl`` None."""
    if impl is None:
        yield
        return
    from transformers import PreTrainedModel as Pretrained

    impl = str(impl)  # a recipe's Enum member: transformers gets the plain word
    changed: list[tuple[Any, str]] = []
    seen: set[int] = set()
    try:
        for model in models:
            for module in model.modules() if model is not None else ():
                config = getattr(module, "config", None)
                if not isinstance(module, Pretrained) or id(config) in seen:
                    continue
                seen.add(id(config))
                before = cast(Any, config)._attn_implementation
                if before != impl:
                    module.set_attn_implementation(impl)
                    changed.append((module, before))
        yield
    finally:
        for module, before in reversed(changed):
            module.set_attn_implementation(before)


def disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def frozen_copy(model: nn.Module) -> nn.Module:
    import copy

    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def model_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer (names, shapes, values): identifies weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        data = tensor.detach().to("cpu").contiguous()
        digest.update(str(tuple(data.shape)).encode() + str(data.dtype).encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:16]


def save_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    path: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save in Hugging Face format: a full model, or the LoRA adapter (with the base model's
    name in adapter_config.json) when the model is a PeftModel. ``state_dict``: the full
    weights of a sharded model (FSDP), gathered by the caller, saved instead of its shards."""
    path.mkdir(parents=True, exist_ok=True)
    saving = cast("PreTrainedModel | PeftModel", model)
    if state_dict is None:
        saving.save_pretrained(str(path), safe_serialization=True)
    else:  # transformers' save_pretrained takes the weights to write instead of its own
        cast(Any, saving).save_pretrained(str(path), safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
