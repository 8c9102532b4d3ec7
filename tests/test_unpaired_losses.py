"""KTO and BCO against values worked out by hand, and their trainer (data, reference, resume).

The batch used throughout (beta = 0.1), three examples, desirable = [yes, no, yes]:
  policy  log p(y_i|x_i)     = [-10, -12, -8],  ref [-11, -11, -8]  -> r = [1, -1, 0]
  policy  log p(y_{i-1}|x_i) = [-9, -14, -7],   ref [-10, -15, -9]  -> mismatched ratios [1, 1, 2]
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from prefopt.losses.bco import BCOConfig
from prefopt.losses.kto import KTOConfig
from prefopt.losses.unpaired import UnpairedLogps
from prefopt.registry import LOSSES, get_loss
from tests.conftest import read_metrics, tiny_recipe, train_until_interrupted

POLICY = UnpairedLogps(
    torch.tensor([-10.0, -12.0, -8.0]),
    torch.tensor([4.0, 3.0, 2.0]),
    torch.tensor([-9.0, -14.0, -7.0]),
)
REF = UnpairedLogps(
    torch.tensor([-11.0, -11.0, -8.0]),
    torch.tensor([4.0, 3.0, 2.0]),
    torch.tensor([-10.0, -15.0, -9.0]),
)
DESIRABLE = torch.tensor([True, False, True])


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def build(cfg):
    return get_loss(cfg.name).build(cfg)


# z0 = mean(1, 1, 2) = 4/3 (> 0: kept)
#   desirable r = 1:    1 - sigmoid(0.1 (1 - 4/3))  = 1 - sigmoid(-0.0333333) = 0.5083326
#   undesirable r = -1: 1 - sigmoid(0.1 (4/3 + 1))  = 1 - sigmoid(0.2333333)  = 0.4419299
#   desirable r = 0:    1 - sigmoid(0.1 (0 - 4/3))  = 1 - sigmoid(-0.1333333) = 0.5332840
KTO = [0.5083326, 0.4419299, 0.5332840]


def test_kto_hand_computed():
    out = build(KTOConfig())(POLICY, REF, DESIRABLE)
    assert_close(out.loss, torch.tensor(KTO))
    assert_close(out.metrics["z0"], torch.tensor(4 / 3))
    # rewards beta r: desirable [0.1, 0] -> 0.05, undesirable [-0.1]
    assert_close(out.metrics["rewards/chosen"], torch.tensor(0.05))
    assert_close(out.metrics["rewards/rejected"], torch.tensor(-0.1))
    assert_close(out.metrics["rewards/margins"], torch.tensor(0.15))
    assert_close(out.metrics["logps/chosen"], torch.tensor(-9.0))  # mean(-10, -8)
    assert_close(out.metrics["logps/rejected"], torch.tensor(-12.0))


def test_kto_weights_scale_each_side():
    # lambda_D = 2 on the desirable examples, lambda_U = 0.5 on the undesirable one
    out = build(KTOConfig(desirable_weight=2.0, undesirable_weight=0.5))(POLICY, REF, DESIRABLE)
    assert_close(out.loss, torch.tensor([2 * KTO[0], 0.5 * KTO[1], 2 * KTO[2]]))


def test_kto_reference_point_is_clamped_at_zero_and_not_differentiated():
    # mismatched ratios [-1, -1, -1]: z0 = max(0, -1) = 0
    #   1 - sigmoid(0.1), 1 - sigmoid(0.1 (0 + 1)), 1 - sigmoid(0) = 0.4750208, 0.4750208, 0.5
    mismatched = torch.tensor([-11.0, -16.0, -10.0], requires_grad=True)
    policy = UnpairedLogps(POLICY.completion, POLICY.tokens, mismatched)
    out = build(KTOConfig())(policy, REF, DESIRABLE)
    assert_close(out.loss, torch.tensor([0.4750208, 0.4750208, 0.5]))
    assert_close(out.metrics["z0"], torch.tensor(0.0))
    assert not out.loss.requires_grad  # nothing but z0 depends on the (leaf) mismatched logps


def test_kto_reference_point_is_the_mean_over_processes():
    # another process's mismatched ratios average 8/3: z0 = (4/3 + 8/3) / 2 = 2
    out = build(KTOConfig())(POLICY, REF, DESIRABLE, batch_mean=lambda x: (x + 8 / 3) / 2)
    assert_close(out.metrics["z0"], torch.tensor(2.0))
    assert_close(out.loss[0], torch.tensor(1 - sigmoid(0.1 * (1 - 2))))


# BCO, beta = 0.1: rewards 0.1 r = [0.1, -0.1, 0], batch mean 0 -> delta = 0
#   desirable 0.1:    -logsig(0.1 - 0)    = 0.6443967
#   undesirable -0.1: -logsig(-(-0.1 - 0)) = 0.6443967
#   desirable 0:      -logsig(0)          = log 2
# a second batch, r = [4, 2], desirable [yes, no]: rewards [0.4, 0.2], mean 0.3
#   delta = 0 + (0.3 - 0) / 2 = 0.15
#   -logsig(0.4 - 0.15) = -logsig(0.25) = 0.5759394; -logsig(-(0.2 - 0.15)) = 0.7184596
def second_batch() -> tuple[UnpairedLogps, UnpairedLogps, torch.Tensor]:
    policy = UnpairedLogps(torch.tensor([-1.0, -3.0]), torch.tensor([1.0, 1.0]))
    ref = UnpairedLogps(torch.tensor([-5.0, -5.0]), torch.tensor([1.0, 1.0]))
    return policy, ref, torch.tensor([True, False])


def test_bco_hand_computed_with_its_running_shift():
    loss = build(BCOConfig())
    first = loss(POLICY, REF, DESIRABLE)
    assert_close(first.loss, torch.tensor([0.6443967, 0.6443967, math.log(2)]))
    assert_close(first.metrics["delta"], torch.tensor(0.0))
    second = loss(*second_batch())
    assert_close(second.loss, torch.tensor([0.5759394, 0.7184596]))
    assert_close(second.metrics["delta"], torch.tensor(0.15))
    # held-out evaluation uses delta and leaves it as it is
    held_out = loss(*second_batch(), training=False)
    assert_close(held_out.loss, second.loss)
    assert loss.state_dict()["updates"].item() == 2


def test_bco_shift_is_trls_running_mean_of_every_reward():
    """TRL's BCOTrainer keeps RunningMoments over every reward (count starting at 1e-24); with
    equal micro-batches that is the running mean of their means kept by prefopt."""
    generator = torch.Generator().manual_seed(0)
    loss = build(BCOConfig(beta=0.5))
    mean, count = 0.0, 1e-24  # TRL's RunningMoments, a plain loop over batches
    for _ in range(7):
        completion = torch.randn(6, generator=generator) * 3
        desirable = torch.rand(6, generator=generator) > 0.5
        policy = UnpairedLogps(completion, torch.ones(6))
        ref = UnpairedLogps(torch.zeros(6), torch.ones(6))
        out = loss(policy, ref, desirable)
        rewards = 0.5 * completion
        batch_mean, batch_count = rewards.double().mean().item(), rewards.numel()
        total = count + batch_count
        mean, count = mean + (batch_mean - mean) * batch_count / total, total
        assert_close(out.metrics["delta"], torch.tensor(mean, dtype=torch.float32))
        expected = torch.where(
            desirable,
            -torch.nn.functional.logsigmoid(rewards - mean),
            -torch.nn.functional.logsigmoid(-(rewards - mean)),
        )
        assert_close(out.loss, expected)


def test_bco_state_round_trips():
    loss = build(BCOConfig())
    loss(POLICY, REF, DESIRABLE)
    loss(*second_batch())
    again = build(BCOConfig())
    again.load_state_dict(loss.state_dict())
    assert_close(
        again(*second_batch(), training=False).loss, loss(*second_batch(), training=False).loss
    )


def test_unpaired_losses_refuse_what_they_lack():
    with pytest.raises(ValueError, match="needs reference"):
        build(KTOConfig())(POLICY, None, DESIRABLE)
    no_mismatch = UnpairedLogps(POLICY.completion, POLICY.tokens)
    with pytest.raises(ValueError, match="mismatched"):
        build(KTOConfig())(no_mismatch, REF, DESIRABLE)
    assert LOSSES["kto"].kind == LOSSES["bco"].kind == "unpaired"
    assert LOSSES["kto"].build.needs_mismatched and not LOSSES["bco"].build.needs_mismatched


def test_validation_names_the_key():
    assert any("loss.undesirable_weight" in p for p in KTOConfig(undesirable_weight=0).validate())
    assert any("loss.beta" in p for p in BCOConfig(beta=-1).validate())
    assert any("not implemented" in p for p in BCOConfig(density_ratio="udm").validate())


# --------------------------------------------------------------------------- training

FROM_SCRATCH = ["model.name_or_path=null"]


def test_kto_trains_on_the_worlds_unpaired_data_and_the_reference_stays(tmp_path):
    from prefopt.trainers.unpaired import UnpairedTrainer

    recipe = tiny_recipe("kto", tmp_path / "k", *FROM_SCRATCH, "trainer.max_steps=2")
    trainer = UnpairedTrainer(recipe, tmp_path / "k")
    assert trainer.summary["data"]["train_examples"] == 256  # 2 x the world's 128 pairs
    assert trainer.reference is not None
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    ref_before = {n: p.detach().clone() for n, p in trainer.reference.named_parameters()}
    summary = trainer.train()
    moved = [n for n, p in trainer.unwrapped().named_parameters() if not torch.equal(p, before[n])]
    assert moved
    for n, p in trainer.reference.named_parameters():
        assert torch.equal(p, ref_before[n])
    assert summary["steps"] == 2 and "z0" in summary["eval"]
    batch = trainer.collate(trainer.train_examples[:4])
    assert batch["input_ids"].shape[0] == 8  # four examples and their four mismatched pairs


def test_kto_on_pairs_splits_them(tmp_path):
    from prefopt.trainers.unpaired import UnpairedTrainer

    recipe = tiny_recipe(
        "kto", tmp_path / "k", *FROM_SCRATCH, "data.unpaired=pairs", "trainer.max_steps=1"
    )
    trainer = UnpairedTrainer(recipe, tmp_path / "k")
    desirable = [e["desirable"] for e in trainer.train_examples]
    assert len(desirable) == 256 and desirable[:4] == [True, False, True, False]


def test_bco_resume_continues_the_exact_trajectory(tmp_path, monkeypatch):
    from prefopt.pipeline.run import train

    common = [*FROM_SCRATCH, "trainer.max_steps=6", "trainer.save_every=3"]

    def deltas(run_dir):
        return {m["step"]: (m["loss"], m["delta"]) for m in read_metrics(run_dir) if "delta" in m}

    straight = deltas(train(tiny_recipe("bco", tmp_path / "straight", *common))[1])
    train_until_interrupted(tiny_recipe("bco", tmp_path / "cut", *common), 3, monkeypatch)
    train(tiny_recipe("bco", tmp_path / "cut", *common, "resume=auto"))
    resumed = deltas(tmp_path / "cut")
    assert [resumed[s] for s in (4, 5, 6)] == [straight[s] for s in (4, 5, 6)]
    assert straight[6][1] != straight[3][1]  # delta moved after the checkpoint
