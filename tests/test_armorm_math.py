"""ArmoRM math (Wang et al. 2024, arXiv 2406.12845): ridge, Spearman, decorrelation, gating."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from prefopt.rewards.armorm import (
    ArmoRMHead,
    GatingNetwork,
    ObjectiveMLP,
    apply_decorrelation,
    armorm_score,
    average_ranks,
    default_lambda_grid,
    fit_multi_objective_ridge,
    fit_objective_mlp,
    spearman,
    verbosity_decorrelation,
)
from prefopt.rewards.ensemble import combine_rewards

# ---------------------------------------------------------------------------------- ridge


def _linear_data(n=200, d=8, k=3, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, d, generator=generator, dtype=dtype)
    weights = torch.randn(d, k, generator=generator, dtype=dtype)
    return features, weights, generator


def test_ridge_recovers_known_weights_on_noise_free_data():
    features, true_weights, _ = _linear_data()
    weights, alphas = fit_multi_objective_ridge(
        features, features @ true_weights, None, alphas=[1e-9, 1e-3, 1.0, 100.0]
    )
    assert weights.shape == (8, 3) and weights.dtype == torch.float64
    assert alphas == [1e-9, 1e-9, 1e-9]  # no noise: the least regularisation validates best
    assert_close(weights, true_weights)  # float64 default tolerances (rtol 1e-7)
    w32, _ = fit_multi_objective_ridge(
        features.float(), (features @ true_weights).float(), None, alphas=[1e-9]
    )
    assert w32.dtype == torch.float32
    assert_close(w32, true_weights.float())


def test_ridge_ignores_masked_labels():
    features, true_weights, generator = _linear_data(n=150, k=2)
    targets = features @ true_weights
    mask = torch.rand(150, 2, generator=generator) > 0.3
    alphas = [1e-6, 0.1, 10.0]
    garbage_a = torch.where(mask, targets, torch.full_like(targets, 1e6))
    garbage_b = torch.where(mask, targets, torch.full_like(targets, math.nan))
    w_a, chosen_a = fit_multi_objective_ridge(features, garbage_a, mask, alphas)
    w_b, chosen_b = fit_multi_objective_ridge(features, garbage_b, mask, alphas)
    assert torch.equal(w_a, w_b) and chosen_a == chosen_b
    assert_close(w_a, true_weights)
    # dropping a label changes the fit, so the mask really selects the rows used
    noisy = targets + 0.1 * torch.randn(150, 2, generator=generator, dtype=torch.float64)
    fewer = mask.clone()
    fewer[torch.nonzero(mask[:, 0])[0, 0], 0] = False
    w_all, _ = fit_multi_objective_ridge(features, noisy, mask, [0.1])
    w_fewer, _ = fit_multi_objective_ridge(features, noisy, fewer, [0.1])
    assert not torch.equal(w_all[:, 0], w_fewer[:, 0])
    assert torch.equal(w_all[:, 1], w_fewer[:, 1])


def test_ridge_chooses_more_regularisation_for_a_noisy_objective():
    """60 examples, 40 features: a clean linear objective validates best with the least
    regularisation; a pure-noise objective is overfitted unless alpha is large."""
    features, true_weights, generator = _linear_data(n=60, d=40, k=1, seed=1)
    clean = features @ true_weights
    noise = torch.randn(60, 1, generator=generator, dtype=torch.float64)
    alphas = [1e-6, 1e-2, 1.0, 100.0, 1e4]
    _, chosen = fit_multi_objective_ridge(features, torch.cat([clean, noise], dim=1), None, alphas)
    assert chosen[0] == 1e-6
    assert chosen[1] >= 100.0


def test_ridge_needs_labels_for_every_objective():
    features, true_weights, _ = _linear_data(n=20, k=2)
    mask = torch.ones(20, 2, dtype=torch.bool)
    mask[:, 1] = False
    with pytest.raises(ValueError, match="objective 1"):
        fit_multi_objective_ridge(features, features @ true_weights, mask, [1.0])


# ------------------------------------------------------------------------------- spearman


def test_average_ranks_and_spearman_with_ties():
    """x = [10, 20, 20, 5, 30] -> ranks [2, 3.5, 3.5, 1, 5]
    y = [1, 3, 2, 2, 5]        -> ranks [1, 4, 2.5, 2.5, 5]
    deviations from the mean rank 3: dx = [-1, .5, .5, -2, 2], dy = [-2, 1, -.5, -.5, 2]
    sum dx dy = 2 + .5 - .25 + 1 + 4 = 7.25; sum dx^2 = sum dy^2 = 9.5; rho = 7.25 / 9.5
    """
    x = torch.tensor([10.0, 20.0, 20.0, 5.0, 30.0])
    y = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0])
    assert average_ranks(x).tolist() == [2.0, 3.5, 3.5, 1.0, 5.0]
    assert average_ranks(y).tolist() == [1.0, 4.0, 2.5, 2.5, 5.0]
    assert spearman(x, y) == pytest.approx(7.25 / 9.5, abs=1e-12)
    assert spearman(y, x) == pytest.approx(7.25 / 9.5, abs=1e-12)
    # batched rows, a triple tie and an all-equal row
    rows = torch.tensor([[3.0, 1.0, 3.0, 3.0], [7.0, 7.0, 7.0, 7.0]])
    assert average_ranks(rows).tolist() == [[3.0, 1.0, 3.0, 3.0], [2.5, 2.5, 2.5, 2.5]]


def test_spearman_monotone_and_constant():
    x = torch.linspace(-2, 2, 11)
    assert spearman(x, torch.exp(x)) == pytest.approx(1.0)
    assert spearman(x, -(x**3)) == pytest.approx(-1.0)
    assert math.isnan(spearman(x, torch.ones(11)))


# ---------------------------------------------------------------- verbosity decorrelation


def _reference_scores(n=400, seed=0):
    """Columns: helpfulness (0.8 * verbosity + noise), verbosity, safety (anti-correlated)."""
    generator = torch.Generator().manual_seed(seed)
    verbosity = torch.randn(n, generator=generator, dtype=torch.float64)
    helpful = 0.8 * verbosity + 0.5 * torch.randn(n, generator=generator, dtype=torch.float64)
    safety = -0.5 * verbosity + torch.randn(n, generator=generator, dtype=torch.float64)
    return torch.stack([helpful, verbosity, safety], dim=1)


def test_decorrelation_picks_smallest_grid_value_below_threshold():
    scores = _reference_scores()
    grid = default_lambda_grid()
    lambdas = verbosity_decorrelation(scores, verbosity_index=1, threshold=0.03)
    assert lambdas.shape == (3,) and lambdas.dtype == scores.dtype
    assert lambdas[1] == 1.0  # the authors' transform: verbosity itself is zeroed
    assert lambdas[0] > 0.3  # helpfulness was strongly tied to verbosity
    assert lambdas[2] == 0.0  # safety is already negatively correlated
    verbosity = scores[:, 1]
    for i in (0, 2):
        # brute force: the first grid value whose adjusted score has Spearman <= 0.03
        expected = next(
            lam for lam in grid if spearman(scores[:, i] - lam * verbosity, verbosity) <= 0.03
        )
        assert float(lambdas[i]) == expected
        assert spearman(scores[:, i] - float(lambdas[i]) * verbosity, verbosity) <= 0.03
    adjusted = apply_decorrelation(scores, lambdas, verbosity_index=1)
    assert torch.equal(adjusted[:, 1], torch.zeros_like(verbosity))
    assert_close(adjusted[:, 0], scores[:, 0] - lambdas[0] * verbosity)
    assert torch.equal(adjusted[:, 2], scores[:, 2])
    # verbosity_penalty=0 (the option that keeps prefopt's earlier behaviour): same lambdas for
    # the others, verbosity kept as it is
    kept = verbosity_decorrelation(scores, verbosity_index=1, verbosity_penalty=0.0)
    assert kept[1] == 0.0 and torch.equal(kept[[0, 2]], lambdas[[0, 2]])
    assert torch.equal(apply_decorrelation(scores, kept, 1)[:, 1], verbosity)


def test_decorrelation_chunking_does_not_change_the_answer():
    scores = _reference_scores(n=300, seed=4)
    a = verbosity_decorrelation(scores, 1, chunk_size=64)
    b = verbosity_decorrelation(scores, 1, chunk_size=1)
    assert torch.equal(a, b)


def test_decorrelation_edge_cases():
    scores = _reference_scores(n=100)
    with pytest.raises(ValueError, match="wider grid"):
        verbosity_decorrelation(scores, 1, grid=[0.0, 0.01])
    constant = scores.clone()
    constant[:, 1] = 3.0
    assert verbosity_decorrelation(constant, 1).tolist() == [0.0, 1.0, 0.0]
    # the verbosity column's own lambda applies to it: 0.7 leaves 0.3 of it
    adjusted = apply_decorrelation(scores, torch.tensor([0.5, 0.7, 0.0]), verbosity_index=1)
    assert_close(adjusted[:, 1], 0.3 * scores[:, 1])


# ------------------------------------------------------------------------------- gating


def test_gating_defaults_follow_the_authors():
    gate = GatingNetwork(in_features=32, n_objectives=5)
    linears = [m for m in gate.mlp if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [1024, 1024, 1024, 5]
    assert all(m.p == 0.2 for m in gate.mlp if isinstance(m, torch.nn.Dropout))
    assert sum(isinstance(m, torch.nn.ReLU) for m in gate.mlp) == 3
    assert gate.temperature == 10.0
    assert gate.beta.item() == 1.0 and gate.beta.requires_grad


def test_gate_is_nonnegative_sums_to_beta_and_uses_temperature():
    torch.manual_seed(0)
    gate = GatingNetwork(6, 4, hidden_sizes=(16, 16), beta_init=2.5).eval()
    features = torch.randn(5, 6) * 10
    weights = gate(features)
    assert weights.shape == (5, 4)
    assert bool((weights >= 0).all())
    assert_close(weights.sum(dim=-1), torch.full((5,), 2.5))
    assert_close(weights, torch.softmax(gate.mlp(features) / 10.0, dim=-1) * 2.5)


def test_armorm_score_hand_value():
    """0.5 * 2 + 0.25 * 4 + 0.25 * (-4) = 1; 0.1 * 1 + 0.2 * 1 + 0.7 * 1 = 1."""
    gate = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]])
    scores = torch.tensor([[2.0, 4.0, -4.0], [1.0, 1.0, 1.0]])
    assert_close(armorm_score(gate, scores), torch.tensor([1.0, 1.0]))


def _head(seed=0):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(6, 3, generator=generator)
    torch.manual_seed(seed)
    return ArmoRMHead(
        weights, lambdas=torch.tensor([0.4, 0.0, 0.1]), verbosity_index=1, hidden_sizes=(8,)
    )


def test_head_gradients_reach_gate_and_beta_but_not_regression_weights():
    head = _head()
    frozen = head.regression_weights.clone()
    assert sorted(name for name, _ in head.named_parameters()) == [
        "gating.beta",
        "gating.mlp.0.bias",
        "gating.mlp.0.weight",
        "gating.mlp.3.bias",
        "gating.mlp.3.weight",
    ]
    torch.manual_seed(1)
    chosen, rejected, prompts = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)
    out_c, out_r = head(chosen, prompts), head(rejected, prompts)
    loss = -F.logsigmoid(out_c["score"] - out_r["score"]).mean()  # Bradley-Terry, stage 2
    loss.backward()
    assert head.gating.beta.grad is not None and float(head.gating.beta.grad.abs()) > 0
    for parameter in head.gating.mlp.parameters():
        assert parameter.grad is not None and float(parameter.grad.abs().sum()) > 0
    assert head.regression_weights.grad is None and not head.regression_weights.requires_grad
    torch.optim.AdamW(head.parameters(), lr=1e-2).step()
    assert torch.equal(head.regression_weights, frozen)


def test_head_outputs_and_state_dict_round_trip():
    head = _head().eval()
    torch.manual_seed(2)
    response, prompt = torch.randn(5, 6), torch.randn(5, 6)
    out = head(response, prompt)
    assert set(out) == {"score", "objectives", "gate"}
    raw = response @ head.regression_weights
    assert_close(out["objectives"], apply_decorrelation(raw, head.lambdas, 1))
    assert_close(out["objectives"][:, 1], raw[:, 1])
    assert_close(out["score"], (out["gate"] * out["objectives"]).sum(-1))
    state = head.state_dict()
    assert {"regression_weights", "lambdas", "verbosity_index", "gating.beta"} <= set(state)
    fresh = ArmoRMHead(torch.zeros(6, 3), hidden_sizes=(8,)).eval()
    fresh.load_state_dict(state)
    assert int(fresh.verbosity_index) == 1
    reloaded = fresh(response, prompt)
    for key in out:
        assert_close(reloaded[key], out[key])


# ------------------------------------------------------------- stage 1 as an MLP probe


def _product_data(n=1200, seed=0):
    """Objective 0 is linear in x, objective 1 is x0 * x1: invisible to a linear layer."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    targets = torch.stack([x[:, 0] - 2 * x[:, 2] + 3.0, x[:, 0] * x[:, 1]], dim=1)
    return x, targets


