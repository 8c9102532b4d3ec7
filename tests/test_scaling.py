"""Scale-out pieces that need no second process: the shipped accelerate launch configs, the
launch checks, how a run records its engine, main-process-only printing, and the re-keying of
optimizer state between engines. The multi-process runs are in test_distributed.py (slow)."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest
import torch
import transformers

from prefopt.trainers import engines
from tests.conftest import REPO, cli_train_dpo

LAUNCH_DIR = REPO / "prefopt" / "recipes" / "accelerate"
LAUNCHES = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}


def test_the_shipped_launch_configs_are_the_four_engines():
    assert sorted(p.stem for p in LAUNCH_DIR.glob("*.yaml")) == sorted(LAUNCHES)


@pytest.mark.parametrize("name", sorted(LAUNCHES))
def test_every_launch_config_loads_with_accelerate(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(LAUNCH_DIR / f"{name}.yaml"))  # unknown keys raise
    assert config.distributed_type == LAUNCHES[name]
    assert config.num_processes == 2 and config.num_machines == 1
    assert config.mixed_precision == "no"  # the recipe's trainer.precision decides
    if name.startswith("zero"):
        ds = config.deepspeed_config
        assert ds["zero_stage"] == int(name[-1])
        # what the engine applies equals the recipes' defaults (checked at launch too)
        assert ds["gradient_accumulation_steps"] == 1 and ds["gradient_clipping"] == 1.0


def launch_environment(name: str) -> dict[str, str]:
    """The variables `accelerate launch --config_file <name>.yaml` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(LAUNCH_DIR / f"{name}.yaml"), "-m", "x"])
    args, _, _ = _validate_launch_command(args)
    # multi_gpu_launcher, which starts several processes, is what both configs select
    assert args.multi_gpu or args.use_fsdp
    return prepare_multi_gpu_env(args)


def test_the_fsdp_config_shards_transformer_blocks_with_fsdp2_and_sharded_checkpoints(
    monkeypatch,
):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    env = launch_environment("fsdp")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert engines.fsdp_requested() and not engines.deepspeed_requested()
    plugin = FullyShardedDataParallelPlugin()  # what the processes build from the launch
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # full shard
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert engines.fsdp_state_dict_type() == "SHARDED_STATE_DICT"


def test_the_ddp_config_asks_for_neither_fsdp_nor_deepspeed(monkeypatch):
    env = launch_environment("ddp")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not engines.fsdp_requested() and not engines.deepspeed_requested()
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"


def test_make_train_with_launch_goes_through_accelerate_launch():
    def dry_run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "-n", "train", *args], capture_output=True, text=True, cwd=REPO
        )

    out = dry_run("RECIPE=dpo", "LAUNCH=fsdp", "NPROC=3").stdout
    assert "accelerate launch" in out
    assert "--config_file prefopt/recipes/accelerate/fsdp.yaml --num_processes 3" in out
    assert "-m prefopt.cli train dpo" in out
    single = dry_run("RECIPE=dpo").stdout
    assert "accelerate" not in single and "prefopt train dpo" in single
    unknown = subprocess.run(
        ["make", "train", "LAUNCH=zero9"], capture_output=True, text=True, cwd=REPO
    )
    assert unknown.returncode != 0 and "LAUNCH=zero9: no" in unknown.stdout


# ------------------------------------------------------------------------ launch checks


def fake_accelerator(processes: int, kind: str = "NO", **state) -> SimpleNamespace:
    from accelerate.utils import DistributedType

    return SimpleNamespace(
        num_processes=processes,
        distributed_type=DistributedType(kind),
        device=torch.device("cpu"),
        state=SimpleNamespace(**state),
    )


TRAINER = SimpleNamespace(precision="fp32", grad_accum=1, max_grad_norm=1.0)


