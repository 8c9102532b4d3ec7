"""The engine a run trains on: one process, DDP, FSDP or DeepSpeed ZeRO, all through accelerate.

prefopt never launches processes itself: ``accelerate launch --config_file
recipes/accelerate/<engine>.yaml -m prefopt.cli train ...`` (or ``torchrun``) starts them, and
the trainer's ``Accelerator`` reads the launch settings. This module says which engine that is
(``summary.json`` records it under ``run``), refuses launches that would silently train
something else than asked, and holds the few pieces that differ by engine:

* FSDP on CPU: accelerate applies its FSDP plugin only on accelerators (on CPU its state stays
  ``MULTI_CPU`` and the model would silently be wrapped in DDP). On CPU prefopt therefore shards
  the model itself, with accelerate's own FSDP2 routine (``fsdp2_prepare_model``: the plugin
  read from the launch config, the transformer block as the wrap unit) and gloo;
* the full weights and optimizer state of a sharded model, gathered for a portable checkpoint
  or the saved model, and the sharded (``torch.distributed.checkpoint``) form that any number of
  processes, one included, can load back;
* the policy's full weights for generation (``full_weights_for_generation``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from prefopt.paths import launched_processes

ENGINES = ("single", "ddp", "fsdp", "deepspeed")


class LaunchError(RuntimeError):
    """A launch that would not train what it asks for (e.g. FSDP version 1 on CPU)."""


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def fsdp_requested() -> bool:
    """The launch config asks for FSDP (``distributed_type: FSDP`` sets this variable)."""
    return _flag("ACCELERATE_USE_FSDP")


def deepspeed_requested() -> bool:
    return _flag("ACCELERATE_USE_DEEPSPEED")


def use_cpu(device: str) -> bool:
    """accelerate's ``cpu`` flag for ``trainer.device``: ``cpu``, or ``auto`` on a machine with
    no accelerator; without it a multi-process launch on CPU would not join its processes (each
    would train alone on its slice of every batch)."""
    return device == "cpu" or (device == "auto" and not torch.accelerator.is_available())


def engine_of(accelerator: Any) -> str:
    """``single``, ``ddp``, ``fsdp`` or ``deepspeed``: what this run really trains on."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return "deepspeed"
    if kind == DistributedType.FSDP or fsdp_requested():
        return "fsdp"
    return "ddp" if accelerator.num_processes > 1 else "single"


def adamw_kernel(accelerator: Any, params: Sequence[Tensor]) -> dict[str, bool]:
    """AdamW's fastest implementation for these parameters: ``fused`` (one kernel for every
    tensor, CPU and CUDA) where the engine leaves the parameters as plain tensors (single
    process or DDP); otherwise torch's default. On CPU torch's default is the per-tensor loop,
    which took about a fifth of a GPT-2 DPO step (docs/performance.md); fused computes the same
    update up to float rounding (tests/test_fast_paths.py)."""
    plain = engine_of(accelerator) in ("single", "ddp") and all(
        type(p) is torch.nn.Parameter and p.is_floating_point() and p.device.type in ("cpu", "cuda")
        for p in params
    )
    return {"fused": True} if plain else {}


def check_launch(accelerator: Any, trainer: Any) -> None:
    """Refuse a launch whose processes or settings would not be the ones the run records
    (``trainer``: the recipe's ``trainer`` section)."""
    precision = trainer.precision
    launched = launched_processes()
    if launched > 1 and accelerator.num_processes != launched:
        raise LaunchError(
            f"the launcher started {launched} processes but accelerate joined "
            f"{accelerator.num_processes}: on a machine without GPUs set trainer.device=cpu "
            "(or use_cpu: true in the accelerate config)"
        )
    wanted = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    launch = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launch and launch != wanted and not deepspeed_requested():
        raise LaunchError(
            f"trainer.precision is {precision} but the accelerate launch config says "
            f"mixed_precision: {launch}; the recipe decides: set trainer.precision, and "
            "mixed_precision: 'no' (or the same value) in the launch config"
        )
    if deepspeed_requested() and engine_of(accelerator) != "deepspeed":
        raise LaunchError(
            "the launch config asks for DeepSpeed, which accelerate runs only on GPUs: use "
            "recipes/accelerate/ddp.yaml or fsdp.yaml on CPU"
        )
    if engine_of(accelerator) == "deepspeed":
        _check_deepspeed(accelerator.state.deepspeed_plugin.deepspeed_config, trainer)


