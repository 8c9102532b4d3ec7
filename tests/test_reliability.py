"""Nothing lost, nothing silent (issue 26): a run folder belongs to one run, a resume continues
the run stored in its folder, and a recipe edited in Python is checked as strictly as YAML."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from prefopt.config import ConfigError, load_recipe, validate_recipe
from prefopt.pipeline.run import train
from prefopt.trainers.base import TrainingError
from tests.conftest import read_metrics, tiny_recipe

DPO = ["model.name_or_path=null", "trainer.max_steps=2"]


def _hold_lock(run_dir) -> subprocess.Popen:
    """Another process that holds the run folder's lock (as a training run does) until killed."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from prefopt.paths import run_folder_lock\n"
        "with run_folder_lock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_in_a_busy_folder_fails_at_once_and_a_killed_holder_leaves_no_lock(tmp_path):
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        started = time.monotonic()
        with pytest.raises(TrainingError, match="in use by another run") as info:
            train(tiny_recipe("dpo", run, *DPO))
        assert time.monotonic() - started < 5  # at once: before any model loads
        assert f"pid {holder.pid}" in str(info.value) and "output_dir" in str(info.value)
        assert not (run / "metrics.jsonl").exists() and not (run / "recipe.yaml").exists()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, as in a crash
        holder.wait()
    # the lock file stays behind, but the kernel released the dead holder's lock
    assert (run / ".prefopt.lock").exists()
    summary, _ = train(tiny_recipe("dpo", run, *DPO))
    assert summary["steps"] == 2
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2]


def test_two_cli_runs_with_one_output_dir_the_second_exits_1_with_one_line(tmp_path):
    from tests.conftest import cli_train_dpo

    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        result = subprocess.run(
            cli_train_dpo(run, "trainer.max_steps=2"), capture_output=True, text=True
        )
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1, result.stderr
    assert "is in use by another run" in result.stderr and "Traceback" not in result.stderr
    assert not (run / "recipe.yaml").exists()


def _ppo(run, model, *extra):
    return tiny_recipe(
        "ppo",
        run,
        f"model.name_or_path={model}",
        "reward.scorer=world",
        "value.init=policy",
        "loss.minibatch_size=4",
        "rollout.max_new_tokens=6",
        "trainer.max_steps=2",
        *extra,
    )


def test_resume_refuses_a_folder_of_another_algorithm_both_ways_and_writes_nothing(
    tmp_path, tiny_pretrained
):
    ppo_run, dpo_run = tmp_path / "ppo", tmp_path / "dpo"
    train(_ppo(ppo_run, tiny_pretrained))
    train(tiny_recipe("dpo", dpo_run, *DPO))
    for run, other in ((ppo_run, tiny_recipe("dpo", ppo_run, *DPO, "resume=auto")),
                       (dpo_run, _ppo(dpo_run, tiny_pretrained, "resume=auto"))):  # fmt: skip
        before = {
            p.name: p.read_bytes()
            for p in run.iterdir()
            if p.is_file() and p.name != ".prefopt.lock"
        }
        with pytest.raises(TrainingError, match="holds another run") as info:
            train(other)
        message = str(info.value)
        assert "loss.name" in message and "resume=auto" in message
        after = {
            p.name: p.read_bytes()
            for p in run.iterdir()
            if p.is_file() and p.name != ".prefopt.lock"
        }
        assert after == before  # recipe.yaml, metrics.jsonl, summary.json untouched


def test_resume_allows_what_resuming_changes_and_names_anything_else(tmp_path):
    run = tmp_path / "run"
    train(tiny_recipe("dpo", run, *DPO))
    with pytest.raises(TrainingError, match=r"trainer\.lr: 0\.0002 -> 0\.001"):
        train(tiny_recipe("dpo", run, *DPO, "trainer.lr=1e-3", "resume=auto"))
    with pytest.raises(TrainingError, match=r"loss\.beta: 0\.1 -> 0\.2"):
        train(tiny_recipe("dpo", run, *DPO, "loss.beta=0.2", "resume=auto"))
    # longer, logged and saved differently, evaluated differently: the same run, continued
    summary, _ = train(
        tiny_recipe(
            "dpo",
            run,
            *DPO,
            "trainer.max_steps=4",
            "trainer.log_every=2",
            "trainer.save_every=1",
            "eval.n_prompts=4",
            "resume=auto",
        )  # fmt: skip
    )
    assert summary["steps"] == 4


def test_a_recipe_edited_in_python_is_checked_as_strictly_as_yaml():
    recipe = load_recipe("dpo")
    recipe.loss.betta = 0.1  # a typo: a new attribute, which asdict would drop silently
    recipe.trainer.max_steps = "3"  # a string where an int is declared
    recipe.trainer.progress_bar = 1  # an int where a bool is declared
    with pytest.raises(ConfigError) as info:
        validate_recipe(recipe)
    problems = info.value.problems
    assert any("unknown key 'loss.betta'; did you mean 'loss.beta'" in p for p in problems)
    assert "trainer.max_steps: expected int, got '3' (str)" in problems
    assert "trainer.progress_bar: expected bool, got 1 (int)" in problems
    recipe = load_recipe("dpo")
    recipe.trainer.lr = 1  # an int where a float is declared: YAML allows it, so does Python
    recipe.trainer.max_grad_norm = None  # optional
    assert validate_recipe(recipe).trainer.lr == 1


def test_max_steps_0_is_documented_as_the_baseline_it_is():
    """docs/recipes.md said ``>= 1`` while 0 is accepted on purpose (it evaluates the initial
    policy: rlhf_vs_sft's SFT and best-of-n rows)."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith("| `trainer.max_steps`"))
    assert ">= 0" in row and "0" in row
    assert load_recipe("dpo", ["trainer.max_steps=0"]).trainer.max_steps == 0
    with pytest.raises(ConfigError, match="trainer.max_steps must be >= 0"):
        load_recipe("dpo", ["trainer.max_steps=-1"])
