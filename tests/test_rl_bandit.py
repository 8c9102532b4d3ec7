"""The K-armed bandit's closed forms (ALGORITHMS.md section 5), and the regularisers tied to them.

Arms: r = [1, 0.5, 0, -0.5]; a non-uniform reference pi_ref = [0.1, 0.2, 0.3, 0.4].
"""

import math

import pytest
import torch
from torch.testing import assert_close

from prefopt.registry import get_regulariser
from prefopt.rl import KLRegulariserConfig, PMConfig
from prefopt.rl.bandit import bradley_terry, implied_preferences, kl_rlhf_optimum, pm_optimum

D = torch.float64
REWARDS = torch.tensor([1.0, 0.5, 0.0, -0.5], dtype=D)
REF = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=D)
UNIFORM = torch.full((4,), 0.25, dtype=D)


def test_bradley_terry_by_hand():
    """P[0, 1] = sig(0.5) = 0.6224593; P[3, 0] = sig(-1.5) = 0.1824255; diagonal 0.5."""
    bt = bradley_terry(REWARDS)
    assert_close(bt[0, 1], torch.tensor(1 / (1 + math.exp(-0.5)), dtype=D))
    assert_close(bt[3, 0], torch.tensor(1 / (1 + math.exp(1.5)), dtype=D))
    assert_close(torch.diagonal(bt), torch.full((4,), 0.5, dtype=D))


def test_kl_rlhf_preferences_match_the_paper_formula():
    """P[i, j] = sig((r_i - r_j)/beta + log pi_ref(i)/pi_ref(j)) at the KL-RLHF optimum."""
    beta = 0.5
    expected = torch.sigmoid(
        (REWARDS[:, None] - REWARDS[None, :]) / beta + torch.log(REF[:, None] / REF[None, :])
    )
    assert_close(implied_preferences(kl_rlhf_optimum(REWARDS, REF, beta)), expected)


def test_kl_rlhf_departs_from_bradley_terry_unless_uniform_and_beta_one():
    bt = bradley_terry(REWARDS)
    assert_close(implied_preferences(kl_rlhf_optimum(REWARDS, UNIFORM, 1.0)), bt)
    non_uniform = implied_preferences(kl_rlhf_optimum(REWARDS, REF, 1.0))
    sharper = implied_preferences(kl_rlhf_optimum(REWARDS, UNIFORM, 0.5))
    assert (non_uniform - bt).abs().max() > 0.1
    assert (sharper - bt).abs().max() > 0.1


def test_kl_rlhf_collapses_for_small_beta():
    """beta 0.01: the best arm beats every other with probability sig(>= 50 + log ratio) ~ 1,
    whereas Bradley-Terry gives it only sig(0.5) = 0.62 over the runner-up."""
    prefs = implied_preferences(kl_rlhf_optimum(REWARDS, REF, 0.01))
    assert (prefs[0, 1:] > 1 - 1e-12).all()
    assert bradley_terry(REWARDS)[0, 1] < 0.63


def test_pm_preferences_equal_bradley_terry():
    assert_close(implied_preferences(pm_optimum(REWARDS)), bradley_terry(REWARDS))


def maximise(regulariser, coef, ref_logp, steps=4000, lr=2.0):
    """Gradient ascent on softmax logits of the exact objective
    E_{a~pi}[r_a - coef * penalty(log pi_a, log pi_ref_a)], the expectation summed over arms."""
    logits = torch.zeros(4, dtype=D, requires_grad=True)
    mask = torch.ones(1, 4, dtype=D)
    for _ in range(steps):
        logp = torch.log_softmax(logits, dim=0)
        penalty = regulariser.penalty(logp[None], ref_logp[None], mask)[0]
        objective = (logp.exp() * (REWARDS - coef * penalty)).sum()
        (grad,) = torch.autograd.grad(objective, logits)
        with torch.no_grad():
            logits += lr * grad
    return torch.softmax(logits.detach(), dim=0)


def test_pm_regulariser_converges_to_pm_optimum():
    coef = 0.5
    pm = get_regulariser("pm").build(PMConfig(coef=coef))
    assert_close(maximise(pm, coef, torch.log(REF)), pm_optimum(REWARDS, beta=coef))


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_regulariser_converges_to_kl_rlhf_optimum(estimator):
    """k3 too: E_pi[pi_ref/pi - 1 + log pi/pi_ref] = KL(pi || pi_ref) exactly (k2 would not)."""
    coef = 0.5
    kl = get_regulariser("kl").build(KLRegulariserConfig(coef=coef, estimator=estimator))
    assert_close(maximise(kl, coef, torch.log(REF)), kl_rlhf_optimum(REWARDS, REF, beta=coef))


def test_pm_divergence_hand_computed():
    """Prompt 0: rewards (2, 1), log-probs (-3, -5): (1 - 2)^2 = 1.
    Prompt 1: rewards (0, 0), log-probs (-4, -4): 0. Prompt 2: (3 - 1) - (-1 + 2) = 1 -> 1.
    mean 2/3; per-prompt values (1, 0, 1): sd sqrt(1/3), SE sqrt(1/3)/sqrt(3) = 1/3.
    A policy with log pi = r + const on both samples has divergence 0 (the PM optimum)."""
    import torch

    from prefopt.eval.pm import pm_divergence_from

    out = pm_divergence_from(
        torch.tensor([[2.0, 1.0], [0.0, 0.0], [3.0, 1.0]]),
        torch.tensor([[-3.0, -5.0], [-4.0, -4.0], [-1.0, -2.0]]),
    )
    assert out["pm_divergence"] == pytest.approx(2 / 3)
    assert out["pm_divergence_se"] == pytest.approx(1 / 3)
    r = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    assert pm_divergence_from(r, r - 7.0)["pm_divergence"] == 0.0
