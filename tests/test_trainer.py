"""The trainer base: determinism, resume, accumulation invariance, schedule, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from prefopt.pipeline.run import train
from prefopt.trainers.base import list_checkpoints
from tests.conftest import read_metrics, tiny_recipe, train_until_interrupted

DPO_FROM_SCRATCH = ["model.name_or_path=null"]  # no cached SFT needed: fast and self-contained


def losses(run_dir):
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if "loss" in m}


def test_same_seed_gives_bitwise_identical_losses(tmp_path):
    runs = [
        train(tiny_recipe("dpo", tmp_path / f"r{i}", *DPO_FROM_SCRATCH, "trainer.max_steps=4"))[1]
        for i in range(2)
    ]
    a, b = losses(runs[0]), losses(runs[1])
    assert len(a) == 4 and a == b  # exact float equality, not closeness
    # the first DPO step compares the policy with itself: loss = log 2 exactly
    assert abs(a[1] - 0.6931471805599453) < 1e-6


def test_resume_continues_the_exact_trajectory(tmp_path, monkeypatch):
    common = [
        *DPO_FROM_SCRATCH,
        "trainer.max_steps=20",
        "trainer.save_every=10",
        "trainer.scheduler=linear",
        "trainer.warmup_steps=3",
    ]
    straight = losses(train(tiny_recipe("dpo", tmp_path / "straight", *common))[1])

    train_until_interrupted(tiny_recipe("dpo", tmp_path / "interrupted", *common), 10, monkeypatch)
    assert [p.name for p in list_checkpoints(tmp_path / "interrupted")] == ["checkpoint-10"]

    summary, _ = train(tiny_recipe("dpo", tmp_path / "interrupted", *common, "resume=auto"))
    resumed = losses(tmp_path / "interrupted")
    assert summary["steps"] == 20
    assert [resumed[s] for s in range(11, 21)] == [straight[s] for s in range(11, 21)]


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    from prefopt.trainers.preference import PreferenceTrainer

    def trained(batch, accum, name):
        recipe = tiny_recipe(
            "dpo",
            tmp_path / name,
            *DPO_FROM_SCRATCH,
            "trainer.max_steps=2",
            f"trainer.batch_size={batch}",
            f"trainer.grad_accum={accum}",
        )
        trainer = PreferenceTrainer(recipe, tmp_path / name)
        before = {n: p.detach().clone() for n, p in trainer.unwrapped().named_parameters()}
        trainer.train()
        after = {n: p.detach().clone() for n, p in trainer.unwrapped().named_parameters()}
        return before, after

    start, big = trained(8, 1, "big")
    start_accum, accumulated = trained(2, 4, "accum")
    moved = [n for n in big if not torch.equal(big[n], start[n])]
    assert len(moved) == len(big)  # every parameter took real optimizer steps
    for name, value in big.items():
        assert torch.equal(start[name], start_accum[name])  # same initial weights
        assert_close(accumulated[name], value, rtol=1e-5, atol=1e-6)


def test_checkpoints_are_pruned_and_complete(tmp_path):
    _, run_dir = train(
        tiny_recipe(
            "sft",
            tmp_path / "sft",
            "trainer.max_steps=6",
            "trainer.save_every=2",
            "trainer.keep_checkpoints=2",
        )
    )
    names = [p.name for p in list_checkpoints(run_dir)]
    assert names == ["checkpoint-4", "checkpoint-6"]
    assert not list(run_dir.glob(".tmp-*"))
    state = json.loads((run_dir / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["step"] == 6


def test_schedule_warmup_then_linear_decay(tmp_path):
    _, run_dir = train(
        tiny_recipe(
            "sft",
            tmp_path / "s",
            "trainer.max_steps=6",
            "trainer.lr=0.01",
            "trainer.warmup_steps=2",
            "trainer.scheduler=linear",
        )
    )
    lrs = [m["lr"] for m in read_metrics(run_dir) if "lr" in m]
    # transformers' get_scheduler; the lr logged after step s is the factor of step s (the one
    # step s + 1 trains with): warm-up s / warmup (step 1 trained at 0, step 2 at 0.5), then
    # (max_steps - s) / (max_steps - warmup) = (6 - s) / 4
    expected = [0.01 * f for f in (0.5, 1.0, 0.75, 0.5, 0.25, 0.0)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_a_length_in_epochs_sets_the_steps_and_the_schedule_decays_over_them(tmp_path):
    summary, run_dir = train(
        tiny_recipe(
            "sft",
            tmp_path / "s",
            "trainer.epochs=1.5",
            "trainer.grad_accum=2",
            "trainer.lr=0.01",
            "trainer.warmup_steps=0",
            "trainer.scheduler=linear",
        )
    )
    records = [m for m in read_metrics(run_dir) if "lr" in m]
    # the second epoch starts after batches_per_epoch micro-batches = bpe / 2 steps
    steps_per_epoch = next(m["step"] for m in records if m["epoch"] == 2) - 1
    assert steps_per_epoch >= 2 and records[0]["epoch"] == 1
    # 1.5 epochs, not the recipe's max_steps (300 in the tiny sft recipe)
    assert summary["steps"] == len(records) == 3 * steps_per_epoch // 2
    assert records[-1]["lr"] == 0.0  # the linear schedule decays to 0 at the last step


def test_a_length_in_epochs_must_be_positive():
    from prefopt.config import ConfigError

    with pytest.raises(ConfigError, match="trainer.epochs must be > 0"):
        tiny_recipe("sft", None, "trainer.epochs=0")


@pytest.mark.parametrize("scheduler", ["linear", "cosine", "constant"])
def test_without_warmup_the_schedule_is_the_one_prefopt_wrote_before(scheduler):
    """The hand-written schedule that transformers' get_scheduler replaced, kept here as the
    reference: with no warm-up every factor is the same up to float rounding, so runs without
    warm-up keep their trajectory (with warm-up, transformers starts at 0 instead of
    1 / (warmup + 1): a documented change, docs/recipes.md)."""
    import math

    from prefopt.trainers.base import learning_rate_schedule

    total = 7

    def before(step: int) -> float:  # prefopt's _lr_factor with warmup_steps = 0
        progress = step / total
        if scheduler == "constant":
            return 1.0
        if scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    cfg = tiny_recipe("sft", None, f"trainer.scheduler={scheduler}", f"trainer.max_steps={total}",
                      "trainer.warmup_steps=0").trainer  # fmt: skip
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = learning_rate_schedule(optimizer, cfg)
    factors = []
    for _ in range(total + 1):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    torch.testing.assert_close(
        torch.tensor(factors, dtype=torch.float64),
        torch.tensor([before(s) for s in range(total + 1)], dtype=torch.float64),
    )


def test_run_directory_outputs_load_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, run_dir = train(tiny_recipe("sft", tmp_path / "sft", "trainer.max_steps=2"))
    for name in ("recipe.yaml", "metrics.jsonl", "summary.json"):
        assert (run_dir / name).exists()
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    ids = tokenizer("hello", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == len(tokenizer)


def test_resolved_recipe_reproduces_the_run(tmp_path):
    _, first = train(tiny_recipe("dpo", tmp_path / "a", *DPO_FROM_SCRATCH, "trainer.max_steps=3"))
    from prefopt.config import load_recipe

    again = load_recipe(first / "recipe.yaml", [f"output_dir={tmp_path / 'b'}"])
    _, second = train(again)
    assert losses(first) == losses(second)


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path):
    from prefopt.trainers.base import TrainingError

    common = [*DPO_FROM_SCRATCH, "trainer.max_steps=2"]
    train(tiny_recipe("dpo", tmp_path / "r", *common))
    with pytest.raises(TrainingError, match="resume=auto"):
        train(tiny_recipe("dpo", tmp_path / "r", *common))
    summary, _ = train(tiny_recipe("dpo", tmp_path / "r", *common, "resume=auto"))
    assert summary["steps"] == 2  # already complete: resumes at 2 and stops


def test_tensorboard_logging(tmp_path):
    _, run_dir = train(
        tiny_recipe(
            "sft", tmp_path / "tb", "trainer.max_steps=2", "trainer.report_to=[tensorboard]"
        )
    )
    assert list((run_dir / "tensorboard" / "prefopt").glob("events.out.tfevents.*"))


def test_periodic_evaluation_is_logged_once_per_interval(tmp_path):
    _, run_dir = train(
        tiny_recipe("sft", tmp_path / "ev", "trainer.max_steps=4", "trainer.eval_every=2")
    )
    evals = [m["step"] for m in read_metrics(run_dir) if "eval/nll_per_token" in m]
    assert evals == [2, 4]


def test_resuming_an_older_checkpoint_refuses_to_mix_trajectories(tmp_path):
    from prefopt.trainers.base import TrainingError

    common = [*DPO_FROM_SCRATCH, "trainer.max_steps=4", "trainer.save_every=2"]
    train(tiny_recipe("dpo", tmp_path / "r", *common))
    with pytest.raises(TrainingError, match="older than"):
        train(
            tiny_recipe("dpo", tmp_path / "r", *common, f"resume={tmp_path / 'r' / 'checkpoint-2'}")
        )


@pytest.mark.parametrize(
    ("signal_name", "status", "reason"),
    [("SIGTERM", 143, "SIGTERM"), ("SIGINT", 130, "KeyboardInterrupt")],
)
def test_sigterm_writes_the_current_step_and_resume_continues(
    tmp_path, signal_name, status, reason
):
    """What a scheduler sends (SIGTERM) and Ctrl-C (SIGINT): the run writes a checkpoint of the
    step it completed last, says where and how to resume, prints the run directory and exits
    143 / 130, without a traceback; `resume=auto` goes on."""
    import signal
    import subprocess
    import time

    from tests.conftest import REPO, cli_train_dpo

    run = tmp_path / "run"
    args = cli_train_dpo(run, "trainer.max_steps=100000", "trainer.save_every=0")
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a shell
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (
        (run / "metrics.jsonl").exists()
        and len((run / "metrics.jsonl").read_text().splitlines()) >= 3
    ):
        time.sleep(0.2)
    proc.send_signal(getattr(signal, signal_name))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert out.strip().splitlines()[-1] == f"run directory: {run}"
    assert f"interrupted ({reason})" in err and "resume=auto" in err and "Traceback" not in err
    (checkpoint,) = list(run.glob("checkpoint-*"))
    step = int(checkpoint.name.split("-")[1])
    assert step >= 3 and str(checkpoint) in err
    resumed = subprocess.run(
        cli_train_dpo(run, f"trainer.max_steps={step + 2}", "resume=auto"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {checkpoint} at step {step}" in resumed.stdout


def test_metrics_hold_each_step_once_after_a_crash_past_the_last_checkpoint(tmp_path, monkeypatch):
    # a crash (kill -9, an exception) at step 6 after checkpoint-4: steps 5-6 are trained again
    from prefopt.pipeline.run import train
    from prefopt.trainers.preference import PreferenceTrainer
    from tests.conftest import read_metrics, tiny_recipe

    common = ["model.name_or_path=null", "trainer.max_steps=8", "trainer.save_every=4"]
    original = PreferenceTrainer.on_step_end

    def crash(self, step):
        original(self, step)
        if step == 6 and not getattr(self, "_resumed", False):
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(PreferenceTrainer, "on_step_end", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_recipe("dpo", tmp_path / "run", *common))
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == [1, 2, 3, 4, 5]
    monkeypatch.setattr(PreferenceTrainer, "_resumed", True, raising=False)
    train(tiny_recipe("dpo", tmp_path / "run", *common, "resume=auto"))
    steps = [m["step"] for m in read_metrics(tmp_path / "run") if "loss" in m]
    assert steps == list(range(1, 9))


def test_a_damaged_checkpoint_is_named_and_auto_resume_falls_back_to_an_intact_one(
    tmp_path, capsys
):
    from prefopt.pipeline.run import train
    from prefopt.trainers.base import TrainingError
    from tests.conftest import tiny_recipe

    common = ["model.name_or_path=null", "trainer.save_every=4", "trainer.keep_checkpoints=3"]
    train(tiny_recipe("dpo", tmp_path / "run", *common, "trainer.max_steps=8"))
    damaged = tmp_path / "run" / "checkpoint-8"
    (damaged / "state.pt").write_bytes(b"")  # a write cut off by a full disk or a kill
    with pytest.raises(TrainingError, match=r"checkpoint-8: state.pt is empty"):
        train(tiny_recipe("dpo", tmp_path / "run", *common, f"resume={damaged}"))
    summary, _ = train(
        tiny_recipe("dpo", tmp_path / "run", *common, "trainer.max_steps=10", "resume=auto")
    )
    out = capsys.readouterr().out
    assert "set aside as checkpoint-8.corrupt" in out and "resumed from" in out
    assert "checkpoint-4 at step 4" in out and summary["steps"] == 10
    assert (tmp_path / "run" / "checkpoint-8.corrupt").is_dir()


@pytest.mark.parametrize("on_nan", ["error", "skip"])
def test_a_non_finite_loss_names_the_step_and_examples_or_is_skipped(tmp_path, monkeypatch, on_nan):
    from prefopt.pipeline.run import train
    from prefopt.trainers.base import TrainingError
    from prefopt.trainers.preference import PreferenceTrainer
    from tests.conftest import tiny_recipe

    original = PreferenceTrainer.compute_loss

    def poisoned(self, batch):
        out = original(self, batch)
        if self.step == 2:  # the third step
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(PreferenceTrainer, "compute_loss", poisoned)
    recipe = tiny_recipe(
        "dpo",
        tmp_path / "run",
        "model.name_or_path=null",
        "trainer.max_steps=4",
        "trainer.save_every=2",
        f"trainer.on_nan={on_nan}",
    )
    if on_nan == "error":
        with pytest.raises(TrainingError, match=r"at step 3, micro-batch 0, examples \[\d+"):
            train(recipe)
        assert (tmp_path / "run" / "checkpoint-2").is_dir()  # the last good one, intact
    else:
        summary, _ = train(recipe)
        assert summary["steps"] == 4 and summary["skipped_non_finite"] == 1


KILL_INSIDE_THE_WRITE = """
import os, signal, sys
import torch
from prefopt.cli import main