def _r2(pred, y):
    return float(1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def test_mlp_probe_fits_what_a_linear_layer_cannot():
    x, targets = _product_data()
    probe, val_r2 = fit_objective_mlp(x, targets, None, (64, 64), epochs=60, batch_size=64)
    assert val_r2[0] > 0.98 and val_r2[1] > 0.9
    weights, _ = fit_multi_objective_ridge(x, targets, None, [1e-3, 1.0])
    assert _r2(x @ weights[:, 1], targets[:, 1]) < 0.05  # the product is out of a line's reach
    # outputs are in the ratings' own units (standardisation undone), on fresh inputs too
    fresh, fresh_targets = _product_data(400, seed=1)
    with torch.no_grad():
        pred = probe(fresh)
    assert (
        _r2(pred[:, 0], fresh_targets[:, 0]) > 0.98 and _r2(pred[:, 1], fresh_targets[:, 1]) > 0.9
    )
    assert abs(float(pred[:, 0].mean()) - 3.0) < 0.2
    assert not any(p.requires_grad for p in probe.parameters()) and not probe.training


def test_mlp_probe_centres_but_does_not_scale_a_constant_feature():
    x, targets = _product_data(400)
    x = torch.cat([x, torch.full((400, 1), 2.0)], dim=1)  # e.g. the embedding of a final EOS
    probe, _ = fit_objective_mlp(x, targets, None, (16,), epochs=2, batch_size=64)
    assert float(probe.x_std[-1]) == 1.0 and float(probe.x_mean[-1]) == 2.0
    nudged = x[:5].clone()
    nudged[:, -1] += 0.01  # a truncated response changes it a little: the scores barely move
    with torch.no_grad():
        assert (probe(nudged) - probe(x[:5])).abs().max() < 0.1


def test_mlp_probe_ignores_unrated_cells():
    x, targets = _product_data(400)
    mask = torch.ones_like(targets, dtype=torch.bool)
    mask[::3, 1] = False  # a third of the rows have no rating for objective 1
    zeros, garbage = targets.clone(), targets.clone()
    zeros[~mask], garbage[~mask] = 0.0, 1e6
    a, r2_a = fit_objective_mlp(x, zeros, mask, (16,), epochs=3, batch_size=64)
    b, r2_b = fit_objective_mlp(x, garbage, mask, (16,), epochs=3, batch_size=64)
    assert r2_a == r2_b
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="objective 1"):
        fit_objective_mlp(
            x, targets, torch.stack([mask[:, 0], torch.zeros(400, dtype=torch.bool)], 1)
        )