def _check_deepspeed(config: dict[str, Any], trainer: Any) -> None:
    """DeepSpeed accumulates and clips inside its engine, from its own config: they must say
    what the recipe says."""
    pairs = (
        ("gradient_accumulation_steps", "trainer.grad_accum", trainer.grad_accum),
        ("gradient_clipping", "trainer.max_grad_norm", trainer.max_grad_norm or 0.0),
    )
    for key, recipe_key, wanted in pairs:
        value = config.get(key)
        if value not in (None, "auto") and float(value) != float(wanted):
            raise LaunchError(
                f"{recipe_key} is {wanted} but the DeepSpeed config says {key}: {value}; "
                f"set them equal (the DeepSpeed engine applies {key})"
            )


def run_info(accelerator: Any, precision: str) -> dict[str, Any]:
    """``summary.json``'s ``run`` block: how the run was launched and on what."""
    import accelerate
    import transformers

    info: dict[str, Any] = {
        "processes": accelerator.num_processes,
        "engine": engine_of(accelerator),
        "device": accelerator.device.type,
        "precision": precision,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }
    if info["engine"] == "deepspeed":
        plugin = accelerator.state.deepspeed_plugin
        info["zero_stage"] = plugin.zero_stage
    if info["engine"] == "fsdp":
        info["fsdp_state_dict"] = fsdp_state_dict_type()
    return info


# ---------------------------------------------------------------------------------- FSDP


def fsdp_state_dict_type() -> str:
    """``SHARDED_STATE_DICT`` (FSDP2's default) or ``FULL_STATE_DICT``, from the launch config:
    how checkpoints are written under FSDP."""
    value = os.environ.get("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT").upper()
    if value not in ("SHARDED_STATE_DICT", "FULL_STATE_DICT"):
        raise LaunchError(
            f"fsdp_state_dict_type {value}: prefopt writes SHARDED_STATE_DICT or FULL_STATE_DICT"
        )
    return value


def needs_own_fsdp(accelerator: Any) -> bool:
    """FSDP asked for on CPU, where accelerate leaves it to the caller (see the module doc)."""
    from accelerate.utils import DistributedType

    return fsdp_requested() and accelerator.distributed_type != DistributedType.FSDP