save = torch.save

def save_then_die(obj, path, *args, **kwargs):
    if ".tmp-checkpoint-4" in str(path):  # checkpoint-4 half written: weights, no state yet
        with open(path, "wb") as handle:
            handle.write(b"cut off")
        os.kill(os.getpid(), signal.SIGKILL)
    return save(obj, path, *args, **kwargs)

torch.save = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_inside_a_checkpoint_write_keeps_the_previous_one_resumable(tmp_path):
    """Checkpoints are written to a temporary folder renamed into place when complete: a kill
    in the middle of writing checkpoint-4 leaves checkpoint-2 intact, and `resume=auto`
    continues from it on the trajectory of a run that was never interrupted."""
    import subprocess
    import sys

    from tests.conftest import REPO, cli_train_dpo

    common = [*DPO_FROM_SCRATCH, "trainer.max_steps=6", "trainer.save_every=2"]
    run = tmp_path / "killed"
    args = cli_train_dpo(run, *common)[3:]  # train dpo ... after `python -m prefopt.cli`
    proc = subprocess.run(
        [sys.executable, "-c", KILL_INSIDE_THE_WRITE, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2"]
    (unfinished,) = run.glob(".tmp-checkpoint-4-*")
    assert (unfinished / "state.pt").read_bytes() == b"cut off"

    summary, _ = train(tiny_recipe("dpo", run, *common, "resume=auto"))
    straight = losses(train(tiny_recipe("dpo", tmp_path / "straight", *common))[1])
    resumed = losses(run)
    assert summary["steps"] == 6 and not unfinished.exists()
    assert [resumed[s] for s in range(1, 7)] == [straight[s] for s in range(1, 7)]


def test_each_process_resumes_its_own_random_streams_when_the_process_count_matches(tmp_path):
    """A checkpoint written by 2 processes holds rank 0's RNG states in state.pt and rank 1's in
    rng-1.pt (as accelerate's random_states_<rank>): under 2 processes rank 1 continues its own
    streams; with another process count, or without the file, every rank takes rank 0's."""
    from types import SimpleNamespace

    from prefopt.trainers.base import Trainer, _rng_state

    torch.manual_seed(0)
    rank0 = _rng_state()
    torch.manual_seed(1)
    rank1 = _rng_state()
    assert not torch.equal(rank0["torch"], rank1["torch"])
    path = tmp_path / "checkpoint-6"
    path.mkdir()
    (path / "trainer_state.json").write_text(json.dumps({"step": 6, "processes": 2}))
    torch.save(rank1, path / "rng-1.pt")
    state = {"rng": rank0}

    def rng_for(rank: int, processes: int) -> dict:
        fake = SimpleNamespace(
            accelerator=SimpleNamespace(process_index=rank, num_processes=processes)
        )
        return Trainer._process_rng(fake, path, state)  # type: ignore[arg-type]

    assert torch.equal(rng_for(1, 2)["torch"], rank1["torch"])
    assert rng_for(1, 2)["python"] == rank1["python"]
    assert torch.equal(rng_for(0, 2)["torch"], rank0["torch"])
    assert torch.equal(rng_for(1, 3)["torch"], rank0["torch"])  # another process count
    assert torch.equal(rng_for(0, 1)["torch"], rank0["torch"])
    (path / "rng-1.pt").unlink()
    assert torch.equal(rng_for(1, 2)["torch"], rank0["torch"])  # a one-process layout