def test_head_with_mlp_probe_trains_only_the_gate_and_round_trips():
    x, targets = _product_data(300)
    probe, _ = fit_objective_mlp(
        torch.cat([x, x[:, :2]], 1), torch.cat([targets, x[:, 3:]], 1), None, (8,), epochs=1
    )
    torch.manual_seed(0)
    head = ArmoRMHead(
        None, torch.tensor([0.3, 0.0, 0.0]), 1, prompt_dim=6, hidden_sizes=(8,), regression=probe
    )
    assert head.shape == (6, 3) and head.regression_weights is None
    assert all(n.startswith("gating.") for n, p in head.named_parameters() if p.requires_grad)
    response, prompt = torch.randn(5, 6), torch.randn(5, 6)
    out = head.eval()(response, prompt)
    with torch.no_grad():
        raw = probe(response)
    assert_close(out["objectives"], apply_decorrelation(raw, head.lambdas, 1))
    fresh = ArmoRMHead(
        None, prompt_dim=6, hidden_sizes=(8,), regression=ObjectiveMLP(6, 3, [8])
    ).eval()
    fresh.load_state_dict(head.state_dict())  # probe weights and standardisation included
    for key, value in fresh(response, prompt).items():
        assert_close(value, out[key])
    with pytest.raises(ValueError, match="exactly one"):
        ArmoRMHead(torch.zeros(6, 3), regression=probe)
    with pytest.raises(ValueError, match="exactly one"):
        ArmoRMHead(None)


