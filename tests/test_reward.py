"""Reward models: BT training, saved model portability, IDS labels in checkpoints, ensembles,
ArmoRM, and RETA through `eval-rm`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch.testing import assert_close

from prefopt.pipeline.run import train
from prefopt.rewards.scorers import EnsembleScorer, RewardModelScorer, load_scorer
from prefopt.trainers.base import Trainer, TrainingError
from prefopt.trainers.reward import RewardTrainer, reward_metrics
from tests.conftest import read_metrics, tiny_recipe, train_until_interrupted

SCRATCH = ["model.name_or_path=null"]


def test_reward_metrics_hand_computed():
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 1.0])
    m = reward_metrics(chosen, rejected)
    assert m["accuracy"] == pytest.approx(1 / 3)  # only the first margin is > 0
    assert m["ties"] == 1  # the third pair (1 vs 1) counts as wrong, and is counted
    assert m["margin"] == pytest.approx(0.0)  # (1 - 1 + 0) / 3
    assert m["reward_mean"] == pytest.approx(1.0)
    # ECE: p = sig(1), sig(-1), sig(0) -> confidences .731, .731, .5; accuracies 1, 0, .5
    # one bin (0.7, 0.8] holds two pairs: |0.5 - 0.731| * 2/3; the tie adds nothing
    assert m["ece"] == pytest.approx(abs(0.5 - 0.7310585786) * 2 / 3, abs=1e-6)
    # held-out cross-entropy: -log sig(1), -log sig(-1), -log 2 = 0.3133, 1.3133, 0.6931
    assert m["loss"] == pytest.approx((0.3132617 + 1.3132617 + 0.6931472) / 3, abs=1e-6)


def test_reward_model_trains_and_loads_with_plain_transformers(tmp_path):
    from transformers import AutoModelForSequenceClassification

    summary, run_dir = train(
        tiny_recipe("rm", tmp_path / "rm", *SCRATCH, "trainer.max_steps=40", "trainer.lr=3e-3")
    )
    ev = summary["eval"]
    for key in ("accuracy", "ece", "bayes_accuracy", "margin", "reward_std", "ood_accuracy"):
        assert key in ev
    first, last = read_metrics(run_dir)[0], summary["train"]
    assert last["loss"] < first["loss"]  # it learns something from the pairs
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    assert model.config.num_labels == 1
    scorer = RewardModelScorer.from_pretrained(run_dir)
    trainer = RewardTrainer(
        tiny_recipe("rm", tmp_path / "again", f"model.name_or_path={run_dir / 'model'}"),
        tmp_path / "x",
        for_eval=True,
    )
    chosen, rejected = trainer.held_out_rewards(trainer.eval_examples)
    records = trainer.world.preference_records("test")[: len(chosen)]
    prompts = [r["prompt"] for r in records]
    direct = scorer.score(prompts, [r["chosen"] for r in records])
    assert_close(direct, chosen)  # the scorer reproduces the trainer's rewards exactly
    # the label-noise-free accuracy, recomputed from the saved model's margins on the same pairs
    margins = direct - scorer.score(prompts, [r["rejected"] for r in records])
    assert ev["expected_accuracy"] == pytest.approx(
        trainer.world.expected_accuracy(records, margins), abs=1e-6
    )
    assert ev["bayes_accuracy"] == pytest.approx(trainer.world.bayes_accuracy(records)["expected"])


def test_ids_labels_move_each_epoch_and_resume_with_the_checkpoint(tmp_path, monkeypatch):
    # 128 pairs / batch 8 = 16 steps per epoch; 40 steps cross two epoch boundaries
    common = [
        *SCRATCH,
        "trainer.max_steps=40",
        "trainer.save_every=20",
        "trainer.lr=3e-3",
        "world.comparison_counts=uniform",
    ]
    straight = RewardTrainer(tiny_recipe("rm_ids", tmp_path / "a", *common), tmp_path / "a")
    straight.train()
    labels = straight.soft_labels.labels
    assert labels.lt(1).all() and labels.gt(0).all()  # updated after epochs 1 and 2
    logged = [m["ids/label_mean"] for m in read_metrics(tmp_path / "a") if "ids/label_mean" in m]
    assert len(logged) == 2 and logged[1] < logged[0] < 1

    original = Trainer.save_checkpoint

    def crash(self):
        path = original(self)
        if self.step == 20:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        RewardTrainer(tiny_recipe("rm_ids", tmp_path / "b", *common), tmp_path / "b").train()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    state = torch.load(tmp_path / "b" / "checkpoint-20" / "state.pt", weights_only=True)
    assert "ids_labels" in state["extra"]
    resumed = RewardTrainer(
        tiny_recipe("rm_ids", tmp_path / "b", *common, "resume=auto"), tmp_path / "b"
    )
    resumed.train()
    assert torch.equal(resumed.soft_labels.labels, labels)
    loss = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "a") if "loss" in m}
    loss_b = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "b") if "loss" in m}
    assert all(loss[s] == loss_b[s] for s in range(21, 41))


def test_ids_updates_every_n_steps_and_refuses_a_run_without_an_update(tmp_path):
    # 128 pairs / batch 8 = 16 steps per epoch: a 12-step run never reaches an epoch's end
    common = [*SCRATCH, "trainer.max_steps=12", "world.comparison_counts=uniform"]
    with pytest.raises(TrainingError, match="makes no update: it would be plain MLE"):
        RewardTrainer(tiny_recipe("rm_ids", tmp_path / "a", *common), tmp_path / "a")
    with pytest.raises(TrainingError, match="every 12 steps"):
        RewardTrainer(
            tiny_recipe("rm_ids", tmp_path / "b", *common, "smoothing.update_every=12"),
            tmp_path / "b",
        )
    trainer = RewardTrainer(
        tiny_recipe("rm_ids", tmp_path / "c", *common, "smoothing.update_every=5"),
        tmp_path / "c",
    )
    trainer.train()
    logged = [m["step"] for m in read_metrics(tmp_path / "c") if "ids/label_mean" in m]
    # updates after steps 5 and 10, in those steps' records; none after the last step
    assert logged == [5, 10]
    assert trainer.soft_labels.labels.lt(1).all()


def test_dpo_with_ids_trains_on_the_soft_labels(tmp_path):
    from prefopt.trainers.preference import PreferenceTrainer

    dpo = PreferenceTrainer(
        tiny_recipe(
            "dpo", tmp_path / "d", *SCRATCH, "smoothing.method=ids", "trainer.max_steps=18"
        ),
        tmp_path / "d",
    )
    batch = dpo.collate(dpo.train_examples[:4])
    assert_close(batch["soft_labels"], torch.ones(4))
    dpo.train()
    labels = dpo.soft_labels.labels
    assert labels.ne(1).any()  # moved at the epoch boundary (step 16)
    # the loss of a batch is the soft-label cross-entropy with the stored labels
    batch = dpo.collate(dpo.train_examples[:4])
    assert_close(batch["soft_labels"], labels[:4])
    with torch.no_grad():
        out = dpo.compute_loss(batch)
        z = dpo.pair_deltas(batch)
    y = labels[:4]
    expected = -(
        y * torch.nn.functional.logsigmoid(z) + (1 - y) * torch.nn.functional.logsigmoid(-z)
    )
    assert_close(out.loss, expected)
    hard = -torch.nn.functional.logsigmoid(z)
    assert not torch.allclose(out.loss, hard)


def test_ensemble_mean_and_uncertainty_penalty(tmp_path):
    runs = [
        train(
            tiny_recipe(
                "rm", tmp_path / f"s{seed}", *SCRATCH, f"seed={seed}", "trainer.max_steps=5"
            )
        )[1]
        for seed in (0, 1)
    ]
    prompts, completions = ["a b c :", "a b c :"], ["x y", "z"]
    single = [RewardModelScorer.from_pretrained(r).score(prompts, completions) for r in runs]
    mean = load_scorer(f"{runs[0]},{runs[1]}")
    assert isinstance(mean, EnsembleScorer)
    assert_close(mean.score(prompts, completions), (single[0] + single[1]) / 2)
    pessimistic = load_scorer(
        f"{runs[0]},{runs[1]}", ensemble_mode="mean_minus_std", ensemble_coef=2.0
    )
    spread = (single[0] - single[1]).abs() / 2  # population std of two values
    assert_close(pessimistic.score(prompts, completions), (single[0] + single[1]) / 2 - 2 * spread)


@pytest.mark.parametrize("regression", ["ridge", "mlp"])
def test_armorm_trains_saves_and_explains(tmp_path, tiny_pretrained, regression):
    summary, run_dir = train(
        tiny_recipe(
            "armorm",
            tmp_path / "arm",
            f"model.name_or_path={tiny_pretrained}",
            "loss.gate_hidden=[32,32]",
            f"loss.regression={regression}",
            "loss.regression_hidden=[32]",
            "loss.regression_epochs=2",
            "trainer.batch_size=32",
            "trainer.max_steps=10",
        )
    )
    stage1 = summary["stage1"]
    assert stage1["regression"] == regression
    assert ("val_r2" in stage1) == (regression == "mlp")
    assert ("ridge_alpha" in stage1) == (regression == "ridge")
    assert stage1["objectives"] == [
        "relevance",
        "length",
        "fluency",
        "positivity",
        "safety",
        "verbosity",
    ]
    assert stage1["verbosity_lambdas"][-1] == 1.0  # the authors' transform zeroes verbosity
    assert set(summary["eval"]["gate_by_instruction"]) == {"brief", "cheer", "careful", "explain"}
    scorer = load_scorer(str(run_dir))
    out = scorer.explain(["a b :"], ["c d e"])
    assert out["objectives"].shape == (1, 6) and out["gate"].shape == (1, 6)
    assert out["objectives"][0, -1] == 0.0  # so the gate cannot weight verbosity
    assert_close(out["gate"].sum(-1), torch.tensor([summary["eval"]["beta"]]), rtol=1e-5, atol=1e-5)
    assert_close(out["score"], (out["gate"] * out["objectives"]).sum(-1))
    # the label-noise-free accuracy is the saved scorer's, on the same held-out pairs
    from prefopt.config import load_recipe
    from prefopt.world import build_world

    recipe = load_recipe(run_dir / "recipe.yaml")
    world = build_world(recipe.world)
    test = world.preference_records("test")[: recipe.data.max_eval_rows]
    prompts = [r["prompt"] for r in test]
    margins = scorer.score(prompts, [r["chosen"] for r in test]) - scorer.score(
        prompts, [r["rejected"] for r in test]
    )
    assert summary["eval"]["expected_accuracy"] == pytest.approx(
        world.expected_accuracy(test, margins), abs=1e-6
    )
    assert summary["eval"]["accuracy"] == pytest.approx((margins > 0).float().mean().item())


def test_armorm_resume_keeps_the_stage1_it_started_with(tmp_path, tiny_pretrained, monkeypatch):
    import prefopt.trainers.armorm as armorm_trainer

    common = [
        f"model.name_or_path={tiny_pretrained}",
        "loss.gate_hidden=[16]",
        "loss.regression=mlp",
        "loss.regression_hidden=[16]",
        "loss.regression_epochs=2",
        "trainer.batch_size=32",
        "trainer.max_steps=8",
        "trainer.save_every=4",
    ]
    train_until_interrupted(tiny_recipe("armorm", tmp_path / "run", *common), 4, monkeypatch)
    state_file = tmp_path / "run" / "checkpoint-4" / "state.pt"
    saved = torch.load(state_file, weights_only=False)

    # a checkpoint without stage 1 (as written before it travelled along) cannot resume an MLP
    # probe, which a refit would not reproduce exactly
    shutil.copytree(tmp_path / "run", tmp_path / "old")
    old = {**saved, "extra": {k: v for k, v in saved["extra"].items() if "stage1" not in k}}
    torch.save(old, tmp_path / "old" / "checkpoint-4" / "state.pt")
    with pytest.raises(TrainingError, match="predates"):
        train(tiny_recipe("armorm", tmp_path / "old", *common, "resume=auto"))
    # nor can a recipe whose probe has another shape: the resume's recipe check refuses it
    # before anything loads (the trainer's own "does not fit" guard stays behind it)
    with pytest.raises(TrainingError, match=r"loss\.regression_hidden: \[16\] -> \[8\]"):
        train(
            tiny_recipe(
                "armorm", tmp_path / "run", *common, "loss.regression_hidden=[8]", "resume=auto"
            )
        )
    stage1 = {k: v for k, v in saved["extra"].items() if k.startswith("stage1.regression.")}
    assert "stage1.regression.net.0.weight" in stage1 and "stage1.lambdas" in saved["extra"]

    # a refit that came out differently (as non-deterministic kernels could) must not be used
    fit, refits = armorm_trainer.fit_objective_mlp, []

    def other_refit(*args, **kwargs):
        probe, r2 = fit(*args[:-1], seed=args[-1] + 1, **kwargs)
        refits.append(probe.state_dict()["net.0.weight"].clone())  # before any resume
        return probe, r2

    monkeypatch.setattr(armorm_trainer, "fit_objective_mlp", other_refit)
    captured = {}
    original_train = Trainer.train

    def keep_trainer(self):
        captured["trainer"] = self
        return original_train(self)

    monkeypatch.setattr(Trainer, "train", keep_trainer)
    summary, _ = train(tiny_recipe("armorm", tmp_path / "run", *common, "resume=auto"))
    assert summary["steps"] == 8
    assert summary["stage1"]["restored_from_checkpoint"]
    # the restored probe's validation R^2 (saved with it), not the refit's
    assert (
        list(summary["stage1"]["val_r2"].values())
        == saved["extra"]["stage1_report.val_r2"].tolist()
    )
    assert not torch.equal(refits[0], stage1["stage1.regression.net.0.weight"])  # the test can fail
    head = captured["trainer"].unwrapped()
    for key, value in stage1.items():
        assert torch.equal(head.state_dict()[key.removeprefix("stage1.")], value)


class NoisyGold:
    """The world's gold reward plus fixed Gaussian noise: a reward model of known quality."""

    def __init__(self, world, noise: float):
        self.world, self.noise = world, noise

    def score(self, prompts, completions):
        import zlib

        import numpy as np

        gold = self.world.gold_reward(prompts, completions)
        # noise fixed per (prompt, response): the same text always gets the same score
        noise = [
            np.random.default_rng(zlib.crc32(f"{p}|{c}".encode())).standard_normal()
            for p, c in zip(prompts, completions, strict=True)
        ]
        return gold + self.noise * torch.tensor(noise, dtype=gold.dtype)


