"""Scale-out on CPU (slow suite): several processes over gloo, started by torchrun or by
`accelerate launch` with the shipped configs (recipes/accelerate/).

* data parallel (torchrun, accelerate DDP) and FSDP with per-process batch 4 on 2 processes
  follow the loss trajectory of 1 process with batch 8, to 1e-5 absolute (float32 sums in
  another order differ by about 1e-7);
* checkpoints move between engines: DDP and FSDP (sharded and gathered) ones resume in one
  process, a one-process one resumes under FSDP, all on the uninterrupted trajectory;
* the model saved under FSDP loads with plain transformers and equals the DDP run's;
* cached reference log-probs give the trajectory of a live reference under DDP and FSDP;
* PPO on 2 processes completes and resumes in one process; under FSDP it gathers the policy
  for generation and follows the DDP run;
* GRPO on 2 processes with a vLLM engine per rank (external_launcher): every rank's engine
  samples from the current weights (its log-probs equal the trainer's to fp32 rounding at
  every step), and FSDP, which gathers the shards for the sync, follows DDP;
* `make train RECIPE=dpo LAUNCH=ddp NPROC=2` trains (its world SFT model too, alone) and prints
  its lines once.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, read_metrics

pytestmark = pytest.mark.slow

TOLERANCE = 1e-5  # absolute, on per-step losses of about 0.69
LAUNCH_DIR = REPO / "prefopt" / "recipes" / "accelerate"
COMMON = [
    *TINY,
    "model.name_or_path=null",
    "trainer.device=cpu",
    "trainer.lr=1e-2",
    "trainer.scheduler=constant",
    "trainer.save_every=3",
]


def losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def accelerate_launch(config: Path | str) -> list[str]:
    accelerate = Path(sys.executable).parent / "accelerate"
    assert accelerate.exists(), "accelerate's launcher is installed with it"
    return [str(accelerate), "launch", "--config_file", str(config), "--num_processes", "2"]


def run(launcher: list[str], *overrides: str, recipe: str = "dpo", common=COMMON) -> str:
    proc = subprocess.run(
        [*launcher, "-m", "prefopt.cli", "train", recipe, *common, *overrides],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def summary_run(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["run"]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """1 process, batch 8, 8 steps: the trajectory every launch is compared with."""
    out = tmp_path_factory.mktemp("single")
    run([sys.executable], "trainer.batch_size=8", "trainer.max_steps=8", f"output_dir={out}")
    assert summary_run(out)["processes"] == 1
    return out


def assert_same_trajectory(run_dir: Path, reference: Path, steps: range) -> None:
    got, expected = losses(run_dir), losses(reference)
    for step in steps:
        assert got[step] == pytest.approx(expected[step], abs=TOLERANCE), step
    assert len({round(got[s], 4) for s in steps}) >= min(3, len(steps))  # it really trained


def resume_alone(run_dir: Path) -> None:
    run(
        [sys.executable],
        "trainer.batch_size=8",
        "trainer.max_steps=8",
        "resume=auto",
        f"output_dir={run_dir}",
    )


def test_torchrun_two_processes_match_one_with_the_same_global_batch(tmp_path, single):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    ddp = tmp_path / "ddp"
    run(
        [torchrun, "--nproc_per_node", "2"],
        "trainer.batch_size=4",
        "trainer.max_steps=6",
        f"output_dir={ddp}",
    )
    assert sorted(losses(ddp)) == list(range(1, 7))
    assert_same_trajectory(ddp, single, range(1, 7))
    assert summary_run(ddp)["engine"] == "ddp"
    resume_alone(ddp)  # the 2-process checkpoint continues in one process
    assert_same_trajectory(ddp, single, range(7, 9))


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_accelerate_launch_matches_one_process_and_resumes_in_one(tmp_path, single, engine):
    out = tmp_path / engine
    stdout = run(
        accelerate_launch(LAUNCH_DIR / f"{engine}.yaml"),
        "trainer.batch_size=4",
        "trainer.max_steps=6",
        f"output_dir={out}",
    )
    assert stdout.count("run directory:") == 1 and stdout.count("eval:") == 1
    info = summary_run(out)
    assert (info["processes"], info["engine"], info["device"]) == (2, engine, "cpu")
    assert info["precision"] == "fp32"
    assert_same_trajectory(out, single, range(1, 7))
    checkpoint = out / "checkpoint-6"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["engine"] == engine and state["processes"] == 2
    assert (checkpoint / "rng-1.pt").exists()  # rank 1's own random streams
    if engine == "fsdp":  # each process wrote its own shards
        assert state["layout"] == "sharded"
        assert sorted(p.name for p in (checkpoint / "sharded").glob("*.distcp")) == [
            "__0_0.distcp",
            "__1_0.distcp",
        ]
        assert not (checkpoint / "trainable.safetensors").exists()
    resume_alone(out)
    assert_same_trajectory(out, single, range(7, 9))
    assert summary_run(out)["engine"] == "single"


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_cached_reference_log_probs_work_under_each_engine(tmp_path, single, engine):
    out = tmp_path / engine
    stdout = run(
        accelerate_launch(LAUNCH_DIR / f"{engine}.yaml"),
        "trainer.batch_size=4",
        "trainer.max_steps=6",
        "reference.mode=cached",
        f"reference.cache_dir={tmp_path / 'ref-cache'}",
        f"output_dir={out}",
    )
    assert stdout.count("reference log-probs for 128 train pairs cached") == 1
    assert len(list((tmp_path / "ref-cache").glob("ref-logps-*.pt"))) == 2  # train and eval
    # the cached values are the reference's own: the same trajectory as a live reference
    assert_same_trajectory(out, single, range(1, 7))


def test_a_one_process_checkpoint_resumes_under_fsdp(tmp_path, single):
    out = tmp_path / "to-fsdp"
    out.mkdir()
    shutil.copytree(single / "checkpoint-6", out / "checkpoint-6")
    records = (single / "metrics.jsonl").read_text().splitlines()
    kept = [r for r in records if json.loads(r)["step"] <= 6]
    (out / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    stdout = run(
        accelerate_launch(LAUNCH_DIR / "fsdp.yaml"),
        "trainer.batch_size=4",
        "trainer.max_steps=8",
        "resume=auto",
        f"output_dir={out}",
    )
    assert "resumed from" in stdout and stdout.count("resumed from") == 1
    assert summary_run(out)["engine"] == "fsdp"
    assert_same_trajectory(out, single, range(7, 9))


def test_a_gathered_fsdp_checkpoint_resumes_in_one_process_and_the_model_is_portable(
    tmp_path, single
):
    from transformers import AutoModelForCausalLM

    config = tmp_path / "fsdp_full.yaml"
    text = (LAUNCH_DIR / "fsdp.yaml").read_text()
    config.write_text(text.replace("SHARDED_STATE_DICT", "FULL_STATE_DICT"))
    fsdp, ddp = tmp_path / "fsdp", tmp_path / "ddp"
    for launcher, out in (
        (accelerate_launch(config), fsdp),
        (accelerate_launch(LAUNCH_DIR / "ddp.yaml"), ddp),
    ):
        run(launcher, "trainer.batch_size=4", "trainer.max_steps=6", f"output_dir={out}")
    assert (
        json.loads((fsdp / "checkpoint-6" / "trainer_state.json").read_text())["layout"] == "full"
    )
    # the saved models load with plain transformers and hold the same weights
    a = AutoModelForCausalLM.from_pretrained(fsdp / "model")
    b = AutoModelForCausalLM.from_pretrained(ddp / "model")
    a_state, b_state = a.state_dict(), b.state_dict()
    assert a_state.keys() == b_state.keys()
    for name in a_state:
        # DDP's AdamW is fused, FSDP's torch's per-tensor loop (engines.adamw_kernel): the
        # same update up to float rounding, which Adam's m / (sqrt(v) + eps) amplifies for
        # near-zero gradients (8.5e-6 seen on a bias after 6 steps)
        assert (a_state[name] - b_state[name]).abs().max().item() <= 3e-5, name
    resume_alone(fsdp)
    assert_same_trajectory(fsdp, single, range(7, 9))


ONLINE = [
    *TINY,
    "trainer.device=cpu",
    "reward.scorer=world",  # the gold reward: no reward model to train
    "value.init=policy",
    "loss.minibatch_size=4",
    "loss.epochs=2",
    "rollout.max_new_tokens=12",
    "trainer.lr=1e-3",
    "trainer.save_every=2",
]


def test_ppo_on_two_processes_resumes_in_one_and_fsdp_follows_ddp(tmp_path, tiny_pretrained):
    policy = f"model.name_or_path={tiny_pretrained}"
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    for engine, out in (("ddp", ddp), ("fsdp", fsdp)):
        run(
            accelerate_launch(LAUNCH_DIR / f"{engine}.yaml"),
            policy,
            "trainer.batch_size=4",
            "trainer.max_steps=4",
            f"output_dir={out}",
            recipe="ppo",
            common=ONLINE,
        )
        assert summary_run(out)["engine"] == engine
        assert sorted(losses(out)) == [1, 2, 3, 4]
    # under FSDP the policy is gathered for sampling: the same rollouts, the same updates
    for step in range(1, 5):
        assert losses(fsdp)[step] == pytest.approx(losses(ddp)[step], abs=1e-5)
    # the 2-process checkpoint (policy, critic, both optimisers, KL controller) resumes in one
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copytree(ddp / "checkpoint-2", alone / "checkpoint-2")
    stdout = run(
        [sys.executable],
        policy,
        "trainer.batch_size=8",
        "trainer.max_steps=4",
        "resume=auto",
        f"output_dir={alone}",
        recipe="ppo",
        common=ONLINE,
    )
    assert f"resumed from {alone / 'checkpoint-2'} at step 2" in stdout
    resumed = losses(alone)
    assert sorted(resumed) == [3, 4] and all(abs(v) < 10 for v in resumed.values())
    assert summary_run(alone)["processes"] == 1


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed (`make install`; docs/engines.md)",
)
def test_grpo_on_two_processes_with_a_vllm_engine_per_rank(tmp_path, tiny_pretrained_4bit):
    # tiny_pretrained_4bit: hidden 64, 2 heads of 32 (the CPU backend's smallest head size)
    vllm = [
        f"model.name_or_path={tiny_pretrained_4bit}",
        "trainer.batch_size=2",  # prompts per process: 2 x 2 samples
        "rollout.samples_per_prompt=2",
        "loss.epochs=1",
        "trainer.max_steps=3",
        "rollout.engine.name=vllm",
        "rollout.engine.cpu_memory_utilization=0.01",
        "rollout.logps_from_generation=true",  # the engine's log-probs, against the trainer's
    ]
    runs = {engine: tmp_path / engine for engine in ("ddp", "fsdp")}
    for engine, out in runs.items():
        run(accelerate_launch(LAUNCH_DIR / f"{engine}.yaml"), *vllm, f"output_dir={out}",
            recipe="grpo", common=ONLINE)  # fmt: skip
        assert summary_run(out)["engine"] == engine
        records = [m for m in read_metrics(out) if "loss" in m]
        assert [m["step"] for m in records] == [1, 2, 3]
        # each rank's engine got the weights of every step (fp32 rounding apart)
        assert all(m["rollout/logp_diff_max"] < 1e-5 for m in records), records
    for step in (1, 2, 3):  # FSDP gathers the shards for each rank's sync: the same run
        assert losses(runs["fsdp"])[step] == pytest.approx(losses(runs["ddp"])[step], abs=1e-5)


def test_make_train_with_launch_ddp(tmp_path):
    """From an empty cache: the world's SFT model is trained alone (once) while the launch
    waits; the run directory is agreed between the processes (no output_dir given)."""
    # a `make` started by `make test-slow` would print make's "Leaving directory" after the
    # run directory line: the inner make is started as a user would, outside any make
    outer = ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if k not in outer}
    env["PREFOPT_CACHE"] = str(tmp_path / "cache")
    tiny = [o for o in TINY if not o.startswith("trainer.batch_size")]
    args = [*tiny, "trainer.batch_size=4", "trainer.max_steps=4", "eval.enabled=true"]
    args += ["eval.n_prompts=8", "eval.samples_per_prompt=1"]
    proc = subprocess.run(
        ["make", "train", "RECIPE=dpo", "LAUNCH=ddp", "NPROC=2", f"ARGS={' '.join(args)}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("run directory: runs/dpo-")
    run_dir = REPO / lines[-1].removeprefix("run directory: ")
    try:
        assert sum(line.startswith("run directory:") for line in lines) == 1
        assert sum(line.startswith("eval:") for line in lines) == 1
        assert sum(line.startswith("building world:sft") for line in lines) == 1
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["run"]["processes"] == 2 and summary["run"]["engine"] == "ddp"
        assert "gold_reward" in summary["eval"]
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
