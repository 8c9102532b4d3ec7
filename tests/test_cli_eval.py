"""`prefopt eval` and `prefopt eval-rm` from the command line, and training on real HH-RLHF data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from prefopt.cli import main
from prefopt.pipeline.run import train
from tests.conftest import REPO, SHARED_DATA, read_metrics, tiny_recipe

HH = SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
EVAL_ON = [
    "eval.enabled=true",
    "eval.n_prompts=4",
    "eval.samples_per_prompt=2",
    "eval.max_new_tokens=8",
]


def test_world_runs_report_gold_metrics_and_eval_reruns_them(tmp_path, capsys, monkeypatch):
    summary, run_dir = train(tiny_recipe("sft", tmp_path / "sft", "trainer.max_steps=3", *EVAL_ON))
    ev = summary["eval"]
    for key in (
        "gold_reward",
        "reference_gold_reward",
        "kl",
        "win_rate",
        "ead",
        "ood_gold_reward",
        "mean_length",
    ):
        assert isinstance(ev[key], float), key
    assert 0.0 <= ev["win_rate"] <= 1.0
    assert (run_dir / "eval_report.md").read_text().startswith("# Gold evaluation")
    # re-evaluating reproduces the numbers: same seeds, and the reference of an SFT run is the
    # untrained initial model saved with the run
    original = {f: (run_dir / f).read_bytes() for f in ("summary.json", "eval_report.md")}
    assert main(["eval", str(run_dir)]) == 0
    (first,) = sorted(run_dir.glob("eval-*"))
    again = json.loads((first / "summary.json").read_text())["eval"]
    for key in ("gold_reward", "reference_gold_reward", "kl", "win_rate"):
        assert again[key] == pytest.approx(ev[key], rel=1e-5, abs=1e-6), key
    assert (first / "eval_report.md").read_text().startswith("# Gold evaluation")
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2:] == [
        f"evaluation written to {first} (the run's own evaluation is unchanged)",
        f"run directory: {run_dir}",
    ]
    assert main(["eval", str(run_dir), "n_prompts=6"]) == 0
    (second,) = set(run_dir.glob("eval-*")) - {first}  # beside the first, not over it
    summary = json.loads((second / "summary.json").read_text())
    assert summary["eval"]["n_prompts"] == 6 and summary["overrides"] == ["eval.n_prompts=6"]
    # the training-time evaluation is intact and no empty eval/ folder is left
    assert {f: (run_dir / f).read_bytes() for f in original} == original
    assert not (run_dir / "eval").exists()
    # an evaluation that fails leaves no folder behind
    import prefopt.evaluate

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(prefopt.evaluate, "_evaluate", fail)
    assert main(["eval", str(run_dir)]) == 1
    assert set(run_dir.glob("eval-*")) == {first, second}


def test_compare_pairs_two_policies_on_the_same_prompts_and_seeds(tmp_path, tiny_pretrained):
    _, run_dir = train(
        tiny_recipe(
            "dpo", tmp_path / "dpo", f"model.name_or_path={tiny_pretrained}", "trainer.max_steps=3"
        )
    )
    out = tmp_path / "same.json"
    args = ["--n-prompts", "4", "--samples", "2", "--out"]
    assert main(["compare", str(run_dir), str(run_dir), *args, str(out)]) == 0
    same = json.loads(out.read_text())
    for split in ("test", "ood"):
        for key in ("gold_reward", "kl", "ead", "mean_length"):
            # one policy against itself: identical samples, so every difference is exactly 0
            assert same[split][key]["diff"] == 0.0 and same[split][key]["se"] == 0.0, key
        assert same[split]["win_rate"]["a"] == 0.5
    assert same["reference"] == str(tiny_pretrained)  # A's reference, for both KLs
    assert main(["compare", str(run_dir), str(tiny_pretrained), *args, str(out)]) == 0
    against_ref = json.loads(out.read_text())
    test = against_ref["test"]
    assert test["kl"]["b"] == 0.0  # B is the reference itself
    assert test["gold_reward"]["a"] == same["test"]["gold_reward"]["a"]  # same seeds for A
    assert test["gold_reward"]["diff"] == pytest.approx(
        test["gold_reward"]["a"] - test["gold_reward"]["b"]
    )
    assert main(["compare", str(tmp_path), str(run_dir)]) == 2  # not a run: exit 2, a message


def test_eval_rm_cli_writes_curves(tmp_path):
    # not the default world: 'world' must be the gold reward of the run's world, the oracle
    _, rm_dir = train(
        tiny_recipe(
            "rm", tmp_path / "rm", "model.name_or_path=null", "trainer.max_steps=3", "world.seed=1"
        )
    )
    out = tmp_path / "reta"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefopt.cli",
            "eval-rm",
            str(rm_dir),
            "world",
            "--out",
            str(out),
            "--n-prompts",
            "8",
            "--n-responses",
            "8",
            "--resamples",
            "5",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "reta.json").read_text())
    assert set(result["models"]) == {str(rm_dir), "world"}
    for curve in result["models"].values():
        assert curve["mean"][-1] == 1.0  # RETA(1) = 1 exactly
    assert result["models"]["world"]["mean"][0] > 1.0  # the gold reward picks better responses
    # the oracle ranking its own scores: no model can pick better responses at any eta
    gold, rm = result["models"]["world"]["mean"], result["models"][str(rm_dir)]["mean"]
    assert all(g >= m - 1e-9 for g, m in zip(gold, rm, strict=True))
    assert gold[0] > rm[0] + 0.05
    bad = subprocess.run(
        [sys.executable, "-m", "prefopt.cli", "eval-rm", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_compare_rm_pairs_two_models_on_the_same_pairs(tmp_path, capsys):
    from dataclasses import replace

    from prefopt.config import load_recipe
    from prefopt.world import build_world

    # a world other than the default: 'world' must be the gold reward of the run's world
    _, rm_dir = train(
        tiny_recipe(
            "rm", tmp_path / "rm", "model.name_or_path=null", "trainer.max_steps=3", "world.seed=1"
        )
    )
    out = tmp_path / "cmp.json"
    assert main(["compare-rm", str(rm_dir), "world", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    recipe = load_recipe(rm_dir / "recipe.yaml")
    world = build_world(recipe.world)
    n = recipe.data.max_eval_rows
    test = world.preference_records("test")[:n]
    assert result["n"] == len(test) == n
    # B is the gold reward: its expected accuracy is the Bayes accuracy and its accuracy the
    # labels' agreement with the sign of the gold gap (up to exact-zero gaps, counted wrong);
    # A reproduces the run's own held-out figures
    summary = json.loads((rm_dir / "summary.json").read_text())["eval"]
    assert result["expected_accuracy"]["b"] == pytest.approx(world.bayes_accuracy(test)["expected"])
    zero_gaps = sum(r["metadata"]["gold_gap"] == 0 for r in test)
    assert result["ties"]["b"] == zero_gaps
    agree = sum(r["metadata"]["label_agrees_with_gold"] for r in test) - zero_gaps
    assert result["accuracy"]["b"] == pytest.approx(agree / n)
    assert result["accuracy"]["a"] == pytest.approx(summary["accuracy"])
    assert result["expected_accuracy"]["a"] == pytest.approx(summary["expected_accuracy"])
    shown = capsys.readouterr()
    assert "paired SE" in shown.out
    # progress on stderr while it scores (a long comparison is not silent)
    progress = [
        line.split(" (")[0] for line in shown.err.splitlines() if line.startswith("compare-rm:")
    ]
    assert progress[-2:] == [
        f"compare-rm: A: {n}/{n} pairs scored",
        f"compare-rm: B: {n}/{n} pairs scored",
    ]
    assert progress[0] == f"compare-rm: building the world's held-out pairs 0..{n}"
    # --skip: pairs beyond the run's held-out set, from the same stream of test pairs
    assert main(["compare-rm", str(rm_dir), "world", "--skip", "8", "--out", str(out)]) == 0
    later = json.loads(out.read_text())
    longer = build_world(replace(recipe.world, n_test_pairs=recipe.world.n_test_pairs + 16))
    stream = longer.preference_records("test")
    assert stream[:n] == test
    bayes_later = longer.bayes_accuracy(stream[8 : 8 + n])["expected"]
    assert later["expected_accuracy"]["b"] == pytest.approx(bayes_later)
    assert bayes_later != pytest.approx(result["expected_accuracy"]["b"])  # other pairs
    # bad input: a message and status 2, no traceback
    assert main(["compare-rm", str(tmp_path / "nope"), "world"]) == 2
    assert main(["compare-rm", str(rm_dir), "world", "--n-pairs", "0"]) == 2
    _, policy_dir = train(
        tiny_recipe("sft", tmp_path / "sft", "trainer.max_steps=1", "eval.enabled=false")
    )
    assert main(["compare-rm", str(policy_dir), str(rm_dir)]) == 2
    assert "not a reward model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def hh_tokenizer(tmp_path_factory):
    """A small BPE tokenizer trained locally on the HH dialogues (nothing is downloaded)."""
    if not HH.exists():
        pytest.skip(f"HH-RLHF data not found at {HH} (../shared/data is not in user clones)")
    import gzip

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [json.loads(line)["chosen"] for line in gzip.open(HH, "rt")][:500]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=["<pad>", "<unk>", "<bos>", "<eos>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
    )
    path = tmp_path_factory.mktemp("hh-tokenizer")
    wrapped.save_pretrained(path)
    return path


def test_dpo_trains_on_real_hh_rlhf_data(tmp_path, hh_tokenizer):
    summary, run_dir = train(
        tiny_recipe(
            "dpo",
            tmp_path / "hh",
            "model.name_or_path=null",
            f"model.tokenizer={hh_tokenizer}",
            f"data.source={HH}",
            "data.format=hh",
            "data.max_rows=64",
            "data.max_length=128",
            "data.max_prompt_length=64",
            "model.tiny.max_positions=128",
            "trainer.max_steps=2",
        )
    )
    assert summary["steps"] == 2
    assert summary["data"]["train_examples"] == 64  # no bad row among the first 64
    assert summary["train"]["loss"] > 0


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("data.source=/nonexistent.jsonl", "no data file matches"),
        ("model.tokenizer=no-org/no-such-tokenizer", "OSError"),  # not on disk, no network
    ],
)
def test_bad_input_fails_with_a_message_not_a_traceback(tmp_path, override, needle):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefopt.cli",
            "train",
            "sft",
            override,
            f"output_dir={tmp_path / 'x'}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "training failed" in proc.stderr
    assert needle in proc.stderr
    # it failed before its first step: no empty run folder is left behind, and the line says so
    assert proc.stdout.strip().endswith(
        f"run directory: {tmp_path / 'x'} (not kept: it failed before its first step)"
    )
    assert not (tmp_path / "x").exists()


def test_file_sources_train_and_hold_out_only_what_they_are_given(tmp_path):
    from prefopt.trainers.preference import PreferenceTrainer

    rows = [
        {"prompt": f"keda rufigon {i} :", "chosen": " pulu vunibe", "rejected": " zisa"}
        for i in range(10)
    ]
    for name, chunk in (("train", rows[:8]), ("test", rows[8:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chunk))
    common = [
        "model.name_or_path=null",
        "trainer.max_steps=1",
        "trainer.batch_size=4",
        f"data.source={tmp_path / 'train.jsonl'}",
    ]
    alone = PreferenceTrainer(tiny_recipe("dpo", tmp_path / "a", *common), tmp_path / "a")
    assert len(alone.train_examples) == 8 and alone.eval_examples == []  # never train as test
    held = PreferenceTrainer(
        tiny_recipe("dpo", tmp_path / "b", *common, f"data.eval_source={tmp_path / 'test.jsonl'}"),
        tmp_path / "b",
    )
    assert len(held.eval_examples) == 2
    assert "eval/loss" in {f"eval/{k}" for k in held.evaluate()}


def test_eval_of_an_armorm_run_uses_its_trained_gate(tmp_path, tiny_pretrained):
    summary, run_dir = train(
        tiny_recipe(
            "armorm",
            tmp_path / "arm",
            f"model.name_or_path={tiny_pretrained}",
            "loss.gate_hidden=[16]",
            "trainer.batch_size=16",
            "trainer.max_steps=3",
        )
    )
    assert main(["eval", str(run_dir)]) == 0
    (eval_dir,) = run_dir.glob("eval-*")
    again = json.loads((eval_dir / "summary.json").read_text())["eval"]
    assert again["accuracy"] == pytest.approx(summary["eval"]["accuracy"])
    assert again["ece"] == pytest.approx(summary["eval"]["ece"], abs=1e-6)


def test_cli_train_prints_the_run_directory_last(tmp_path):
    from tests.conftest import cli_train_dpo

    progress = ["trainer.progress_bar=true", "trainer.log_every=2"]
    proc = subprocess.run(
        cli_train_dpo(tmp_path / "run", "trainer.max_steps=3", *progress),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == f"run directory: {tmp_path / 'run'}"
    assert (tmp_path / "run" / "summary.json").exists()
    # into a pipe (a log file): plain progress lines every log_every steps and at the last, no
    # carriage returns from tqdm or from the libraries' own bars (saving the model)
    assert "\r" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train: step")]
    assert [line.split(" (")[0] for line in lines] == ["train: step 2/3", "train: step 3/3"]
    loss = next(m["loss"] for m in read_metrics(tmp_path / "run") if m["step"] == 3 and "loss" in m)
    assert lines[-1].endswith(f"loss={loss:.4f}")


def test_margins_scored_in_chunks_equal_one_call_and_report_progress():
    from prefopt.eval.compare import score_margins
    from prefopt.world import WorldConfig, build_world

    world = build_world(WorldConfig(n_test_pairs=7))
    records = world.preference_records("test")
    calls = []
    chunked = score_margins(world, records, lambda done, total: calls.append((done, total)), 3)
    assert calls == [(3, 7), (6, 7), (7, 7)]
    prompts = [r["prompt"] for r in records]
    whole = world.score(prompts, [r["chosen"] for r in records]) - world.score(
        prompts, [r["rejected"] for r in records]
    )
    assert torch.equal(chunked, whole.float())


def test_eval_of_a_file_trained_run_takes_held_out_data_or_refuses(tmp_path, capsys):
    """``prefopt eval`` on a DPO run trained from a file without held-out data refuses (status
    2, saying how to give some); given ``data.eval_source`` it reports the held-out loss, the
    reference log-prob margins and accuracy, and policy / reference samples."""
    rows = [
        {"prompt": f"keda rufigon {i} :", "chosen": " pulu vunibe", "rejected": " zisa"}
        for i in range(12)
    ]
    for name, chunk in (("train", rows[:8]), ("test", rows[8:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chunk))
    _, run_dir = train(
        tiny_recipe("dpo", tmp_path / "run", "model.name_or_path=null", "trainer.max_steps=2",
                    "trainer.batch_size=4", f"data.source={tmp_path / 'train.jsonl'}")
    )  # fmt: skip
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "has no held-out data" in err and "data.eval_source=" in err
    assert not list(run_dir.glob("eval-*"))  # nothing left behind
    held_out = f"data.eval_source={tmp_path / 'test.jsonl'}"
    assert main(["eval", str(run_dir), held_out, "max_new_tokens=4"]) == 0
    (eval_dir,) = run_dir.glob("eval-*")
    summary = json.loads((eval_dir / "summary.json").read_text())
    ev = summary["eval"]
    assert summary["overrides"] == [held_out, "eval.max_new_tokens=4"]
    # the held-out pairs' implicit rewards: margins = chosen - rejected, accuracy in [0, 1]
    assert ev["rewards/margins"] == pytest.approx(
        ev["rewards/chosen"] - ev["rewards/rejected"], abs=1e-6
    )
    assert 0.0 <= ev["rewards/accuracies"] <= 1.0 and "loss" in ev
    assert len(ev["samples"]) == 4  # the held-out prompts (the world's tokenizer drops digits)
    assert all(s["prompt"].startswith("keda rufigon") for s in ev["samples"])
    assert all(set(s) == {"prompt", "policy", "reference"} for s in ev["samples"])
    assert ev["samples"][0]["policy"] in (eval_dir / "report.html").read_text()
