"""ORPO and CPO against values worked out by hand, and their reference-free training.

The pair used throughout (as tests/test_losses.py):
  policy  l(y_c) = -10, l(y_r) = -12, n_c = 4, n_r = 2
  averages  l(y_c)/n_c = -2.5, l(y_r)/n_r = -6
  chosen per-token NLL = 10/4 = 2.5
"""

import math
from decimal import Decimal, getcontext

import pytest
import torch
from torch.testing import assert_close

from prefopt.losses.base import PairLogps
from prefopt.losses.cpo import CPOConfig
from prefopt.losses.dpo import SimPOConfig
from prefopt.losses.orpo import ORPOConfig, log1mexp
from prefopt.registry import LOSSES, get_loss

POLICY = PairLogps(
    torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([4.0]), torch.tensor([2.0])
)


def build(cfg):
    return get_loss(cfg.name).build(cfg)


# ORPO, lambda = 0.1:
#   log(1 - e^-2.5) = log(1 - 0.0820850) = -0.0856505
#   log(1 - e^-6)   = log(1 - 0.0024788) = -0.0024818
#   log-odds difference = (-2.5 + 6) - (-0.0856505 + 0.0024818) = 3.5831687
#   logsig(3.5831687) = -log(1 + e^-3.5831687) = -0.0274084
#   L = 2.5 + 0.1 * 0.0274084 = 2.5027408
ORPO_LOG_ODDS, ORPO_LOGSIG = 3.5831687, -0.0274084


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (ORPOConfig(), 2.5 + 0.1 * 0.0274084),
        (ORPOConfig(nll_alpha=0.0, beta=1.0), 0.0274084),  # the odds-ratio term alone
        # CPO sigmoid: h = -10 + 12 = 2, z = 0.2: -logsig(0.2) + 2.5
        (CPOConfig(), 0.598138869 + 2.5),
        # conservative: 0.9 * 0.598138869 + 0.1 * 0.798138869, no NLL
        (CPOConfig(label_smoothing=0.1, nll_alpha=0.0), 0.618138869),
        (CPOConfig(variant="hinge", nll_alpha=0.0), 0.8),  # relu(1 - 0.2)
        # ipo on averages: h = -2.5 + 6 = 3.5; (3.5 - 1/0.2)^2 = 2.25
        (CPOConfig(variant="ipo", nll_alpha=0.0), 2.25),
        # simpo, beta 2, gamma 1: z = 2 * 3.5 - 1 = 6; log(1 + e^-6) (= SimPO's value)
        (CPOConfig(variant="simpo", beta=2.0, gamma=1.0, nll_alpha=0.0), 0.002475685),
        # AlphaPO (simpo, alpha 0.5, beta 0.1, gamma 0.5): r = (1 - e^(-0.5 l)) / 0.5
        #   r_c = 2 (1 - e^1.25) = -4.9806859, r_r = 2 (1 - e^3) = -38.1710738
        #   z = 0.1 * 33.1903879 - 0.5 = 2.8190388; log(1 + e^-2.8190388) = 0.0579512
        (CPOConfig(variant="simpo", alpha=0.5, nll_alpha=0.0), 0.0579512),
    ],
)
def test_reference_free_losses_hand_computed(cfg, expected):
    out = build(cfg)(POLICY, None)
    assert_close(out.loss, torch.tensor([expected]), atol=2e-7, rtol=1e-6)


def test_orpo_metrics_and_log_odds():
    out = build(ORPOConfig())(POLICY, None)
    assert_close(out.metrics["log_odds_chosen"], torch.tensor([ORPO_LOG_ODDS]))
    assert_close(out.metrics["log_odds_ratio"], torch.tensor([ORPO_LOGSIG]))
    assert_close(out.metrics["nll_loss"], torch.tensor([2.5]))
    # rewards are lambda times the average log-probs: 0.1 * -2.5 and 0.1 * -6
    assert_close(out.metrics["rewards/chosen"], torch.tensor([-0.25]))
    assert_close(out.metrics["rewards/margins"], torch.tensor([0.35]))


def test_cpo_simpo_without_nll_is_simpo():
    policy = PairLogps(
        torch.tensor([-3.0, -20.0, -7.5]),
        torch.tensor([-4.0, -9.0, -7.0]),
        torch.tensor([2.0, 9.0, 5.0]),
        torch.tensor([3.0, 4.0, 1.0]),
    )
    cpo = build(CPOConfig(variant="simpo", beta=2.0, gamma=1.0, nll_alpha=0.0))(policy, None)
    simpo = build(SimPOConfig(beta=2.0, gamma=1.0))(policy, None)
    assert_close(cpo.loss, simpo.loss)


def test_log1mexp_is_exact_at_both_ends():
    points = [-1e-6, -0.5, -math.log(2.0), -1.0, -30.0]
    getcontext().prec = 50  # the exact value, from 50-digit decimals
    exact = [float((1 - Decimal(x).exp()).ln()) for x in points]
    got = log1mexp(torch.tensor(points, dtype=torch.float64))
    assert_close(got, torch.tensor(exact, dtype=torch.float64), rtol=1e-12, atol=0.0)
    # float32 near 0: log(1 - e^-1e-7) = log(1e-7 - 5e-15) (naive float32 gives -inf or worse)
    assert_close(log1mexp(torch.tensor([-1e-7])), torch.tensor([math.log(1e-7)]))


def test_orpo_gradient_raises_chosen_lowers_rejected():
    chosen = torch.tensor([-10.0], requires_grad=True)
    rejected = torch.tensor([-12.0], requires_grad=True)
    policy = PairLogps(chosen, rejected, torch.tensor([4.0]), torch.tensor([2.0]))
    build(ORPOConfig())(policy, None).loss.sum().backward()
    assert chosen.grad is not None and rejected.grad is not None
    assert chosen.grad.item() < 0 < rejected.grad.item()


@pytest.mark.parametrize("name", ["orpo", "cpo"])
def test_orpo_and_cpo_are_reference_free(name):
    assert not LOSSES[name].build.needs_reference


def test_cpo_validation_names_the_key():
    assert any("loss.variant" in p for p in CPOConfig(variant="kto").validate())
    hinge = CPOConfig(variant="hinge", label_smoothing=0.1)
    assert any("loss.label_smoothing" in p for p in hinge.validate())


@pytest.mark.parametrize("recipe", ["orpo", "cpo"])
def test_reference_free_recipes_load_no_reference_model(tmp_path, recipe):
    from prefopt.trainers.preference import PreferenceTrainer
    from tests.conftest import tiny_recipe

    trainer = PreferenceTrainer(
        tiny_recipe(recipe, tmp_path / "r", "model.name_or_path=null", "trainer.max_steps=1"),
        tmp_path / "r",
    )
    assert trainer.reference is None and not trainer.reference_uses_adapter
    batch = trainer.collate(trainer.train_examples[:4])
    assert trainer.reference_logps(batch) is None
    assert trainer.summary["reference"]["mode"] == "none (reference-free loss)"
