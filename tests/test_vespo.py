"""VESPO's policy-loss form (prefopt.losses.vespo) by hand: the gamma kernel of the sequence
weight, its sign-dependent parameters, REINFORCE on policy, and the config's checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

import prefopt.losses  # noqa: F401  (registers the losses)
from prefopt.config import ConfigError, load_recipe
from prefopt.registry import get_loss


def vespo(**cfg):
    entry = get_loss("vespo")
    return entry.build(entry.config_cls(**cfg))


def test_vespo_by_hand():
    """Row 0, A = +1: token log-ratios (log 2 - 0.3, 0.3) and a masked 5.0 -> W = 2 (the product,
    not GSPO's mean); phi = W^2 e^(3 (1 - W)) = 4 e^-3 = 0.1991483. Row 1, A = -1: log-ratios
    (log 0.5, 0, 0) -> W = 0.5; phi = 0.5^3 e^(2 * 0.5) = e / 8 = 0.3397852. With logp
    (-1, -2, *) and (-0.5, -1, -1.5), terms -phi A logp: row 0 phi (1, 2), row 1 -phi (0.5, 1,
    1.5); the token mean over the 5 valid tokens is (3 * 0.1991483 - 3 * 0.3397852) / 5
    = -0.0843821. The gradient is -phi A / 5 on every valid token (phi is not differentiated)."""
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.0, -1.5]], requires_grad=True)
    log_ratio = torch.tensor([[math.log(2) - 0.3, 0.3, 5.0], [math.log(0.5), 0.0, 0.0]])
    old = logp.detach() - log_ratio
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    out = vespo()(logp, old, torch.tensor([1.0, -1.0]), mask)
    phi0, phi1 = 4 * math.exp(-3), math.e / 8
    assert_close(out.loss, torch.tensor((3 * phi0 - 3 * phi1) / 5))
    assert_close(out.metrics["policy/phi_mean"], torch.tensor((phi0 + phi1) / 2))
    # ratio_mean is W over valid tokens: (2 + 2 + 0.5 * 3) / 5; both phis are below one half
    assert_close(out.metrics["policy/ratio_mean"], torch.tensor(5.5 / 5))
    assert_close(out.metrics["policy/clipfrac"], torch.tensor(1.0))
    out.loss.backward()
    g0, g1 = -phi0 / 5, phi1 / 5
    assert_close(logp.grad, torch.tensor([[g0, g0, 0.0], [g1, g1, g1]]))


def test_vespo_is_reinforce_on_policy():
    """At W = 1 the kernel is 1 for either sign: the gradient is REINFORCE's -A / (tokens),
    and the advantage's sign only picks (k, lambda)."""
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]], requires_grad=True)
    out = vespo(k_neg=7.0, lambda_neg=0.5)(
        logp, logp.detach(), torch.tensor([2.0, -3.0]), torch.ones(2, 2)
    )
    assert_close(out.metrics["policy/phi_mean"], torch.tensor(1.0))
    out.loss.backward()
    assert_close(logp.grad, torch.tensor([[-0.5, -0.5], [0.75, 0.75]]))


def test_vespo_kernel_peaks_at_k_over_lambda():
    """phi(W) = W^k e^(lambda (1 - W)) is largest at W = k / lambda (2/3 for A >= 0 by default):
    a sequence slightly less likely now than at sampling weighs more than one on policy."""
    weights = torch.tensor([0.5, 2 / 3, 0.8, 1.0])
    logp = torch.zeros(4, 1, requires_grad=True)
    old = -torch.log(weights)[:, None]
    loss = vespo()
    phis = [
        loss(logp[i : i + 1], old[i : i + 1], torch.ones(1), torch.ones(1, 1)).metrics[
            "policy/phi_mean"
        ]
        for i in range(4)
    ]
    assert int(torch.stack(phis).argmax()) == 1
    assert_close(phis[1], torch.tensor((2 / 3) ** 2 * math.exp(1.0)))


def test_vespo_config_is_checked():
    with pytest.raises(ConfigError, match="loss.lambda_neg must be > 0"):
        load_recipe("vespo", ["loss.lambda_neg=0.0"])
    with pytest.raises(ConfigError, match="loss.k_pos must be >= 0"):
        load_recipe("vespo", ["loss.k_pos=-1.0"])
    recipe = load_recipe("vespo")
    assert (recipe.loss.k_pos, recipe.loss.lambda_pos) == (2.0, 3.0)
    assert (recipe.loss.k_neg, recipe.loss.lambda_neg) == (3.0, 2.0)
    assert recipe.loss.aggregate == "global_token_mean"