# ------------------------------------------------------------------------------ ensemble


def test_combine_rewards_hand_values():
    """Models x completions: [[1, 4], [3, 4]]: mean [2, 4]; population std [1, 0];
    mean - 0.5 std = [1.5, 4]; min [1, 4]."""
    scores = torch.tensor([[1.0, 4.0], [3.0, 4.0]])
    assert_close(combine_rewards(scores), torch.tensor([2.0, 4.0]))
    assert_close(combine_rewards(scores, "mean_minus_std", coef=0.5), torch.tensor([1.5, 4.0]))
    assert_close(combine_rewards(scores, "min"), torch.tensor([1.0, 4.0]))
    single = torch.tensor([[0.3, -2.0]])  # one model: the std is 0, not NaN
    assert_close(combine_rewards(single, "mean_minus_std"), single[0])
    with pytest.raises(ValueError, match="mean_minus_std"):
        combine_rewards(scores, "median")


def test_head_without_verbosity_objective():
    weights = torch.randn(6, 3, generator=torch.Generator().manual_seed(5))
    head = ArmoRMHead(weights, lambdas=torch.zeros(3), verbosity_index=None, hidden_sizes=(8,))
    assert int(head.verbosity_index) == -1
    response = torch.randn(2, 6)
    assert_close(head.objectives(response), response @ weights)
    fresh = ArmoRMHead(torch.zeros(6, 3), hidden_sizes=(8,))
    fresh.load_state_dict(head.state_dict())
    assert_close(fresh.objectives(response), response @ weights)
    with pytest.raises(ValueError, match="verbosity_index"):
        ArmoRMHead(weights, lambdas=torch.tensor([0.1, 0.0, 0.0]), hidden_sizes=(8,))
