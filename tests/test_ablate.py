"""The ablation runner: validation before anything runs, resume, aggregation, plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from prefopt.config import ConfigError
from prefopt.pipeline.ablate import list_ablations, load_ablation, run_ablation
from prefopt.pipeline.results import aggregate, group_stats, read_csv, redraw
from tests.conftest import TINY


def write_ablation(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


TINY_SWEEP = """
description: "a tiny sweep of beta"
base: dpo
overrides: {{{tiny}}}
grid:
  loss.beta: [0.1, 0.2]
seeds: [0]
metrics: [eval.gold_reward, eval.kl]
sizes:
  tiny: {{overrides: {{trainer.max_steps: 2}}}}
  full: {{}}
""".format(tiny=", ".join(f"{o.split('=')[0]}: {o.split('=')[1]}" for o in TINY))


SHIPPED = {
    "accuracy_paradox", "rlhf_vs_sft", "mpo_tau", "pm_beta_alpha", "expo_alpha", "ids_beta",
    "dpo_variants", "kl_coef", "grpo_variants", "overoptimisation_bon", "overoptimisation_rl",
    "ensembles", "ensembles_noise25", "engines", "pm_vs_kl",
}  # fmt: skip


def test_every_shipped_ablation_file_loads_at_both_sizes_and_its_tiny_runs_validate():
    """The recipes of every tiny run are validated (a pipeline's take seconds each); those of
    the full sizes in the slow test below."""
    assert set(list_ablations()) >= SHIPPED
    for name in list_ablations():
        tiny = load_ablation(name, "tiny")
        full = load_ablation(name, "full", validate=False)
        assert tiny.runs and full.runs, name
        assert tiny.note and full.note, f"{name}: each size documents what it is"
        assert len(tiny.runs) <= len(full.runs), name
        assert set(tiny.metrics) == set(full.metrics), name


@pytest.mark.slow
def test_every_shipped_ablations_full_runs_validate():
    for name in list_ablations():
        assert load_ablation(name, "full").runs, name


def test_a_typo_is_an_error_naming_the_key_before_anything_runs(tmp_path):
    path = write_ablation(tmp_path, TINY_SWEEP.replace("loss.beta:", "loss.betta:"))
    with pytest.raises(ConfigError) as exc:
        load_ablation(path, "tiny")
    (problem,) = exc.value.problems
    assert "unknown key 'loss.betta'" in problem and "(every run)" in problem
    path = write_ablation(tmp_path, TINY_SWEEP + "seedz: [1]\n")
    with pytest.raises(ConfigError, match="unknown key 'seedz' in an ablation"):
        load_ablation(path, "tiny")
    path = write_ablation(tmp_path, TINY_SWEEP.replace("tiny: {", "tiny: {stepz: 1, "))
    with pytest.raises(ConfigError, match="sizes.tiny: unknown key 'stepz'"):
        load_ablation(path, "tiny")
    with pytest.raises(ConfigError, match="size 'huge': not defined"):
        load_ablation(write_ablation(tmp_path, TINY_SWEEP), "huge")
    # a bad value in one run only names that run
    path = write_ablation(tmp_path, TINY_SWEEP.replace("[0.1, 0.2]", "[0.1, -1.0]"))
    with pytest.raises(ConfigError, match=r"loss.beta.*\(run loss.beta=-1,seed=0\)"):
        load_ablation(path, "tiny")


def test_runs_are_the_grid_crossed_with_seeds_with_size_overrides_last(tmp_path):
    text = TINY_SWEEP.replace("seeds: [0]", "seeds: [0, 1]")
    ablation = load_ablation(write_ablation(tmp_path, text), "tiny", ["loss.beta=0.5"])
    assert [r.id for r in ablation.runs] == [
        "loss.beta=0.1,seed=0", "loss.beta=0.1,seed=1", "loss.beta=0.2,seed=0",
        "loss.beta=0.2,seed=1",
    ]  # fmt: skip
    run = ablation.runs[2]
    assert run.params == {"loss.beta": 0.2} and run.seed == 0
    # the file's overrides, the size's, the swept value, the command line's, the seed
    assert run.overrides[-4:] == ["trainer.max_steps=2", "loss.beta=0.2", "loss.beta=0.5",
                                  "seed=0"]  # fmt: skip
    assert ablation.x == "loss.beta"


def fake_summary(gold: float, kl: float) -> dict:
    return {"eval": {"gold_reward": gold, "gold_reward_se": 0.1, "kl": kl, "kl_se": 0.05}}


def test_an_interrupted_sweep_resumes_without_redoing_finished_runs(tmp_path):
    ablation = load_ablation(write_ablation(tmp_path, TINY_SWEEP), "tiny")
    out = tmp_path / "out"
    calls: list[str] = []

    def execute(ablation, run, run_dir):
        calls.append(run.id)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated Ctrl-C in the second run")
        run_dir.mkdir(parents=True)
        summary = fake_summary(1.0 + len(calls), 0.5)
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return summary

    with pytest.raises(KeyboardInterrupt):
        run_ablation(ablation, out, execute=execute, log=lambda _: None)
    assert calls == ["loss.beta=0.1,seed=0", "loss.beta=0.2,seed=0"]
    first = out / "runs" / "loss.beta=0.1,seed=0" / "summary.json"
    before = first.read_text()
    lines: list[str] = []
    result = run_ablation(ablation, out, execute=execute, log=lines.append)
    assert calls[2:] == ["loss.beta=0.2,seed=0"]  # only the unfinished run
    assert result["skipped"] == ["loss.beta=0.1,seed=0"]
    assert result["ran"] == ["loss.beta=0.2,seed=0"]
    assert first.read_text() == before
    assert lines[0] == "[1/2] loss.beta=0.1,seed=0: finished earlier, skipped"
    assert lines[1] == "[2/2] loss.beta=0.2,seed=0: starting"
    assert lines[2].startswith("[2/2] loss.beta=0.2,seed=0: done in ")
    assert "elapsed" in lines[2] and "left)" in lines[2]
    rows = read_csv(out / "results.csv")
    assert [r["eval.gold_reward"] for r in rows] == [2.0, 4.0]


def test_a_sweep_split_by_seed_into_one_folder_equals_the_whole_sweep(tmp_path):
    """SEEDS=...: two processes, each with its seeds, write into one folder; the second to end
    writes the same tables as one process running every seed."""
    text = TINY_SWEEP.replace("seeds: [0]", "seeds: [0, 1]")
    ablation = load_ablation(write_ablation(tmp_path, text), "tiny")

    def execute(ablation, run, run_dir):
        run_dir.mkdir(parents=True)
        gold = 1.0 + run.params["loss.beta"] * 10 + run.seed
        (run_dir / "summary.json").write_text(json.dumps(fake_summary(gold, 0.5)))
        return {}

    whole = run_ablation(ablation, tmp_path / "whole", execute=execute, log=lambda _: None)
    split = tmp_path / "split"
    lines: list[str] = []
    first = run_ablation(ablation, split, execute=execute, log=lines.append, seeds=[1])
    assert first["ran"] == ["loss.beta=0.1,seed=1", "loss.beta=0.2,seed=1"]
    assert first["left"] == ["loss.beta=0.1,seed=0", "loss.beta=0.2,seed=0"]
    assert lines[0] == "[2/4] loss.beta=0.1,seed=1: starting"
    assert lines[-1].endswith("about 0 s left)")  # no seed-1 run after the last
    partial = read_csv(split / "results.csv")
    assert [r["status"] for r in partial] == ["missing", "done", "missing", "done"]
    second = run_ablation(ablation, split, execute=execute, log=lambda _: None, seeds=[0])
    assert second["ran"] == first["left"] and second["left"] == first["ran"]
    assert (split / "results.csv").read_text() == (whole["out_dir"] / "results.csv").read_text()


def test_the_cli_checks_seeds_against_the_sizes_seeds(tmp_path, monkeypatch):
    from prefopt.cli import main
    from prefopt.pipeline import ablate

    path = write_ablation(tmp_path, TINY_SWEEP.replace("seeds: [0]", "seeds: [0, 1]"))
    calls: list = []
    ran = {"ran": [], "skipped": [], "failed": {}, "left": [], "files": []}
    monkeypatch.setattr(ablate, "run_ablation", lambda *a, **kw: calls.append(kw) or ran)
    assert main(["ablate", str(path), "SEEDS=1", "--out", str(tmp_path / "o")]) == 0
    assert calls[-1]["seeds"] == [1]
    assert main(["ablate", str(path), "SEEDS=0,3", "--out", str(tmp_path / "o")]) == 2
    assert main(["ablate", str(path), "SEEDS=a", "--out", str(tmp_path / "o")]) == 2
    assert len(calls) == 1  # neither bad value reached a run


def test_courses_follow_a_held_out_metric_over_steps_with_se_over_seeds(tmp_path):
    """courses: [eval.loss]: each run's periodic eval/loss (metrics.jsonl) and its final
    eval.loss at the last step, per setting, mean and SE over seeds, by hand."""
    text = TINY_SWEEP.replace("seeds: [0]", "seeds: [0, 1]").replace(
        "metrics: [eval.gold_reward, eval.kl]", "metrics: [eval.gold_reward]\ncourses: [eval.loss]"
    )
    ablation = load_ablation(write_ablation(tmp_path, text), "tiny")
    assert ablation.courses == ["eval.loss"]

    def execute(ablation, run, run_dir):
        run_dir.mkdir(parents=True)
        beta, seed = run.params["loss.beta"], run.seed
        records = [{"step": 1, "loss": 9.0},  # a training record: not part of the course
                   {"step": 2, "eval/loss": 1.0 + beta + seed},
                   {"step": 4, "eval/loss": 2.0 + beta + seed}]  # fmt: skip
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        summary = {"steps": 6, "eval": {"gold_reward": 1.0, "loss": 3.0 + beta - seed}}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return summary

    out = tmp_path / "out"
    result = run_ablation(ablation, out, execute=execute, log=lambda _: None)
    assert {out / "courses.csv", out / "course_eval.loss.png"} <= set(result["files"])
    table = {(r["loss.beta"], r["step"]): r for r in read_csv(out / "courses.csv")}
    assert sorted({step for _, step in table}) == [2, 4, 6]
    # beta 0.1, step 4: seeds give 2.1 and 3.1: mean 2.6, sd 0.7071, SE 0.5
    assert table[(0.1, 4)]["n"] == 2
    assert table[(0.1, 4)]["mean"] == pytest.approx(2.6)
    assert table[(0.1, 4)]["se"] == pytest.approx(0.5)
    # step 6 is the final evaluation: 3.2 and 2.2
    assert table[(0.2, 6)]["mean"] == pytest.approx(2.7)
    assert table[(0.2, 6)]["se"] == pytest.approx(0.5)
    assert table[(0.2, 2)]["mean"] == pytest.approx(1.7)
    markdown = (out / "results.md").read_text()
    assert "### Course of `eval.loss` over training" in markdown
    assert "| 4 | 2.6000 (0.5000) | 2.7000 (0.5000) |" in markdown
    assert 'alt="course_eval.loss"' in (out / "report.html").read_text()
    from prefopt.cli import main

    (out / "course_eval.loss.png").unlink()
    assert main(["plot", str(out)]) == 0  # redrawn from courses.csv
    assert (out / "course_eval.loss.png").exists()
    with pytest.raises(ConfigError, match="courses: expected a list of summary keys"):
        load_ablation(write_ablation(tmp_path, text.replace("[eval.loss]", "[loss]")), "tiny")


def test_a_course_reads_a_pipeline_stage_and_long_courses_show_every_kth_step(tmp_path):
    from prefopt.pipeline.courses import courses_markdown, run_course

    stage = tmp_path / "run" / "stages" / "ppo"
    stage.mkdir(parents=True)
    records = [{"step": t, "objective/gold": float(t)} for t in range(1, 31)]
    (stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (stage / "summary.json").write_text(json.dumps({"steps": 30, "eval": {"kl": 2.0}}))
    course = run_course(tmp_path / "run", "stages.ppo.objective.gold")
    assert course == [(t, float(t)) for t in range(1, 31)]  # no final value under objective
    assert run_course(tmp_path / "run", "stages.ppo.eval.kl") == [(30, 2.0)]
    table = [{"course": "k", "variant": "a", "step": t, "n": 1, "mean": float(t),
              "se": float("nan")} for t in range(1, 31)]  # fmt: skip
    lines = courses_markdown(table, ["variant"])
    steps = [int(line.split("|")[1]) for line in lines if line[:3] not in ("", "|--")
             and line.startswith("| ") and not line.startswith("| step")]  # fmt: skip
    assert steps == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert "One row in 3 of the 30 steps recorded; all in `courses.csv`." in lines
    assert "| 30 | 30.0000 |" in lines  # one seed: no SE


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    from prefopt.trainers.base import TrainingError

    ablation = load_ablation(write_ablation(tmp_path, TINY_SWEEP), "tiny")

    def execute(ablation, run, run_dir):
        if run.params["loss.beta"] == 0.1:
            raise TrainingError("loss is NaN at step 1")
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps(fake_summary(2.0, 1.0)))
        return {}

    result = run_ablation(ablation, tmp_path / "out", execute=execute, log=lambda _: None)
    assert result["failed"] == {"loss.beta=0.1,seed=0": "TrainingError: loss is NaN at step 1"}
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert [r["status"] for r in rows] == ["failed", "done"]
    assert "Failed runs" in (tmp_path / "out" / "results.md").read_text()


def hand_made_ablation(out: Path) -> None:
    """Two settings of beta x three seeds, with hand-chosen gold and KL."""
    golds = {0.1: [1.0, 2.0, 4.0], 0.2: [3.0, 3.0, 6.0]}
    gold_ses = {0.1: [0.3, 0.4, 0.0], 0.2: [0.1, 0.2, 0.2]}
    runs = []
    for beta, values in golds.items():
        for seed, gold in enumerate(values):
            run_id = f"loss.beta={beta},seed={seed}"
            runs.append({"id": run_id, "params": {"loss.beta": beta}, "seed": seed,
                         "overrides": [], "base": "dpo", "staged": False})  # fmt: skip
            folder = out / "runs" / run_id
            folder.mkdir(parents=True)
            summary = {
                "recipe": "dpo",
                "eval": {"gold_reward": gold, "gold_reward_se": gold_ses[beta][seed],
                         "kl": 2 * beta + seed, "kl_se": 0.1, "objectives": {"safety": 1.0}},
                "curve": [1, 2, 3],
            }  # fmt: skip
            (folder / "summary.json").write_text(json.dumps(summary))
    description = {
        "name": "handmade", "size": "tiny", "description": "hand-made summaries",
        "base": "dpo", "swept": ["loss.beta"], "metrics": ["eval.gold_reward", "eval.kl"],
        "x": "loss.beta", "note": "", "seeds": [0, 1, 2], "runs": runs,
    }  # fmt: skip
    (out / "ablation.json").write_text(json.dumps(description))


def test_aggregation_of_hand_made_summaries_matches_hand_computed_statistics(tmp_path):
    hand_made_ablation(tmp_path)
    files = aggregate(tmp_path)
    assert {f.name for f in files} == {
        "results.csv", "results.md", "gold_vs_kl.png", "eval.gold_reward.png", "eval.kl.png",
        "report.html", "gold_vs_kl_mean.png",  # the hand-made runs have two seeds
    }  # fmt: skip
    with open(tmp_path / "results.csv") as f:
        header = next(csv.reader(f))
    assert header[:4] == ["run", "loss.beta", "seed", "status"]
    # every scalar of the summary, flattened; lists left out
    assert "eval.objectives.safety" in header and "recipe" in header and "curve" not in header
    rows = read_csv(tmp_path / "results.csv")
    assert len(rows) == 6 and rows[1]["eval.gold_reward"] == 2.0 and rows[1]["seed"] == 1

    stats = group_stats(rows, ["loss.beta"], ["eval.gold_reward"])
    first, second = (g["eval.gold_reward"] for g in stats)
    # beta 0.1: gold 1, 2, 4: mean 7/3; sd^2 = ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3;
    # SE = sd / sqrt(3) = sqrt(7/9); SE over prompts = sqrt(0.3^2 + 0.4^2 + 0) / 3 = 0.5 / 3
    assert first["n"] == 3
    assert first["mean"] == pytest.approx(7 / 3, abs=1e-12)
    assert first["sd"] == pytest.approx(math.sqrt(7 / 3), abs=1e-12)
    assert first["se"] == pytest.approx(math.sqrt(7 / 9), abs=1e-12)
    assert first["se_prompts"] == pytest.approx(0.5 / 3, abs=1e-12)
    # beta 0.2: gold 3, 3, 6: mean 4; sd^2 = (1 + 1 + 4) / 2 = 3; SE = 1
    # SE over prompts = sqrt(0.01 + 0.04 + 0.04) / 3 = 0.1
    assert second["mean"] == pytest.approx(4.0, abs=1e-12)
    assert second["sd"] == pytest.approx(math.sqrt(3), abs=1e-12)
    assert second["se"] == pytest.approx(1.0, abs=1e-12)
    assert second["se_prompts"] == pytest.approx(0.1, abs=1e-12)
    table = (tmp_path / "results.md").read_text()
    assert "| 0.1 | 3 | 2.333 (sd 1.528, SE 0.882; SE prompts 0.167) |" in table
    assert "| 0.2 | 3 | 4.000 (sd 1.732, SE 1.000; SE prompts 0.100) |" in table


def test_plot_redraws_an_ablations_plots_from_its_files_alone(tmp_path, capsys):
    from prefopt.cli import main

    hand_made_ablation(tmp_path)
    aggregate(tmp_path)
    for run in (tmp_path / "runs").iterdir():  # the summaries are not needed any more
        (run / "summary.json").unlink()
    for png in tmp_path.glob("*.png"):
        png.unlink()
    assert main(["plot", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "eval.gold_reward.png", "eval.kl.png", "gold_vs_kl.png", "gold_vs_kl_mean.png"
    ]  # fmt: skip
    assert sorted(p.name for p in redraw(tmp_path)) == [
        "eval.gold_reward.png", "eval.kl.png", "gold_vs_kl.png", "gold_vs_kl_mean.png"
    ]  # fmt: skip
    assert main(["plot", str(tmp_path / "runs")]) == 2  # not an ablation nor a run
    assert "neither an ablation folder" in capsys.readouterr().err


@pytest.mark.slow  # trains a tiny SFT policy and two DPO runs: minutes on a busy machine
def test_a_real_sweep_runs_through_the_stage_cache_and_resumes(tmp_path):
    """Two tiny DPO runs really trained; the second invocation trains nothing."""
    sweep = TINY_SWEEP.replace("eval.enabled: false", "eval.enabled: true").replace(
        "trainer.max_steps: 2", "trainer.max_steps: 2, eval.n_prompts: 4, "
        "eval.samples_per_prompt: 2, eval.max_new_tokens: 8"
    )  # fmt: skip
    ablation = load_ablation(write_ablation(tmp_path, sweep), "tiny")
    out = tmp_path / "out"
    first = run_ablation(ablation, out, log=lambda _: None)
    assert first["ran"] == [r.id for r in ablation.runs] and not first["failed"]
    for run in ablation.runs:  # each run is a stage of the cache, linked from the ablation
        assert (out / "runs" / run.id).is_symlink()
    rows = read_csv(out / "results.csv")
    assert [r["loss.beta"] for r in rows] == [0.1, 0.2]
    assert all(isinstance(r["eval.gold_reward"], float) for r in rows)
    from tests.test_report_html import assert_loads_cleanly

    assert_loads_cleanly(
        out / "report.html",
        tmp_path,
        3,
        *(f'href="runs/{r.id}/report.html"' for r in ablation.runs),
    )
    summaries = {r.id: out / "runs" / r.id / "summary.json" for r in ablation.runs}
    stamps = {run: path.stat().st_mtime_ns for run, path in summaries.items()}
    again = run_ablation(ablation, tmp_path / "elsewhere", log=lambda _: None)
    # another folder, same settings: the cached stages are reused, nothing trains again
    assert again["ran"] == [r.id for r in ablation.runs]
    for run in ablation.runs:
        linked = tmp_path / "elsewhere" / "runs" / run.id
        assert linked.resolve() == (out / "runs" / run.id).resolve()
        assert (linked / "summary.json").stat().st_mtime_ns == stamps[run.id]
    assert (
        read_csv(tmp_path / "elsewhere" / "results.csv")[0]["eval.gold_reward"]
        == rows[0]["eval.gold_reward"]
    )
    assert run_ablation(ablation, out, log=lambda _: None)["skipped"] == first["ran"]


def test_the_cli_rejects_a_typo_with_status_2_before_running(tmp_path, capsys):
    from prefopt.cli import main

    path = write_ablation(tmp_path, TINY_SWEEP)
    assert main(["ablate", str(path), "SIZE=tiny", "trainer.max_stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'trainer.max_stepz'" in err and "(every run)" in err
    assert main(["ablate", str(path), "SIZE=tiny", "--size", "full"]) == 2
    assert "SIZE given twice" in capsys.readouterr().err
    assert main(["ablate", "no_such_ablation"]) == 2
    assert "no ablation 'no_such_ablation' (shipped: accuracy_paradox" in capsys.readouterr().err
    assert not (Path("runs") / "ablations" / "sweep-tiny").exists()  # nothing ran


def test_a_paired_difference_takes_its_standard_error_from_its_sibling_se():
    # the report's comparisons hold ``...vs.<b>.diff`` beside ``...vs.<b>.se`` (paired SE)
    rows = [
        {"status": "done", "tau": 1.0, "cmp.a.vs.b.diff": 0.2, "cmp.a.vs.b.se": 0.03},
        {"status": "done", "tau": 1.0, "cmp.a.vs.b.diff": 0.4, "cmp.a.vs.b.se": 0.04},
    ]
    (group,) = group_stats(rows, ["tau"], ["cmp.a.vs.b.diff"])
    assert group["cmp.a.vs.b.diff"]["mean"] == pytest.approx(0.3)
    assert group["cmp.a.vs.b.diff"]["se_prompts"] == pytest.approx(0.05 / 2)  # sqrt(.03²+.04²)/2


def test_the_header_says_what_the_runs_really_were_not_the_sizes_note(tmp_path):
    """An ablation run with a command-line override (3 steps) must not repeat the size's note
    (written for the file's settings); the steps and runtimes come from the runs' summaries."""
    hand_made_ablation(tmp_path)
    description = json.loads((tmp_path / "ablation.json").read_text())
    description.update(note="12 PPO steps, took 40 s", cli_overrides=["trainer.max_steps=3"])
    (tmp_path / "ablation.json").write_text(json.dumps(description))
    for i, run in enumerate(sorted((tmp_path / "runs").iterdir())):
        summary = json.loads((run / "summary.json").read_text())
        summary.update(steps=3, runtime_s=1.5 + i)  # 1.5 + ... + 6.5 = 24
        (run / "summary.json").write_text(json.dumps(summary))
    aggregate(tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "12 PPO steps" not in text and "40 s" not in text
    assert "Command-line overrides for every run: `trainer.max_steps=3`" in text
    assert "training steps per run: 3; the 6 runs' own runtimes add up to 24 s" in text
    description.update(cli_overrides=[])  # without overrides the note describes the runs
    (tmp_path / "ablation.json").write_text(json.dumps(description))
    aggregate(tmp_path)
    assert "Size tiny: 12 PPO steps, took 40 s" in (tmp_path / "results.md").read_text()


def test_gold_vs_kl_labels_the_shifted_splits_it_plots():
    from prefopt.pipeline.results import policy_points

    row = {"eval.gold_reward": 1.0, "eval.kl": 0.5, "eval.ood_gold_reward": 0.2,
           "eval.shift.ood.gold_reward": 0.2, "eval.shift.ood.kl": 0.7,
           "eval.shift.ood.gold_reward_se": 0.1}  # fmt: skip
    assert policy_points(row) == [("policy", 0.5, 0.0, 1.0, 0.0),
                                  ("policy (ood prompts)", 0.7, 0.0, 0.2, 0.1)]  # fmt: skip


def test_the_cli_header_names_the_overrides_not_the_sizes_note(tmp_path, capsys, monkeypatch):
    from prefopt.cli import main
    from prefopt.pipeline import ablate

    path = write_ablation(tmp_path, TINY_SWEEP.replace(
        "tiny: {overrides: {trainer.max_steps: 2}}",
        'tiny: {overrides: {trainer.max_steps: 2}, note: "2 DPO steps, took 9 s"}',
    ))  # fmt: skip
    ran = {"ran": [], "skipped": [], "failed": {}, "files": []}
    monkeypatch.setattr(ablate, "run_ablation", lambda *args, **kwargs: ran)
    assert main(["ablate", str(path), "--out", str(tmp_path / "o")]) == 0
    assert "; 2 DPO steps, took 9 s" in capsys.readouterr().out
    assert main(["ablate", str(path), "trainer.max_steps=3", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "took 9 s" not in out
    assert "command-line overrides for every run: trainer.max_steps=3" in out


def test_variants_head_to_head_against_one_of_them(tmp_path, monkeypatch):
    """`against: dpo`: after the runs, each policy and DPO's sample the same prompts with the
    same seeds; results.csv gets the win rate against DPO and the paired gold difference."""
    sweep = (
        TINY_SWEEP.replace("eval.enabled: false", "eval.enabled: true")
        .replace(
            "trainer.max_steps: 2", "trainer.max_steps: 2, eval.n_prompts: 6, "
            "eval.samples_per_prompt: 2, eval.max_new_tokens: 8"
        )
        .replace("grid:\n  loss.beta: [0.1, 0.2]\n", "variants:\n  - {name: dpo}\n"
                 "  - {name: ipo, base: ipo, overrides: {trainer.lr: 0.01}}\nagainst: dpo\n")
    )  # fmt: skip
    with pytest.raises(ConfigError, match="against: 'dpoo' is not a variant"):
        load_ablation(write_ablation(tmp_path, sweep.replace("against: dpo", "against: dpoo")))
    ablation = load_ablation(write_ablation(tmp_path, sweep), "tiny")
    out = tmp_path / "out"
    run_ablation(ablation, out, log=lambda _: None)
    saved = out / "head_to_head" / "seed=0.json"
    result = json.loads(saved.read_text())["result"]
    rows = {r["variant"]: r for r in read_csv(out / "results.csv")}
    dpo, ipo = rows["dpo"], rows["ipo"]
    # DPO against itself: every sample ties, no difference, no KL
    assert (dpo["h2h.test.win_rate"], dpo["h2h.test.gold_diff"]) == (0.5, 0.0)
    assert dpo["h2h.test.kl"] == 0.0
    # the comparison draws each policy's samples with the seed of the run's own evaluation:
    # the same samples, so the same gold reward, as the run reported
    for row in (dpo, ipo):
        gold = result["test"][row["run"]]["gold_reward"]
        assert gold == pytest.approx(row["eval.gold_reward"], abs=1e-9)
    diff = result["test"][ipo["run"]]["gold_reward"] - result["test"][dpo["run"]]["gold_reward"]
    assert ipo["h2h.test.gold_diff"] == pytest.approx(diff, abs=1e-12)
    assert 0.0 <= ipo["h2h.test.win_rate"] <= 1.0 and ipo["h2h.test.win_rate_se"] > 0
    assert "h2h.ood.win_rate" in ipo
    # a second invocation with the same finished runs does not compare again
    stamp = saved.stat().st_mtime_ns
    run_ablation(ablation, out, log=lambda _: None)
    assert saved.stat().st_mtime_ns == stamp
    # a run trained again (its link now points at another folder) is compared again, alone
    # with the reference, whose samples do not depend on who else is compared
    from prefopt.pipeline import head_to_head

    data = json.loads(saved.read_text())
    data["folders"][ipo["run"]] = "an older folder"
    saved.write_text(json.dumps(data))
    calls = []
    original = head_to_head.compare_runs

    def recording(out_dir, ids, reference, seed):
        calls.append(ids)
        return original(out_dir, ids, reference, seed)

    monkeypatch.setattr(head_to_head, "compare_runs", recording)
    run_ablation(ablation, out, log=lambda _: None)
    assert calls == [[dpo["run"], ipo["run"]]]
    assert json.loads(saved.read_text())["result"] == result  # the same rows as before


def test_the_frontier_is_each_settings_mean_over_seeds_with_its_se(tmp_path):
    from prefopt.pipeline.results import frontier_points, plot_frontier

    def row(variant, seed, kl, gold):
        return {"variant": variant, "seed": seed, "status": "done", "eval.kl": kl,
                "eval.gold_reward": gold, "eval.kl_se": 0.1, "eval.gold_reward_se": 0.1,
                "eval.shift.ood.kl": 99.0, "eval.shift.ood.gold_reward": -9.0}  # fmt: skip

    rows = [row("dpo", 0, 1.0, 3.0), row("dpo", 1, 3.0, 3.4), row("ipo", 0, 2.0, 2.0),
            row("ipo", 1, 2.0, 2.2), {"variant": "kto", "seed": 0, "status": "failed"}]  # fmt: skip
    points = {label: (kl, gold) for label, kl, gold in frontier_points(rows, ["variant"])}
    assert sorted(points) == ["variant=dpo", "variant=ipo"]  # the shifted split is left out
    kl, gold = points["variant=dpo"]
    assert (kl["n"], kl["mean"], gold["mean"]) == (2, 2.0, pytest.approx(3.2))
    # SE over seeds: sd / sqrt(2) = |a - b| / 2
    assert kl["se"] == pytest.approx(1.0) and gold["se"] == pytest.approx(0.2)
    assert points["variant=ipo"][0]["se"] == 0.0
    assert plot_frontier(rows, ["variant"], tmp_path / "f.png") == tmp_path / "f.png"
    assert (tmp_path / "f.png").stat().st_size > 0
    # one seed: no frontier of means
    assert plot_frontier(rows[::2], ["variant"], tmp_path / "g.png") is None