def test_reta_orders_reward_models_by_accuracy(tmp_path):
    from prefopt.eval.reta_eval import evaluate_reward_models, world_oracle
    from prefopt.world import WorldConfig, build_world

    world = build_world(WorldConfig())
    pairs = world.preference_records("test")
    scorers = {f"noise={n}": NoisyGold(world, n) for n in (0.5, 2.0, 8.0)}
    accuracy = {}
    for name, s in scorers.items():
        chosen = s.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
        rejected = s.score([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
        accuracy[name] = (chosen > rejected).float().mean().item()
    assert accuracy["noise=0.5"] > accuracy["noise=2.0"] > accuracy["noise=8.0"]
    prompts, responses, oracle = world_oracle(world, n_prompts=32, n_responses=16)
    curves = evaluate_reward_models(scorers, prompts, responses, oracle, tmp_path, n_resamples=20)
    small = {name: c.mean[0] for name, c in curves.items()}  # eta = 1/8
    assert small["noise=0.5"] > small["noise=2.0"] > small["noise=8.0"] > 1.0
    for c in curves.values():
        assert c.etas[-1] == 1.0 and c.mean[-1] == 1.0
    saved = json.loads((tmp_path / "reta.json").read_text())
    assert set(saved["models"]) == set(scorers)
    assert (tmp_path / "reta.png").stat().st_size > 0
    assert (tmp_path / "reta.csv").read_text().startswith("model,eta,mean,std")