def shard_on_cpu(accelerator: Any, model: nn.Module) -> nn.Module:
    """Shard ``model`` in place with accelerate's FSDP2 routine and the launch config's plugin
    (CPU, gloo). The optimizer must be created afterwards, from the sharded parameters."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* settings of the launch
    if plugin.fsdp_version != 2:
        raise LaunchError(
            "FSDP on CPU needs fsdp_version: 2 (FSDP1 has no CPU support in torch); "
            "recipes/accelerate/fsdp.yaml sets it"
        )
    if accelerator.mixed_precision != "no":
        raise LaunchError("FSDP on CPU trains in fp32: set trainer.precision=fp32")
    accelerator.state.fsdp_plugin = plugin
    return fsdp2_prepare_model(accelerator, model)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule) or any(isinstance(m, FSDPModule) for m in model.modules())


def _full_options(cpu_offload: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # cpu_offload: gathered on rank 0 only (the others get an empty dict)
    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """Every rank must call this: the full weights of a sharded model, on rank 0 (CPU). A tied
    weight appears once, under the name ``named_parameters`` gives it (as a plain save)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    weights = cast(dict[str, Tensor], get_model_state_dict(model, options=_full_options()))
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    return {name: value for name, value in weights.items() if name in names}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Every rank must call this: the optimizer state keyed by parameter name, on rank 0."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options())


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, Tensor],
    optimizer_state: dict[str, Any],
) -> None:
    """Load full (unsharded, name-keyed) weights and optimizer state into ``model`` whether it
    is sharded or not; every rank passes the same full tensors and keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, cast(Any, weights), options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


def save_sharded(folder: os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the weights and optimizer state (torch.distributed
    .checkpoint); any number of processes can read them back (:func:`load_sharded`)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(model, optimizer)
    dcp.save({"model": weights, "optimizer": optim}, checkpoint_id=str(folder))


def load_sharded(folder: os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read a :func:`save_sharded` checkpoint into ``model`` and ``optimizer``, resharding to
    this launch's processes; in one process (no process group) the shards are joined."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    weights, optim = get_state_dict(model, optimizer)  # the structure to read into
    state: dict[str, Any] = {"model": weights, "optimizer": optim}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )


# ----------------------------------------------------------------------------- DeepSpeed


def deepspeed_full_state(
    model: nn.Module, zero_optimizer: Any, group_names: list[list[str]]
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Every rank must call this (the pieces are all-reduced): the full fp32 weights and Adam
    moments of a ZeRO-partitioned model, keyed by parameter name, in the form a single
    process's AdamW loads (``group_names``: the names in each of the trainer's parameter
    groups). Written against DeepSpeed's documented ``safe_get_full_*`` API; not yet run
    (no GPU where it was written, see docs/scaling.md)."""
    from deepspeed.utils import (  # type: ignore[import-not-found]
        safe_get_full_fp32_param,
        safe_get_full_optimizer_state,
    )

    base = zero_optimizer.optimizer  # the torch AdamW over the flat partitions
    steps = [s["step"] for s in base.state.values() if "step" in s]
    step = torch.as_tensor(steps[0] if steps else 0, dtype=torch.float32).cpu()
    weights: dict[str, Tensor] = {}
    state: dict[str, dict[str, Tensor]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        weights[name] = safe_get_full_fp32_param(param).detach().cpu()
        moments = {k: safe_get_full_optimizer_state(param, k) for k in ("exp_avg", "exp_avg_sq")}
        state[name] = {k: v.detach().cpu() for k, v in moments.items() if v is not None}
        state[name]["step"] = step.clone()
    groups = [
        {**{k: v for k, v in group.items() if k != "params"}, "params": names}
        for group, names in zip(base.param_groups, group_names, strict=True)
    ]
    return weights, {"state": state, "param_groups": groups}


@contextlib.contextmanager
def full_weights_for_generation(model: nn.Module, gather_zero3: bool = True) -> Iterator[None]:
    """Generation runs a different number of forward passes on each process (each stops at
    its own EOS), so a sharded policy must hold its full weights first, once per rollout:

    * FSDP2: every FSDP unit is all-gathered and kept unsharded until the block ends (the
      per-forward reshard is switched off meanwhile); all processes enter together;
    * DeepSpeed ZeRO-3: ``deepspeed.zero.GatheredParameters`` on all parameters when
      ``gather_zero3`` (``rollout.gather_zero3_weights``); otherwise ZeRO-3 gathers layer by
      layer at every generated token, which needs far less memory and is much slower
      (DeepSpeed issue #4354);
    * anything else: nothing to do.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if units:
        # each unit's reshard-after-forward setting, restored afterwards (accelerate chooses
        # it per unit: the root and the output layer keep their weights, blocks reshard)
        saved = [
            (state, state._auto_reshard_after_forward, [g.post_forward_mesh_info for g in groups])
            for state, groups in (
                (u._get_fsdp_state(), u._get_fsdp_state()._fsdp_param_groups) for u in units
            )
        ]
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        try:
            yield
        finally:
            for state, auto, infos in saved:
                state._auto_reshard_after_forward = auto
                for group, info in zip(state._fsdp_param_groups, infos, strict=True):
                    group.post_forward_mesh_info = info
            for unit in units:
                unit.reshard()
        return
    if gather_zero3 and _zero3(model):
        import deepspeed  # type: ignore[import-not-found]

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield
        return
    yield


def _zero3(model: nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in model.parameters())
