"""The online trainer with rollout.engine.name=vllm (vLLM's CPU backend): a GRPO run resumed
mid-training continues on the same trajectory as a straight one, and its rollouts' log-probs
agree with the trainer's (rollout/logp_diff_max)."""

from __future__ import annotations

import importlib.util

import pytest

from prefopt.pipeline.run import train
from tests.conftest import read_metrics, tiny_recipe, train_until_interrupted

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed (`make install`; docs/engines.md)",
    ),
]

ONLINE = [
    "reward.scorer=world",
    "trainer.batch_size=4",
    "loss.minibatch_size=4",
    "loss.epochs=1",
    "rollout.samples_per_prompt=2",
    "rollout.max_new_tokens=8",
    "trainer.lr=1e-3",
    "rollout.engine.name=vllm",
    "rollout.engine.cpu_memory_utilization=0.01",
    "rollout.logps_from_generation=true",  # the engine's log-probs, checked against the trainer's
]


def test_a_grpo_run_on_the_vllm_engine_resumes_on_the_same_trajectory(
    tmp_path, tiny_pretrained_4bit, monkeypatch
):
    # tiny_pretrained_4bit: hidden 64, 2 heads of 32 (the CPU backend's smallest head size)
    common = [f"model.name_or_path={tiny_pretrained_4bit}", *ONLINE, "trainer.max_steps=4",
              "trainer.save_every=2"]  # fmt: skip
    train(tiny_recipe("grpo", tmp_path / "a", *common))
    train_until_interrupted(tiny_recipe("grpo", tmp_path / "b", *common), 2, monkeypatch)
    train(tiny_recipe("grpo", tmp_path / "b", *common, "resume=auto"))
    a = {m["step"]: m for m in read_metrics(tmp_path / "a") if "loss" in m}
    b = {m["step"]: m for m in read_metrics(tmp_path / "b") if "loss" in m}
    for step in (3, 4):
        for key in ("loss", "objective/scores", "policy/approxkl"):
            assert a[step][key] == b[step][key], (step, key)
    # fp32: the engine's sampled-token log-probs against the trainer's recomputation
    assert all(m["rollout/logp_diff_max"] < 1e-5 for m in a.values())


def test_a_lora_grpo_run_samples_from_the_merged_adapter(tmp_path, tiny_pretrained_4bit):
    """After every optimiser step the engine gets base + the updated adapter: its sampled
    tokens' log-probs stay within fp32 rounding of the trainer's (the unmerged peft model)."""
    common = [f"model.name_or_path={tiny_pretrained_4bit}", *ONLINE, "trainer.max_steps=3",
              "model.lora.r=4", "model.lora.alpha=8"]  # fmt: skip
    train(tiny_recipe("grpo", tmp_path / "lora", *common))
    diffs = [m["rollout/logp_diff_max"] for m in read_metrics(tmp_path / "lora") if "loss" in m]
    assert len(diffs) == 3 and max(diffs) < 1e-5, diffs


def test_the_mpo_pipeline_runs_end_to_end_with_its_online_stage_on_vllm(tmp_path, monkeypatch):
    """Issue 22's acceptance at tiny size: the shipped `mpo` pipeline with its PPO stage
    (`stages.mpo`) sampling on vLLM -- one engine, built once for that stage's rollouts (the
    ppo_all baseline and the closing report stay on hf) -- runs every stage, logs the gold
    reward of its rollouts with the engine's log-probs within fp32 rounding of the trainer's,
    and the closing report gives the mpo policy's gold reward."""
    import json
    import math

    from prefopt.pipeline.stages import load_pipeline, run_pipeline
    from tests.test_pipeline import TINY_MPO

    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path / "cache"))
    overrides = [
        *TINY_MPO,
        "model.tiny.hidden=64",  # 2 heads of 32: the CPU backend's smallest head size
        "stages.mpo.rollout.engine.name=vllm",
        "stages.mpo.rollout.engine.cpu_memory_utilization=0.01",
        "stages.mpo.rollout.logps_from_generation=true",
    ]
    pipeline = load_pipeline("mpo", overrides)
    assert str(pipeline.stage("mpo").settings.rollout.engine.name) == "vllm"
    assert str(pipeline.stage("ppo_all").settings.rollout.engine.name) == "hf"
    from prefopt.models.engines.vllm import VLLMEngine

    built = []  # every vLLM engine started (in this process: the stages train here)
    start = VLLMEngine._build
    monkeypatch.setattr(VLLMEngine, "_build", lambda self, n: built.append(n) or start(self, n))
    summary, run_dir = run_pipeline(pipeline, tmp_path / "run")
    assert len(built) == 1  # the mpo stage's rollouts, one engine for both steps
    assert summary["ran"] == ["sft", "rm", "split", "dpo", "mpo", "dpo_all", "ppo_all"]
    steps = [m for m in read_metrics(run_dir / "stages" / "mpo") if "loss" in m]
    assert len(steps) == 2
    for m in steps:
        assert math.isfinite(m["objective/gold"])
        assert 0 <= m["rollout/logp_diff_mean"] <= m["rollout/logp_diff_max"] < 1e-5
    comparison = json.loads((run_dir / "comparison.json").read_text())
    for split in ("test", "ood"):
        assert math.isfinite(comparison[split]["mpo"]["gold_reward"]), split
    assert "| mpo |" in (run_dir / "comparison.md").read_text()
