"""Every loss against values worked out by hand.

The pair used throughout (beta = 0.1):
  policy  l(y_c) = -10, l(y_r) = -12, n_c = 4, n_r = 2
  ref     l(y_c) = -11, l(y_r) = -11
  u_c = 1, u_r = -1, z = beta (u_c - u_r) = 0.2
  logsig(0.2)  = -log(1 + e^-0.2) = -0.598138869
  logsig(-0.2) = -log(1 + e^0.2)  = -0.798138869
"""

import math

import pytest
import torch
from torch.testing import assert_close

from prefopt.losses.base import PairLogps
from prefopt.losses.dpo import DPOConfig, IPOConfig, SimPOConfig, SmoothedDPOConfig
from prefopt.losses.reward import BradleyTerryConfig
from prefopt.losses.sft import SFTConfig
from prefopt.registry import LOSSES, get_loss

POLICY = PairLogps(
    torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([4.0]), torch.tensor([2.0])
)
REF = PairLogps(
    torch.tensor([-11.0]), torch.tensor([-11.0]), torch.tensor([4.0]), torch.tensor([2.0])
)
LOGSIG_POS, LOGSIG_NEG = -0.598138869, -0.798138869


def build(cfg):
    return get_loss(cfg.name).build(cfg)


def value(out):
    return out.loss.item()


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        # -logsig(0.2)
        (DPOConfig(name="sigmoid"), 0.598138869),
        # 0.9 * 0.598138869 + 0.1 * 0.798138869
        (SmoothedDPOConfig(name="cdpo", label_smoothing=0.1), 0.618138869),
        # (0.9 * 0.598138869 - 0.1 * 0.798138869) / 0.8
        (SmoothedDPOConfig(name="robust", label_smoothing=0.1), 0.573138869),
        # relu(1 - 0.2)
        (DPOConfig(name="hinge"), 0.8),
        # h = 1/4 + 1/2 = 0.75; (0.75 - 1/(2*0.1))^2 = (-4.25)^2
        (IPOConfig(), 18.0625),
        # the paper's summed form: h = u_c - u_r = 2; (2 - 5)^2
        (IPOConfig(per_token=False), 9.0),
        # beta (-10/4 - -12/2) - gamma = 2 * 3.5 - 1 = 6; log(1 + e^-6)
        (SimPOConfig(name="simpo", beta=2.0, gamma=1.0), 0.002475685),
        # sigmoid + NLL(y_c)/n_c = 0.598138869 + 10/4
        (DPOConfig(name="sigmoid", nll_alpha=1.0), 3.098138869),
    ],
)
def test_pairwise_losses_hand_computed(cfg, expected):
    out = build(cfg)(POLICY, REF)
    assert_close(out.loss, torch.tensor([expected]), rtol=0, atol=1e-6)


def test_dpo_metrics_use_standard_names_and_values():
    out = build(DPOConfig(beta=0.1))(POLICY, REF)
    expected = {
        "rewards/chosen": 0.1,
        "rewards/rejected": -0.1,
        "rewards/margins": 0.2,
        "rewards/accuracies": 1.0,
        "logps/chosen": -10.0,
        "logps/rejected": -12.0,
    }
    for name, v in expected.items():
        assert_close(out.metrics[name], torch.tensor([v]), rtol=0, atol=1e-6)
        assert not out.metrics[name].requires_grad


def test_soft_labels_generalise_label_smoothing():
    # y = 0.7: 0.7 * 0.598138869 + 0.3 * 0.798138869
    out = build(DPOConfig())(POLICY, REF, {"soft_labels": torch.tensor([0.7])})
    assert_close(out.loss, torch.tensor([0.658138869]), rtol=0, atol=1e-6)
    cdpo = build(SmoothedDPOConfig(name="cdpo", label_smoothing=0.3))(POLICY, REF)
    assert_close(out.loss, cdpo.loss)


def test_robust_is_unbiased_under_flips():
    """E over a flip with prob eps of the robust loss = the clean DPO loss (Chowdhury eq. 7)."""
    eps = 0.2
    robust = build(SmoothedDPOConfig(name="robust", label_smoothing=eps))
    flipped = PairLogps(
        POLICY.rejected, POLICY.chosen, POLICY.rejected_tokens, POLICY.chosen_tokens
    )
    flipped_ref = PairLogps(REF.rejected, REF.chosen, REF.rejected_tokens, REF.chosen_tokens)
    expectation = (1 - eps) * robust(POLICY, REF).loss + eps * robust(flipped, flipped_ref).loss
    assert_close(expectation, build(DPOConfig())(POLICY, REF).loss)


def test_simpo_needs_no_reference_and_others_do():
    assert not LOSSES["simpo"].build.needs_reference
    build(SimPOConfig())(POLICY, None)
    with pytest.raises(ValueError, match="needs reference"):
        build(DPOConfig())(POLICY, None)


def test_gradient_direction_raises_chosen_lowers_rejected():
    chosen = torch.tensor([-10.0], requires_grad=True)
    rejected = torch.tensor([-12.0], requires_grad=True)
    policy = PairLogps(chosen, rejected, POLICY.chosen_tokens, POLICY.rejected_tokens)
    build(DPOConfig())(policy, REF).loss.sum().backward()
    # d/dl_c of -logsig(z) = -beta * sig(-z) = -0.1 * 0.450166
    assert_close(chosen.grad, torch.tensor([-0.1 * (1 - 1 / (1 + math.exp(-0.2)))]))
    assert_close(rejected.grad, -chosen.grad)


def test_bradley_terry_hand_computed():
    chosen, rejected = torch.tensor([1.5]), torch.tensor([0.5])
    plain = build(BradleyTerryConfig())(chosen, rejected)
    assert_close(plain.loss, torch.tensor([0.313261687]), rtol=0, atol=1e-6)  # log(1 + e^-1)
    margin = build(BradleyTerryConfig(use_margin=True))(
        chosen, rejected, {"margin": torch.tensor([0.5])}
    )
    assert_close(margin.loss, torch.tensor([0.474076984]), rtol=0, atol=1e-6)  # log(1 + e^-0.5)
    centred = build(BradleyTerryConfig(center_coef=0.01))(chosen, rejected)
    assert_close(centred.loss, torch.tensor([0.313261687 + 0.01 * 4.0]), rtol=0, atol=1e-6)
    assert plain.metrics["accuracy"].item() == 1.0


def test_sft_reductions():
    logps, n = torch.tensor([-6.0, -2.0]), torch.tensor([3.0, 2.0])
    seq = build(SFTConfig())(logps, n)
    assert_close(seq.loss, torch.tensor([2.0, 1.0]))  # 6/3, 2/2: batch mean 1.5
    tok = build(SFTConfig(reduction="token_mean"))(logps, n)
    assert_close(tok.loss.mean(), torch.tensor(8.0 / 5.0))  # all NLL over all tokens: 1.6


def test_range_validation_names_the_key():
    assert any("loss.beta" in p for p in DPOConfig(beta=0).validate())
    assert any(
        "loss.label_smoothing" in p
        for p in SmoothedDPOConfig(name="cdpo", label_smoothing=0.5).validate()
    )
