"""Staged recipes: validation before anything runs, the stage cache (skip, resume, rerun
downstream of a change), the MPO recipe and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefopt.config import ConfigError, load_recipe
from prefopt.pipeline.stages import load_pipeline, run_pipeline
from tests.conftest import TINY

# a tiny MPO: every stage a couple of steps; the split by quantile (a barely trained reward
# model has gaps far below the authors' absolute tau = 1)
TINY_MPO = [
    *TINY,
    "trainer.max_steps=2",
    "trainer.save_every=1",
    "stages.split.mode=quantile",
    "stages.split.tau=0.5",
    "report.n_prompts=8",
    "report.samples_per_prompt=1",
]


def test_the_mpo_recipe_validates_and_shares_the_world_sft_stage():
    from prefopt.pipeline.world_models import world_model_folder

    p = load_pipeline("mpo")
    names = [s.name for s in p.stages]
    assert names == ["sft", "rm", "split", "dpo", "mpo", "dpo_all", "ppo_all"]
    # the pipeline's SFT stage is the cached world:sft; its RM is the rm recipe on a third of
    # its pairs (docs/algorithms/mpo.md: the pipeline stays under 10 minutes), from that SFT
    assert p.stage("sft").folder == world_model_folder(load_recipe("dpo"), "world:sft")
    rm = p.stage("rm").settings
    assert (rm.world.n_train_pairs, rm.trainer.max_steps) == (80000, 1250)
    assert load_recipe("rm").world.n_train_pairs == 240000
    assert rm.model.name_or_path == str(p.stage("sft").folder / "model")
    mpo, dpo = p.stage("mpo").settings, p.stage("dpo")
    # PPO starts from the DPO model and is measured against it (ALGORITHMS.md 4.4)
    assert mpo.model.name_or_path == mpo.reference.name_or_path == str(dpo.folder / "model")
    assert mpo.data.train_file == str(p.stage("split").folder / "hard.jsonl")
    assert dpo.settings.data.train_file == str(p.stage("split").folder / "easy.jsonl")
    # the baselines get as many optimiser steps as MPO's corresponding stage
    assert p.stage("dpo_all").settings.trainer.max_steps == dpo.settings.trainer.max_steps
    assert p.stage("ppo_all").settings.trainer.max_steps == mpo.trainer.max_steps
    assert p.stage("mpo").depends == ["dpo", "rm", "split"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        (
            "a: {base: sft}\n  b: {base: dpo, model: {name_or_path: '${stages.nope.model}'}}",
            "stages.b.model.name_or_path: ${stages.nope.model}: no such stage before it "
            "(earlier stages: a)",
        ),
        (
            "a: {base: dpo, model: {name_or_path: '${stages.b.model}'}}\n  b: {base: sft}",
            "stages.a.model.name_or_path: ${stages.b.model}: no such stage before it "
            "(earlier stages: none)",
        ),
        (
            "a: {kind: split, scorer: world}\n  b: {base: dpo, model: {name_or_path: "
            "'${stages.a.model}'}}",
            "stage 'a' (split) produces easy, hard, report; not 'model'",
        ),
        ("a: {base: dpo, trainer: {lrr: 0.1}}", "stages.a: unknown key 'trainer.lrr'"),
        ("a: {kind: split, tauu: 1}", "stages.a: unknown key 'tauu' for a split stage"),
        ("a: {kind: blend}", "stages.a.kind: 'blend' is not one of train, split, expo"),
    ],
)
def test_a_bad_staged_recipe_fails_before_anything_runs_naming_the_key(tmp_path, stages, expected):
    path = _write(tmp_path, f"stages:\n  {stages}\n")
    with pytest.raises(ConfigError) as info:
        load_pipeline(str(path))
    assert any(expected in p for p in info.value.problems), info.value.problems
    assert not (tmp_path / "runs").exists()


def test_a_broken_stage_is_reported_once_not_again_by_every_stage_that_uses_it():
    with pytest.raises(ConfigError) as info:
        load_pipeline("mpo", ["stages.dpo.trainer.lrr=1"])
    assert len(info.value.problems) == 1, info.value.problems
    assert "stages.dpo: unknown key 'trainer.lrr'" in info.value.problems[0]


def test_overrides_address_one_stage_or_every_train_stage():
    p = load_pipeline("mpo", ["stages.dpo.loss.beta=0.3", "trainer.device=cpu"])
    assert p.stage("dpo").settings.loss.beta == 0.3
    assert p.stage("dpo_all").settings.loss.beta == 0.1
    assert all(s.settings.trainer.device == "cpu" for s in p.stages if s.kind == "train")
    with pytest.raises(ConfigError, match="stages.dpoo: no such stage"):
        load_pipeline("mpo", ["stages.dpoo.loss.beta=0.3"])


def test_a_changed_stage_reruns_it_and_everything_downstream_only():
    base = {s.name: s.identity for s in load_pipeline("mpo").stages}
    changed = {
        s.name: s.identity for s in load_pipeline("mpo", ["stages.dpo.loss.beta=0.3"]).stages
    }
    assert [n for n in base if base[n] != changed[n]] == ["dpo", "mpo"]
    tau = {s.name: s.identity for s in load_pipeline("mpo", ["stages.split.tau=2.0"]).stages}
    assert [n for n in base if base[n] != tau[n]] == ["split", "dpo", "mpo"]


def test_a_tiny_mpo_runs_end_to_end_then_reuses_every_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path / "cache"))  # nothing to reuse yet
    summary, run_dir = run_pipeline(load_pipeline("mpo", TINY_MPO), tmp_path / "first")
    assert summary["ran"] == ["sft", "rm", "split", "dpo", "mpo", "dpo_all", "ppo_all"]
    assert set(summary["stages"]) == set(summary["ran"])
    assert summary["stages"]["dpo"]["steps"] == 2
    split = json.loads((run_dir / "stages" / "split" / "split.json").read_text())
    assert split["n_easy"] + split["n_hard"] == split["n_pairs"] == 128
    easy = (run_dir / "stages" / "split" / "easy.jsonl").read_text().splitlines()
    assert len(easy) == split["n_easy"]
    assert (run_dir / "stages" / "mpo" / "model" / "config.json").exists()
    table = (run_dir / "comparison.md").read_text()
    for name in ("sft", "dpo", "mpo", "dpo_all", "ppo_all"):
        assert f"| {name} |" in table
    assert (run_dir / "comparison.png").stat().st_size > 0
    comparison = json.loads((run_dir / "comparison.json").read_text())
    assert comparison["test"]["sft"]["kl"] == 0.0
    # report.html: the comparison table and plot, a link to every stage's own report
    from tests.test_report_html import assert_loads_cleanly

    assert_loads_cleanly(
        run_dir / "report.html", tmp_path, 1, "Comparison", "dpo_all",
        *(f'href="stages/{s}/report.html"' for s in ("sft", "rm", "dpo", "mpo", "ppo_all")),
    )  # fmt: skip
    page = (run_dir / "report.html").read_text()
    assert "no metrics logged" not in page  # a pipeline's curves are its stages'
    assert "<td>mpo</td><td>ran</td><td>2</td>" in page  # each stage: ran here, its steps
    # a second run (another run directory) reuses every stage and the report
    again, second = run_pipeline(load_pipeline("mpo", TINY_MPO), tmp_path / "second")
    assert again["ran"] == [] and again["reused"] == summary["ran"]
    assert again["comparison"] == summary["comparison"]
    assert (second / "stages" / "dpo").resolve() == (run_dir / "stages" / "dpo").resolve()


def test_interrupted_during_ppo_a_rerun_resumes_that_stage_only(tmp_path, monkeypatch, capsys):
    from prefopt.trainers.base import Trainer

    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path / "cache"))
    overrides = [*TINY_MPO, "stages.mpo.trainer.max_steps=3"]
    original = Trainer.save_checkpoint

    def crash_in_the_ppo_stage(self):
        path = original(self)
        if self.run_dir.name.startswith("ppo-") and self.step == 1:
            raise KeyboardInterrupt("simulated interruption")
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", crash_in_the_ppo_stage)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(load_pipeline("mpo", overrides), tmp_path / "first")
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    capsys.readouterr()
    summary, _ = run_pipeline(load_pipeline("mpo", overrides), tmp_path / "second")
    out = capsys.readouterr().out
    assert summary["reused"] == ["sft", "rm", "split", "dpo"]
    assert summary["ran"] == ["mpo", "dpo_all", "ppo_all"]
    assert "resuming stage mpo from its checkpoint" in out
    assert "at step 1" in out and summary["stages"]["mpo"]["steps"] == 3


def test_stage_references_are_omegaconf_interpolations_resolved_in_text_too(tmp_path):
    """``${stages.<name>.<output>}`` is resolved by OmegaConf (prefopt's resolver looks the
    output up): inside longer text as well, recording the dependency; a stage naming itself
    is refused with the key."""
    path = _write(
        tmp_path,
        "stages:\n  a: {base: sft}\n  b: {base: dpo, description: 'after ${stages.a.run} ends', "
        "model: {name_or_path: '${stages.a.model}'}}\n",
    )
    a, b = load_pipeline(str(path)).stages
    assert b.settings.model.name_or_path == str(a.folder / "model")
    assert b.settings.description == f"after {a.folder} ends"
    assert b.depends == ["a"]
    itself = "stages:\n  a: {base: sft, model: {name_or_path: '${stages.a.model}'}}\n"
    path = _write(tmp_path, itself)
    with pytest.raises(ConfigError) as info:
        load_pipeline(str(path))
    assert info.value.problems == [
        "stages.a.model.name_or_path: ${stages.a.model}: it is this stage (earlier stages: none)"
    ]