def test_the_engine_is_named_from_what_accelerate_set_up(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert engines.engine_of(fake_accelerator(1)) == "single"
    assert engines.engine_of(fake_accelerator(2, "MULTI_CPU")) == "ddp"
    assert engines.engine_of(fake_accelerator(4, "MULTI_GPU")) == "ddp"
    assert engines.engine_of(fake_accelerator(2, "FSDP")) == "fsdp"
    assert engines.engine_of(fake_accelerator(2, "DEEPSPEED")) == "deepspeed"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # FSDP on CPU: accelerate says MULTI_CPU
    assert engines.engine_of(fake_accelerator(2, "MULTI_CPU")) == "fsdp"


def test_processes_that_did_not_join_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(engines.LaunchError, match="trainer.device=cpu"):
        engines.check_launch(fake_accelerator(1), TRAINER)
    engines.check_launch(fake_accelerator(2, "MULTI_CPU"), TRAINER)  # joined: fine


def test_a_launch_config_precision_that_contradicts_the_recipe_is_refused(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(engines.LaunchError, match="trainer.precision is fp32"):
        engines.check_launch(fake_accelerator(1), TRAINER)
    engines.check_launch(
        fake_accelerator(1), SimpleNamespace(**{**vars(TRAINER), "precision": "bf16"})
    )


def test_a_deepspeed_config_that_contradicts_the_recipe_is_refused(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    plugin = SimpleNamespace(
        zero_stage=2, deepspeed_config={"gradient_accumulation_steps": 4, "gradient_clipping": 1.0}
    )
    accelerator = fake_accelerator(2, "DEEPSPEED", deepspeed_plugin=plugin)
    with pytest.raises(engines.LaunchError, match="trainer.grad_accum is 1"):
        engines.check_launch(accelerator, TRAINER)
    plugin.deepspeed_config["gradient_accumulation_steps"] = "auto"
    engines.check_launch(accelerator, TRAINER)
    plugin.deepspeed_config["gradient_clipping"] = 0.5
    with pytest.raises(engines.LaunchError, match="trainer.max_grad_norm is 1.0"):
        engines.check_launch(accelerator, TRAINER)


def test_deepspeed_asked_for_on_cpu_is_refused(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(engines.LaunchError, match="only on GPUs"):
        engines.check_launch(fake_accelerator(2, "MULTI_CPU"), TRAINER)


def test_an_unknown_fsdp_state_dict_type_is_refused(monkeypatch):
    monkeypatch.setenv("FSDP_STATE_DICT_TYPE", "LOCAL_STATE_DICT")
    with pytest.raises(engines.LaunchError, match="fsdp_state_dict_type LOCAL_STATE_DICT"):
        engines.fsdp_state_dict_type()


# ------------------------------------------------------------------- processes, printing


def test_a_child_process_runs_outside_the_launch(monkeypatch):
    from prefopt.paths import single_process_environment

    for key, value in {
        "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_PORT": "29500",
        "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "PREFOPT_CACHE": "/some/cache",
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    env = single_process_environment()
    for gone in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "ACCELERATE_USE_FSDP"):
        assert gone not in env
    assert "FSDP_VERSION" not in env
    assert env["PREFOPT_CACHE"] == "/some/cache" and "PATH" in env


def test_only_the_main_process_says_things(monkeypatch, capsys):
    from prefopt.paths import is_main_process, say

    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    say("from rank 1")
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()
    say("from rank 0")
    monkeypatch.delenv("RANK")
    say("alone")
    assert capsys.readouterr().out == "from rank 0\nalone\n"


def test_a_staged_recipe_is_refused_under_a_multi_process_launch(monkeypatch, capsys):
    from prefopt.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "mpo"]) == 2
    assert "mpo is a staged recipe" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")  # the same message is not printed once per process
    assert main(["train", "mpo"]) == 2
    assert capsys.readouterr().err == ""


def test_a_one_process_run_records_how_it_ran_and_a_non_main_rank_prints_nothing(tmp_path):
    run_dir = tmp_path / "run"
    command = cli_train_dpo(run_dir, "trainer.max_steps=1", "trainer.device=cpu")
    # RANK=1 without WORLD_SIZE: one process that believes it is not the main one; the
    # trainer still writes (accelerate sees no launch) but the CLI's lines are not printed
    quiet = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env=_env(RANK="1"), timeout=300
    )
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "run directory:" not in quiet.stdout and "eval:" not in quiet.stdout
    run = json.loads((run_dir / "summary.json").read_text())["run"]
    assert run == {
        "processes": 1,
        "engine": "single",
        "device": "cpu",
        "precision": "fp32",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": run["accelerate"],
    }
    import accelerate

    assert run["accelerate"] == accelerate.__version__
    state = json.loads((run_dir / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["step"] == 1 and state["engine"] == "single" and state["layout"] == "full"


def _env(**extra: str) -> dict[str, str]:
    import os

    return {**os.environ, **extra, "PYTHONPATH": str(REPO)}


# ------------------------------------------------------------------ optimizer re-keying


def test_position_keyed_optimizer_state_is_re_keyed_by_parameter_name():
    from prefopt.trainers.base import _optimizer_state_by_name

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    optimizer = torch.optim.AdamW(
        [
            {"params": [model[0].weight, model[1].weight]},
            {"params": [model[0].bias, model[1].bias], "weight_decay": 0.0},
        ]
    )
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    by_name = _optimizer_state_by_name(optimizer.state_dict(), model, optimizer)
    groups = by_name["param_groups"]
    assert groups[0]["params"] == ["0.weight", "1.weight"]
    assert groups[1]["params"] == ["0.bias", "1.bias"] and groups[1]["weight_decay"] == 0.0
    assert set(by_name["state"]) == {"0.weight", "1.weight", "0.bias", "1.bias"}
    torch.testing.assert_close(
        by_name["state"]["1.bias"]["exp_avg"], optimizer.state[model[1].bias]["exp_avg"]
    )
    # the name-keyed form loads back (the path a sharded run takes) to the same state; as at
    # a resume, no gradients are held (torch initialises the fresh optimizer's state then)
    model.zero_grad(set_to_none=True)
    fresh = torch.optim.AdamW(
        [
            {"params": [model[0].weight, model[1].weight]},
            {"params": [model[0].bias, model[1].bias], "weight_decay": 0.0},
        ]
    )
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(model, fresh, by_name, options=StateDictOptions(full_state_dict=True))
    torch.testing.assert_close(
        fresh.state[model[0].weight]["exp_avg_sq"], optimizer.state[model[0].weight]["exp_avg_sq"]
    )


def test_zero_partitions_are_written_as_a_one_process_optimizer_state(monkeypatch):
    """deepspeed_full_state's own part, with DeepSpeed's safe_get_full_* stood in for: names,
    groups and Adam's step come out in the form a one-process AdamW loads."""
    import sys
    from types import ModuleType

    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    moments = {
        id(p): {"exp_avg": torch.full_like(p, 0.5), "exp_avg_sq": torch.full_like(p, 0.25)}
        for p in model.parameters()
    }
    fake = ModuleType("deepspeed.utils")
    fake.safe_get_full_fp32_param = lambda p: p.detach() * 2  # type: ignore[attr-defined]
    fake.safe_get_full_optimizer_state = lambda p, k: moments[id(p)][k]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "deepspeed", ModuleType("deepspeed"))
    monkeypatch.setitem(sys.modules, "deepspeed.utils", fake)
    flat = torch.nn.Parameter(torch.zeros(9))  # ZeRO's flat partition, what its AdamW holds
    base = torch.optim.AdamW([{"params": [flat], "lr": 0.1}, {"params": [], "lr": 0.1}])
    base.state[flat] = {"step": torch.tensor(7.0)}
    group_names = [["0.weight", "1.weight"], ["0.bias", "1.bias"]]
    weights, by_name = engines.deepspeed_full_state(
        model, SimpleNamespace(optimizer=base), group_names
    )
    torch.testing.assert_close(weights["1.weight"], model[1].weight.detach() * 2)
    assert [g["params"] for g in by_name["param_groups"]] == group_names
    assert by_name["state"]["0.bias"]["step"].item() == 7.0
    alone = torch.optim.AdamW(
        [
            {"params": [model[0].weight, model[1].weight]},
            {"params": [model[0].bias, model[1].bias], "weight_decay": 0.0},
        ]
    )
    set_optimizer_state_dict(model, alone, by_name, options=StateDictOptions(full_state_dict=True))
    state = alone.state[model[1].bias]
    assert state["step"].item() == 7.0
    torch.testing.assert_close(state["exp_avg_sq"], torch.full((1,), 0.25))
