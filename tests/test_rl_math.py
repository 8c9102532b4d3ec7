"""prefopt.rl's tensor functions against values worked out by hand, and GAE against a loop.

Conventions: ``mask`` marks valid completion tokens; masked positions are filled with
garbage (large numbers, -inf log-probs) wherever a test checks that they are never read.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from prefopt.registry import REGULARISERS, get_regulariser
from prefopt.rl import (
    AdaptiveKLController,
    ConditionalPMConfig,
    FixedKLController,
    KLRegulariserConfig,
    PMConfig,
    clipped_policy_loss,
    clipped_value_loss,
    discounted_returns,
    entropy_from_logits,
    explained_variance,
    gae,
    grpo_advantages,
    kl_penalty,
    masked_mean,
    masked_var,
    masked_whiten,
    reinforce_pp_advantages,
    reinforce_pp_baseline_scores,
    rloo_advantages,
    token_aggregate,
)
from prefopt.rl.regularisers import (
    ConditionalPMRegulariser,
    KLRegulariser,
    PMRegulariser,
)

D = torch.float64


def t(*rows):
    return torch.tensor(rows, dtype=D)


# ---------------------------------------------------------------------------------------------
# GAE


def gae_reference_loop(rewards, values, mask, gamma, lam):
    """The oracle: per sequence, keep only the valid positions, run textbook GAE over them
    (value 0 after the last one), and write the results back; 0 elsewhere."""
    advantages = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = [i for i in range(rewards.shape[1]) if mask[b, i] > 0]
        next_value, next_adv = 0.0, 0.0
        for i in reversed(idx):
            delta = rewards[b, i].item() + gamma * next_value - values[b, i].item()
            next_adv = delta + gamma * lam * next_adv
            next_value = values[b, i].item()
            advantages[b, i] = next_adv
    returns = (advantages + values) * mask
    return advantages, returns


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (1.0, 1.0), (0.9, 0.8), (0.99, 0.0)])
def test_gae_matches_loop_on_ragged_masks(gamma, lam):
    g = torch.Generator().manual_seed(int(gamma * 100 + lam * 10))
    rewards = torch.randn(6, 9, generator=g, dtype=D)
    values = torch.randn(6, 9, generator=g, dtype=D)
    mask = (torch.rand(6, 9, generator=g) > 0.3).to(D)  # holes, left and right padding
    mask[0] = 0  # a row with no valid token
    mask[1] = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1])  # left padded
    mask[2] = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0])  # right padded
    adv, ret = gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = gae_reference_loop(rewards, values, mask, gamma, lam)
    assert_close(adv, ref_adv)
    assert_close(ret, ref_ret)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()


def test_gae_three_tokens_by_hand():
    """gamma 0.9, lam 0.8 (gamma lam = 0.72), r = [0, 0, 1], V = [0.5, 0.4, 0.3]; a 4th,
    padded position holds garbage that must not be read (V after the last token is 0):
      t=2: delta = 1 + 0.9*0 - 0.3 = 0.7;        A = 0.7
      t=1: delta = 0 + 0.9*0.3 - 0.4 = -0.13;    A = -0.13 + 0.72*0.7   = 0.374
      t=0: delta = 0 + 0.9*0.4 - 0.5 = -0.14;    A = -0.14 + 0.72*0.374 = 0.12928
      returns = A + V = [0.62928, 0.774, 1.0]
    """
    adv, ret = gae(t([0.0, 0.0, 1.0, 5.0]), t([0.5, 0.4, 0.3, 9.0]), t([1, 1, 1, 0]), 0.9, 0.8)
    assert_close(adv, t([0.12928, 0.374, 0.7, 0.0]))
    assert_close(ret, t([0.62928, 0.774, 1.0, 0.0]))


def test_discounted_returns_skip_masked_positions():
    """gamma 0.5, r = [1, 7, 2], mask [1, 0, 1]: G_2 = 2, G_0 = 1 + 0.5*2 = 2 (the masked 7 is
    never read), G_1 = 0. Unmasked [1, 0, 2]: G = [1 + 0.5*1, 0 + 0.5*2, 2] = [1.5, 1, 2]."""
    assert_close(discounted_returns(t([1.0, 7.0, 2.0]), t([1, 0, 1]), 0.5), t([2.0, 0.0, 2.0]))
    assert_close(discounted_returns(t([1.0, 0.0, 2.0]), t([1, 1, 1]), 0.5), t([1.5, 1.0, 2.0]))


# ---------------------------------------------------------------------------------------------
# masked statistics


def test_masked_mean_and_var_by_hand():
    """x = [1, 2, 3, 100] with the 100 masked: mean 2, unbiased var (1 + 0 + 1)/2 = 1,
    biased 2/3; per-row mean of [[1, 3], [5, 100]] with [[1, 1], [1, 0]] is [2, 5]."""
    x, m = t([1.0, 2.0, 3.0, 100.0]), t([1, 1, 1, 0])
    assert_close(masked_mean(x, m), torch.tensor(2.0, dtype=D))
    assert_close(masked_var(x, m), torch.tensor(1.0, dtype=D))
    assert_close(masked_var(x, m, unbiased=False), torch.tensor(2 / 3, dtype=D))
    assert_close(masked_mean(t([1.0, 3.0], [5.0, 100.0]), t([1, 1], [1, 0]), dim=1), t(2.0, 5.0))
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, t([0, 1, 0, 0]))


def test_whitening_zero_mean_unit_var_on_valid_tokens():
    g = torch.Generator().manual_seed(0)
    x = 3.0 + 5.0 * torch.randn(5, 7, generator=g, dtype=D)
    mask = (torch.rand(5, 7, generator=g) > 0.4).to(D)
    w = masked_whiten(x, mask)
    assert_close(masked_mean(w, mask), torch.tensor(0.0, dtype=D))
    assert_close(masked_var(w, mask), torch.tensor(1.0, dtype=D))
    assert (w[mask == 0] == 0).all()
    kept = masked_whiten(x, mask, shift_mean=False)
    assert_close(masked_mean(kept, mask), masked_mean(x, mask))
    assert (kept[mask == 0] == 0).all()


# ---------------------------------------------------------------------------------------------
# critic-free estimators


def test_rloo_by_hand():
    """[1, 2, 3, 6]: leave-one-out means [11/3, 10/3, 3, 2] -> [-8/3, -4/3, 0, 4];
    [0, 0, 2, 2]: [4/3, 4/3, 2/3, 2/3] -> [-4/3, -4/3, 4/3, 4/3]."""
    out = rloo_advantages(t([1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 2.0, 2.0]))
    assert_close(out, t([-8 / 3, -4 / 3, 0.0, 4.0], [-4 / 3, -4 / 3, 4 / 3, 4 / 3]))
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(t([1.0], [2.0]))


SCORES = t([1.0, 3.0], [4.0, 8.0])  # group means 2 and 6; centred [-1, 1] and [-2, 2]


def test_grpo_group_scale_uses_unbiased_std():
    """Unbiased group stds: sqrt((1 + 1)/1) = sqrt(2) and sqrt((4 + 4)/1) = sqrt(8), so both
    groups give -+1/(sqrt(.) + 1e-4) ~ -+0.7071; the biased std (1 and 2) would give -+1."""
    s2, s8 = math.sqrt(2) + 1e-4, math.sqrt(8) + 1e-4
    assert_close(grpo_advantages(SCORES), t([-1 / s2, 1 / s2], [-2 / s8, 2 / s8]))


def test_grpo_batch_scale_and_dr_grpo():
    """batch: unbiased std of [1, 3, 4, 8] (mean 4, squares 9 + 1 + 0 + 16 = 26) is
    sqrt(26/3); centring stays per group. none: just the centred scores."""
    sb = math.sqrt(26 / 3) + 1e-4
    assert_close(grpo_advantages(SCORES, scale="batch"), t([-1 / sb, 1 / sb], [-2 / sb, 2 / sb]))
    assert_close(grpo_advantages(SCORES, scale="none"), t([-1.0, 1.0], [-2.0, 2.0]))
    with pytest.raises(ValueError, match="unknown GRPO scale"):
        grpo_advantages(SCORES, scale="global")
    with pytest.raises(ValueError, match="k >= 2"):
        grpo_advantages(t([1.0]), scale="none")


def test_reinforce_pp_by_hand():
    """gamma 1: r = [[0, 0, 1], [0, 2, 9]] with the 9 masked -> returns [[1, 1, 1], [2, 2, -]];
    valid returns [1, 1, 1, 2, 2]: mean 1.4, unbiased var (3*0.16 + 2*0.36)/4 = 0.3, so
    advantages -0.4/sqrt(0.3) = -0.7302967 and 0.6/sqrt(0.3) = 1.0954451."""
    rewards, mask = t([0.0, 0.0, 1.0], [0.0, 2.0, 9.0]), t([1, 1, 1], [1, 1, 0])
    lo, hi = -0.4 / math.sqrt(0.3), 0.6 / math.sqrt(0.3)
    assert_close(reinforce_pp_advantages(rewards, mask), t([lo, lo, lo], [hi, hi, 0.0]))


def test_reinforce_pp_baseline_subtracts_group_mean():
    assert_close(reinforce_pp_baseline_scores(SCORES), t([-1.0, 1.0], [-2.0, 2.0]))


# ---------------------------------------------------------------------------------------------
# KL estimators and controllers


def test_kl_estimators_by_hand():
    """d = logp - ref = [0.5, -1, 0]: k1 = d; k2 = d^2/2 = [0.125, 0.5, 0];
    k3 = e^{-d} - 1 + d = [e^{-0.5} - 0.5, e - 2, 0] = [0.1065307, 0.7182818, 0]."""
    logp, ref = t(-1.0, -2.0, -0.5), t(-1.5, -1.0, -0.5)
    assert_close(kl_penalty(logp, ref, "k1"), t(0.5, -1.0, 0.0))
    assert_close(kl_penalty(logp, ref, "k2"), t(0.125, 0.5, 0.0))
    assert_close(kl_penalty(logp, ref, "k3"), t(math.exp(-0.5) - 0.5, math.e - 2, 0.0))
    d = torch.randn(1000, generator=torch.Generator().manual_seed(1), dtype=D) * 3
    assert (kl_penalty(d, torch.zeros_like(d), "k3") >= 0).all()
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(logp, ref, "k4")


def test_adaptive_controller_by_hand_and_state_round_trip():
    """init 0.1, target 6, horizon 10000.
    KL 9, 500 steps: error clip(9/6 - 1) = clip(0.5) = 0.2 -> 0.1 * (1 + 0.2*0.05) = 0.101.
    KL 5.4, 1000 steps: error 0.9 - 1 = -0.1 -> 0.101 * (1 - 0.1*0.1) = 0.09999."""
    ctl = AdaptiveKLController(0.1, 6.0, 10000)
    ctl.update(9.0, 500)
    assert ctl.value == pytest.approx(0.101, rel=1e-12)
    ctl.update(5.4, 1000)
    assert ctl.value == pytest.approx(0.09999, rel=1e-12)
    resumed = AdaptiveKLController(0.1, 6.0, 10000)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == ctl.value
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, 3.0, 10000).load_state_dict(ctl.state_dict())
    with pytest.raises(ValueError, match="fixed"):
        FixedKLController(0.1).load_state_dict(ctl.state_dict())


def test_fixed_controller_never_moves_and_refuses_another_coef():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 1000)
    assert ctl.value == 0.05
    FixedKLController(0.05).load_state_dict(ctl.state_dict())
    with pytest.raises(ValueError, match="differs"):
        FixedKLController(0.2).load_state_dict(ctl.state_dict())


@pytest.mark.parametrize(
    "args,name", [((0.0, 6.0, 100), "init_coef"), ((0.1, -1.0, 100), "target"),
                  ((0.1, 6.0, 0), "horizon")]
)  # fmt: skip
def test_adaptive_controller_validates_arguments(args, name):
    with pytest.raises(ValueError, match=name):
        AdaptiveKLController(*args)


# ---------------------------------------------------------------------------------------------
# PPO losses


def test_policy_loss_at_ratio_one():
    g = torch.Generator().manual_seed(2)
    logp = torch.randn(3, 5, generator=g, dtype=D)
    adv = torch.randn(3, 5, generator=g, dtype=D)
    mask = t([1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0])
    loss, metrics = clipped_policy_loss(logp, logp.clone(), adv, mask)
    assert_close(loss, -masked_mean(adv, mask))
    assert_close(metrics["approxkl"], torch.tensor(0.0, dtype=D))
    assert_close(metrics["clipfrac"], torch.tensor(0.0, dtype=D))
    assert_close(metrics["ratio_mean"], torch.tensor(1.0, dtype=D))


def test_policy_loss_with_clipping_by_hand():
    """clip 0.2; tokens (A, rho): (1, 1.5) -> max(-1.5, -1.2) = -1.2 clipped;
    (-1, 0.5) -> max(0.5, 0.8) = 0.8 clipped; (1, 0.5) -> max(-0.5, -0.8) = -0.5 (outside the
    range but not binding: not counted); (2, 1) -> -2; a 5th token is masked.
    loss = (-1.2 + 0.8 - 0.5 - 2)/4 = -0.725; clipfrac 2/4; ratio_mean 3.5/4 = 0.875;
    approxkl = 0.5 * (ln(1.5)^2 + 2 ln(0.5)^2)/4. Gradients w.r.t. logp: 0 on clipped tokens,
    -A rho / 4 elsewhere: [0, 0, -0.125, -0.5, 0]."""
    old = t([0.0, 0.0, 0.0, 0.0, 0.0])
    logp = t([math.log(1.5), math.log(0.5), math.log(0.5), 0.0, 7.0]).requires_grad_()
    adv, mask = t([1.0, -1.0, 1.0, 2.0, 1.0]), t([1, 1, 1, 1, 0])
    loss, metrics = clipped_policy_loss(logp, old, adv, mask, clip=0.2)
    assert_close(loss, torch.tensor(-0.725, dtype=D))
    assert_close(metrics["clipfrac"], torch.tensor(0.5, dtype=D))
    assert_close(metrics["ratio_mean"], torch.tensor(0.875, dtype=D))
    expected_kl = 0.5 * (math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 4
    assert_close(metrics["approxkl"], torch.tensor(expected_kl, dtype=D))
    loss.backward()
    assert_close(logp.grad, t([0.0, 0.0, -0.125, -0.5, 0.0]))


def test_policy_loss_broadcasts_one_advantage_per_completion():
    g = torch.Generator().manual_seed(3)
    logp, old = torch.randn(2, 4, generator=g, dtype=D), torch.randn(2, 4, generator=g, dtype=D)
    mask, adv = t([1, 1, 0, 0], [1, 1, 1, 1]), t(0.5, -2.0)
    full = adv.unsqueeze(1).expand(2, 4)
    assert_close(
        clipped_policy_loss(logp, old, adv, mask)[0], clipped_policy_loss(logp, old, full, mask)[0]
    )


def test_value_loss_by_hand():
    """clip 0.2; (V, V_old, R): (1, 0.5, 0) -> clip(V) = 0.7: max(1, 0.49) = 1;
    (2, 2, 3) -> 1 both; (0, 0, 0.5) -> 0.25 both; (1, 0.5, 2) -> max(1, 1.69) = 1.69 clipped.
    loss = 0.5 * (1 + 1 + 0.25 + 1.69)/4 = 0.4925; clipfrac 1/4."""
    loss, metrics = clipped_value_loss(
        t([1.0, 2.0, 0.0, 1.0, 50.0]),
        t([0.5, 2.0, 0.0, 0.5, 0.0]),
        t([0.0, 3.0, 0.5, 2.0, 0.0]),
        t([1, 1, 1, 1, 0]),
    )
    assert_close(loss, torch.tensor(0.4925, dtype=D))
    assert_close(metrics["clipfrac"], torch.tensor(0.25, dtype=D))


def test_token_aggregate_modes_by_hand():
    """[[1, 2, 3], [4, x, x]]: token_mean 10/4 = 2.5; sequence_mean (2 + 4)/2 = 3;
    constant 5: (6/5 + 4/5)/2 = 1."""
    per_token, mask = t([1.0, 2.0, 3.0], [4.0, 100.0, -100.0]), t([1, 1, 1], [1, 0, 0])
    assert_close(token_aggregate(per_token, mask), torch.tensor(2.5, dtype=D))
    assert_close(token_aggregate(per_token, mask, "sequence_mean"), torch.tensor(3.0, dtype=D))
    assert_close(token_aggregate(per_token, mask, "constant", 5.0), torch.tensor(1.0, dtype=D))
    with pytest.raises(ValueError, match="constant"):
        token_aggregate(per_token, mask, "constant")
    with pytest.raises(ValueError, match="unknown aggregate"):
        token_aggregate(per_token, mask, "sum")


def test_entropy_and_explained_variance_by_hand():
    """Probs [0.5, 0.25, 0.25]: H = 0.5 ln 2 + 0.5 ln 4 = 1.5 ln 2; uniform over 4: ln 4.
    R = [1, 2, 3], V = [1, 2, 2]: Var(R - V) = 1/3 - 1/9 = 2/9, Var(R) = 2/3 -> EV = 2/3."""
    logits = torch.log(t([[0.5, 0.25, 0.25, 1e-300]], [[0.25, 0.25, 0.25, 0.25]]))
    assert_close(entropy_from_logits(logits), t([1.5 * math.log(2)], [math.log(4)]))
    ev = explained_variance(t(1.0, 2.0, 2.0, 9.0), t(1.0, 2.0, 3.0, 0.0), t(1, 1, 1, 0))
    assert_close(ev, torch.tensor(2 / 3, dtype=D))


# ---------------------------------------------------------------------------------------------
# regularisers


LOGP = t([-0.1, -2.0, -3.0, -1.0, -float("inf")])
REF = t([-0.2, -5.0, -4.0, math.log(0.01), -1.0])
MASK = t([1, 1, 1, 1, 0])


def build(cfg):
    return get_regulariser(cfg.name).build(cfg)


def test_registry_lists_every_regulariser_and_names_them_on_a_miss():
    assert {"kl", "pm", "conditional_pm"} <= set(REGULARISERS)
    assert isinstance(build(KLRegulariserConfig()), KLRegulariser)
    assert isinstance(build(PMConfig()), PMRegulariser)
    assert isinstance(build(ConditionalPMConfig()), ConditionalPMRegulariser)
    with pytest.raises(KeyError, match="conditional_pm, kl, pm"):
        get_regulariser("entropy")


def test_kl_regulariser_by_hand():
    """k1 = logp - ref = [0.1, 3, 1, -1 - ln 0.01, masked 0]; k2 halves the squares."""
    k1 = t([0.1, 3.0, 1.0, -1.0 - math.log(0.01), 0.0])
    assert_close(build(KLRegulariserConfig()).penalty(LOGP, REF, MASK), k1)
    assert_close(build(KLRegulariserConfig(estimator="k2")).penalty(LOGP, REF, MASK), 0.5 * k1**2)


def test_pm_regulariser_is_logp_and_needs_no_reference():
    pm = build(PMConfig())
    assert not pm.needs_reference
    assert_close(pm.penalty(LOGP, None, MASK), t([-0.1, -2.0, -3.0, -1.0, 0.0]))


def test_conditional_pm_switches_at_log_alpha():
    """alpha 0.01, log alpha = -4.605: ref -0.2 > -> logp -0.1; ref -5 < -> -2 - (-5) = 3;
    ref -4 > -> -3; ref exactly log alpha is not > -> -1 - ln 0.01 = 3.605; masked -> 0.
    With alpha 0.001 (log = -6.9) every reference token is likely: PM everywhere."""
    cpm = build(ConditionalPMConfig())
    expected = t([-0.1, 3.0, -3.0, -1.0 - math.log(0.01), 0.0])
    assert_close(cpm.penalty(LOGP, REF, MASK), expected)
    loose = build(ConditionalPMConfig(alpha=0.001))
    assert_close(loose.penalty(LOGP, REF, MASK), t([-0.1, -2.0, -3.0, -1.0, 0.0]))
    with pytest.raises(ValueError, match="reference"):
        cpm.penalty(LOGP, None, MASK)


def test_kl_regulariser_builds_its_controller():
    fixed = build(KLRegulariserConfig(coef=0.03)).controller()
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.03
    cfg = KLRegulariserConfig(coef=0.2, adaptive=True, target=4.0, horizon=500)
    adaptive = build(cfg).controller()
    assert isinstance(adaptive, AdaptiveKLController)
    assert (adaptive.value, adaptive.target, adaptive.horizon) == (0.2, 4.0, 500)


def test_config_validate_messages_name_the_key():
    assert KLRegulariserConfig().validate() == []
    assert PMConfig().validate() == []
    assert ConditionalPMConfig().validate() == []
    bad_kl = KLRegulariserConfig(estimator="k4", adaptive=True, coef=0.0, target=0.0, horizon=0)
    problems = " ".join(bad_kl.validate())
    for key in ("estimator", "coef", "target", "horizon"):
        assert f"regulariser.{key}" in problems
    assert "regulariser.coef" in KLRegulariserConfig(coef=-1.0).validate()[0]
    assert "regulariser.coef" in PMConfig(coef=0.0).validate()[0]
    assert "regulariser.alpha" in ConditionalPMConfig(alpha=1.0).validate()[0]
