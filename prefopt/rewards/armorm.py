"""ArmoRM: interpretable multi-objective rewards combined by a mixture-of-experts gate.

Wang et al. (2024), "Interpretable Preferences via Multi-Objective Reward Modeling and
Mixture-of-Experts", arXiv 2406.12845 (ALGORITHMS.md section 8). This module holds the math,
independent of any backbone: it works on feature vectors that a frozen model has produced.

Stage 1, absolute-rating regression. ``f(x, y) in R^D`` is the backbone's last-token hidden
state. For each of ``K`` objectives (honesty, verbosity, safety, ...) a ridge regression without
intercept, ``w_k = argmin_w sum_i m_ik (f_i . w - t_ik)^2 + alpha_k ||w||^2`` over the examples
that carry a label for objective k (``m_ik``), gives the scores ``r = f(x, y)^T W in R^K``.
``alpha_k`` is chosen on a validation split, then the regression is refitted on all labelled
examples (:func:`fit_multi_objective_ridge`).

Verbosity decorrelation. ``r'_i = r_i - lambda_i r_v`` with ``lambda_i`` the smallest value in
a grid for which ``Spearman(r'_i, r_v) <= 0.03`` on a reference set, and ``lambda_v = 1`` for
the verbosity objective itself, so ``r'_v = 0``: as in the authors' released transform, the
gate cannot weight verbosity at all (:func:`verbosity_decorrelation`). ``verbosity_penalty=0``
(``loss.verbosity_penalty: 0``) keeps ``r'_v = r_v``, prefopt's behaviour before, where the
gate may still weight verbosity; checkpoints saved then carry ``lambda_v = 0`` and keep it.

Stage 2, gating. A gating MLP on the prompt's features ``f(x)`` (authors: 3 hidden layers of
1024, ReLU, dropout 0.2) gives ``g(x) = softmax(z(x) / T) * beta`` with the temperature ``T = 10``
fixed and ``beta`` a learnable scalar initialised to 1 (beta multiplies the softmax, as in the
authors' code: the gate weights sum to beta, not to 1). The final reward is
``R = g(x)^T r'`` (:func:`armorm_score`), trained with the Bradley-Terry loss on preference
pairs while the backbone and the regression weights stay frozen (authors: AdamW, lr 1e-3,
2,000 steps, batch 1,024 pairs). The training loop is the trainer's business, not this module's.

Deviations and choices: the ridge penalty is on the *sum* of squared errors (scikit-learn's
``Ridge`` convention), so alpha scales with the number of examples; the validation split is one
random split of the examples shared by all objectives; the alpha with the lowest validation
mean squared error wins, ties going to the larger alpha; the decorrelation threshold is on the
signed Spearman correlation (an objective already negatively correlated with verbosity gets
``lambda = 0``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "ArmoRMHead",
    "GatingNetwork",
    "ObjectiveMLP",
    "apply_decorrelation",
    "armorm_score",
    "average_ranks",
    "default_lambda_grid",
    "fit_multi_objective_ridge",
    "fit_objective_mlp",
    "spearman",
    "verbosity_decorrelation",
]


# --------------------------------------------------------------------------- stage 1: ridge


def _ridge_solve(x: Tensor, y: Tensor, alpha: float) -> Tensor:
    """``(X^T X + alpha I)^{-1} X^T y`` in the dtype of ``x`` (float64 here)."""
    gram = x.T @ x
    gram.diagonal().add_(alpha)
    return torch.linalg.solve(gram, x.T @ y)


def _check_regression_inputs(
    features: Tensor, targets: Tensor, mask: Tensor | None, val_fraction: float
) -> None:
    if features.dim() != 2 or targets.dim() != 2 or features.shape[0] != targets.shape[0]:
        raise ValueError(
            f"features must be [N, D] and targets [N, K]; got {tuple(features.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if mask is not None and mask.shape != targets.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match targets {tuple(targets.shape)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")


def validation_rows(n: int, val_fraction: float, seed: int) -> Tensor:
    """``[n]`` bool, True for the ``round(val_fraction * n)`` rows of one seeded random split."""
    generator = torch.Generator().manual_seed(seed)
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[torch.randperm(n, generator=generator)[: round(val_fraction * n)]] = True
    return is_val


def fit_multi_objective_ridge(
    features: Tensor,
    targets: Tensor,
    mask: Tensor | None,
    alphas: Sequence[float],
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[Tensor, list[float]]:
    """One no-intercept ridge regression per objective (ArmoRM stage 1, arXiv 2406.12845).

    For objective k, the labelled examples (``mask[:, k]``) are split into train and validation
    by one seeded random split of all N examples; each alpha is fitted on the train part and
    scored by validation MSE; the best alpha is then refitted on all labelled examples.
    Closed form ``(X^T X + alpha I)^{-1} X^T t`` via ``torch.linalg.solve`` in float64.

    Args:
        features: ``[N, D]`` frozen-backbone features ``f(x, y)``.
        targets: ``[N, K]`` ratings; values where ``mask`` is False are ignored (may be NaN).
        mask: ``[N, K]`` bool, True where the rating exists; None means all exist.
        alphas: candidate penalties (>= 0), applied to the sum of squared errors.
        val_fraction: fraction of the examples held out to choose alpha.
        seed: seed of the train/validation split.

    Returns:
        ``(weights [D, K]`` in the dtype of ``features``, ``chosen alpha per objective)``.
    """
    _check_regression_inputs(features, targets, mask, val_fraction)
    if not alphas or any(a < 0 for a in alphas):
        raise ValueError(f"alphas must be a non-empty list of values >= 0, got {alphas}")

    x = features.detach().to(device="cpu", dtype=torch.float64)
    t = targets.detach().to(device="cpu", dtype=torch.float64)
    labelled = torch.ones_like(t, dtype=torch.bool) if mask is None else mask.detach().cpu().bool()
    n, d = x.shape
    k_objectives = t.shape[1]

    is_val = validation_rows(n, val_fraction, seed)

    weights = torch.zeros(d, k_objectives, dtype=torch.float64)
    chosen: list[float] = []
    for k in range(k_objectives):
        rows = labelled[:, k]
        train, val = rows & ~is_val, rows & is_val
        if int(train.sum()) == 0 or int(val.sum()) == 0:
            raise ValueError(
                f"objective {k} has {int(train.sum())} training and {int(val.sum())} validation "
                "labels; each needs at least one to choose alpha"
            )
        val_mse = []
        for alpha in alphas:
            w = _ridge_solve(x[train], t[train, k], float(alpha))
            val_mse.append(float(((x[val] @ w - t[val, k]) ** 2).mean()))
        best = min(val_mse)
        # among (exact) ties prefer the stronger regularisation
        alpha_k = max(a for a, mse in zip(alphas, val_mse, strict=True) if mse == best)
        weights[:, k] = _ridge_solve(x[rows], t[rows, k], float(alpha_k))
        chosen.append(float(alpha_k))
    out_dtype = features.dtype if features.is_floating_point() else torch.float64
    return weights.to(out_dtype), chosen


# ------------------------------------------------- stage 1 (deviation): a non-linear probe


class ObjectiveMLP(nn.Module):
    """Stage-1 regression as an MLP instead of the paper's linear layer (``loss.regression:
    mlp``, a deviation for small backbones whose features hold the objectives non-linearly).

    ``[B, D]`` features are standardised with the training mean / std, go through hidden
    layers with GELU, and come out as ``[B, K]`` objective scores in the ratings' own units
    (the outputs are trained on standardised targets and mapped back). All weights are frozen
    after :func:`fit_objective_mlp`; the standardisation constants are buffers.
    """

    x_mean: Tensor
    x_std: Tensor
    y_mean: Tensor
    y_std: Tensor

    def __init__(self, in_features: int, n_objectives: int, hidden_sizes: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, n_objectives))
        self.net = nn.Sequential(*layers)
        self.in_features, self.n_objectives = in_features, n_objectives
        self.hidden_sizes = list(hidden_sizes)
        self.register_buffer("x_mean", torch.zeros(in_features))
        self.register_buffer("x_std", torch.ones(in_features))
        self.register_buffer("y_mean", torch.zeros(n_objectives))
        self.register_buffer("y_std", torch.ones(n_objectives))

    def standardised(self, features: Tensor) -> Tensor:
        """Outputs in standardised target units (what the fit's loss sees)."""
        return self.net((features.to(self.x_mean.dtype) - self.x_mean) / self.x_std)

    def forward(self, features: Tensor) -> Tensor:
        return self.standardised(features) * self.y_std + self.y_mean


def fit_objective_mlp(
    features: Tensor,
    targets: Tensor,
    mask: Tensor | None,
    hidden_sizes: Sequence[int] = (512, 512),
    epochs: int = 20,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    batch_size: int = 256,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[ObjectiveMLP, list[float]]:
    """Fit an :class:`ObjectiveMLP` by masked mean squared error (unrated cells ignored).

    The rows are split once, as in :func:`fit_multi_objective_ridge` (same seed, same split);
    the MLP trains on the training rows for ``epochs`` passes (AdamW, cosine decay, seeded
    order) and the validation rows give each objective's held-out R^2. Unlike the ridge, the
    model is not refitted on all rows afterwards: the reported R^2 is that of the returned
    model. Targets are standardised per objective over their rated rows.

    Returns:
        ``(model`` frozen, in eval mode, on the features' device``, validation R^2 per objective)``.
    """
    _check_regression_inputs(features, targets, mask, val_fraction)
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"need epochs >= 1 and batch_size >= 1, got {epochs}, {batch_size}")
    device = features.device
    x = features.detach().float()
    labelled = (
        torch.ones(targets.shape, dtype=torch.bool) if mask is None else mask.detach().cpu().bool()
    ).to(device)
    t = torch.where(labelled, targets.detach().float().to(device), 0.0)
    n, d = x.shape
    is_val = validation_rows(n, val_fraction, seed).to(device)
    train_rows = torch.nonzero(~is_val).squeeze(1)
    for k in range(t.shape[1]):
        n_train, n_val = int(labelled[~is_val, k].sum()), int(labelled[is_val, k].sum())
        if n_train < 2 or n_val == 0:
            raise ValueError(
                f"objective {k} has {n_train} training and {n_val} validation labels; it needs "
                "at least 2 and 1"
            )

    torch.manual_seed(seed)
    model = ObjectiveMLP(d, t.shape[1], hidden_sizes).to(device)
    xt, mt = x[train_rows], labelled[train_rows]
    model.x_mean.copy_(xt.mean(0))
    # a feature constant on the training rows (e.g. the embedding of a final EOS) is centred
    # but not scaled: dividing by a tiny std would turn a small change of it into a huge one
    x_std = xt.std(0)
    model.x_std.copy_(torch.where(x_std > 1e-6, x_std, torch.ones_like(x_std)))
    count = mt.sum(0).clamp(min=1)
    y_mean = (t[train_rows] * mt).sum(0) / count
    y_var = (((t[train_rows] - y_mean) * mt) ** 2).sum(0) / count
    model.y_mean.copy_(y_mean)
    model.y_std.copy_(y_var.sqrt().clamp(min=1e-6))
    z = (t - model.y_mean) / model.y_std

    steps_per_epoch = max(1, -(-len(train_rows) // batch_size))
    optimizer = torch.optim.AdamW(model.net.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total))
    )
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = train_rows[torch.randperm(len(train_rows), generator=generator).to(device)]
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            m = labelled[rows].float()
            err = (model.standardised(x[rows]) - z[rows]) ** 2 * m
            loss = err.sum() / m.sum().clamp(min=1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        pred = model(x[is_val])
    r2 = []
    for k in range(t.shape[1]):
        rated = labelled[is_val, k]
        y, p = t[is_val, k][rated], pred[:, k][rated]
        total_ss = ((y - y.mean()) ** 2).sum().clamp(min=1e-12)
        r2.append(float(1 - ((y - p) ** 2).sum() / total_ss))
    return model, r2


# --------------------------------------------------------------- verbosity decorrelation


def average_ranks(values: Tensor) -> Tensor:
    """1-based ranks along the last dim, ties sharing the average of their ranks (float64).

    E.g. ``[10, 20, 20, 5] -> [2, 3.5, 3.5, 1]``.
    """
    v = values.detach().to(torch.float64)
    n = v.shape[-1]
    sorted_values, order = torch.sort(v, dim=-1, stable=True)
    position = torch.arange(n).expand_as(sorted_values)
    is_start = torch.ones_like(sorted_values, dtype=torch.bool)
    is_start[..., 1:] = sorted_values[..., 1:] != sorted_values[..., :-1]
    is_end = torch.ones_like(sorted_values, dtype=torch.bool)
    is_end[..., :-1] = is_start[..., 1:]
    # first / last position of each run of equal values, broadcast along the run
    start = torch.where(is_start, position, 0).cummax(dim=-1).values
    end = torch.where(is_end, position, n - 1).flip(-1).cummin(dim=-1).values.flip(-1)
    sorted_ranks = (start + end).to(torch.float64) / 2.0 + 1.0
    return torch.empty_like(sorted_ranks).scatter_(-1, order, sorted_ranks)


def _pearson_last_dim(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    return (a * b).sum(dim=-1) / torch.sqrt((a * a).sum(dim=-1) * (b * b).sum(dim=-1))


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation: Pearson correlation of average ranks (ties averaged).

    NaN when either input is constant (as in scipy.stats.spearmanr).
    """
    if x.dim() != 1 or x.shape != y.shape or x.numel() < 2:
        raise ValueError(
            f"spearman needs two 1-D tensors of equal length >= 2, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    return float(_pearson_last_dim(average_ranks(x), average_ranks(y)))


def default_lambda_grid() -> list[float]:
    """``0, 0.01, ..., 2.0``: lambdas for scores on comparable scales (widen if none fits)."""
    return [round(0.01 * i, 2) for i in range(201)]


def verbosity_decorrelation(
    scores: Tensor,
    verbosity_index: int,
    grid: Sequence[float] | None = None,
    threshold: float = 0.03,
    chunk_size: int = 64,
    verbosity_penalty: float = 1.0,
) -> Tensor:
    """ArmoRM's verbosity penalties lambda (arXiv 2406.12845; ALGORITHMS.md section 8).

    For every objective i != v, the smallest lambda in ``grid`` (scanned in increasing order)
    with ``Spearman(r_i - lambda r_v, r_v) <= threshold`` on the reference ``scores``.
    ``lambda_v = verbosity_penalty``: 1 (the authors') zeroes verbosity in the gated score, 0
    keeps it. A constant verbosity column gives zeros for the others (nothing to decorrelate).

    Args:
        scores: ``[N, K]`` objective scores on a reference set.
        verbosity_index: column of the verbosity objective.
        grid: candidate lambdas; default :func:`default_lambda_grid`.
        threshold: the largest allowed Spearman correlation with verbosity (authors: 0.03).
        chunk_size: how many lambdas are ranked at once (memory ``chunk_size x N``).

    Returns:
        ``[K]`` lambdas in the dtype of ``scores``.

    Raises:
        ValueError: if no grid value brings some objective below the threshold.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [N, K], got {tuple(scores.shape)}")
    n, k_objectives = scores.shape
    if not 0 <= verbosity_index < k_objectives:
        raise ValueError(f"verbosity_index {verbosity_index} out of range for K={k_objectives}")
    lambdas_grid = sorted(default_lambda_grid() if grid is None else [float(g) for g in grid])
    if not lambdas_grid:
        raise ValueError("grid must not be empty")
    s = scores.detach().to(device="cpu", dtype=torch.float64)
    verbosity = s[:, verbosity_index]
    lambdas = torch.zeros(k_objectives, dtype=torch.float64)
    lambdas[verbosity_index] = float(verbosity_penalty)
    if bool((verbosity == verbosity[0]).all()):
        return lambdas.to(scores.dtype)
    verbosity_ranks = average_ranks(verbosity)
    for i in range(k_objectives):
        if i == verbosity_index:
            continue
        found = None
        for start in range(0, len(lambdas_grid), chunk_size):
            chunk = torch.tensor(lambdas_grid[start : start + chunk_size], dtype=torch.float64)
            adjusted = s[:, i].unsqueeze(0) - chunk.unsqueeze(1) * verbosity.unsqueeze(0)
            rho = _pearson_last_dim(average_ranks(adjusted), verbosity_ranks.expand(len(chunk), n))
            hits = torch.nonzero(rho <= threshold)
            if hits.numel():
                found = float(chunk[int(hits[0, 0])])
                break
        if found is None:
            raise ValueError(
                f"no lambda in the grid (max {lambdas_grid[-1]}) brings the Spearman correlation "
                f"of objective {i} with verbosity to <= {threshold}; pass a wider grid"
            )
        lambdas[i] = found
    return lambdas.to(scores.dtype)


def apply_decorrelation(scores: Tensor, lambdas: Tensor, verbosity_index: int) -> Tensor:
    """``r'_i = r_i - lambda_i r_v`` for ``[..., K]`` scores, the verbosity column included:
    ``lambda_v = 1`` zeroes it (the authors' transform), ``lambda_v = 0`` keeps it."""
    penalty = lambdas.to(scores.dtype)
    return scores - penalty * scores[..., verbosity_index : verbosity_index + 1]


# ------------------------------------------------------------------------ stage 2: gating


class GatingNetwork(nn.Module):
    """ArmoRM's gate: an MLP on prompt features, ``softmax(z / T) * beta`` (arXiv 2406.12845).

    Args:
        in_features: D, the size of the prompt features ``f(x)``.
        n_objectives: K.
        hidden_sizes: widths of the hidden layers (authors: three of 1024), each followed by
            ReLU and dropout.
        dropout: dropout probability after each hidden layer (authors: 0.2).
        temperature: T, fixed (authors: 10).
        beta_init: initial value of the learnable scale beta (authors: 1).
    """

    def __init__(
        self,
        in_features: int,
        n_objectives: int,
        hidden_sizes: Sequence[int] = (1024, 1024, 1024),
        dropout: float = 0.2,
        temperature: float = 10.0,
        beta_init: float = 1.0,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, n_objectives))
        self.mlp = nn.Sequential(*layers)
        self.temperature = float(temperature)
        self.beta = nn.Parameter(torch.tensor(float(beta_init)))

    def forward(self, prompt_features: Tensor) -> Tensor:
        """``[B, D]`` prompt features -> ``[B, K]`` non-negative gate weights summing to beta."""
        logits = self.mlp(prompt_features)
        return torch.softmax(logits / self.temperature, dim=-1) * self.beta


def armorm_score(gate: Tensor, objective_scores: Tensor) -> Tensor:
    """ArmoRM's reward ``R = sum_k gate_k r'_k``: ``[B, K]`` x ``[B, K]`` -> ``[B]``."""
    return (gate * objective_scores).sum(dim=-1)


class ArmoRMHead(nn.Module):
    """Frozen regression + verbosity decorrelation + trainable gate, on precomputed features.

    ``regression_weights`` ``[D, K]`` and ``lambdas`` ``[K]`` are buffers (saved in the
    ``state_dict``, never trained); only the gating network has trainable parameters. The
    verbosity index is also a buffer (-1 when there is no verbosity objective) so that a
    checkpoint is complete. With ``regression`` (an :class:`ObjectiveMLP`, frozen) in place of
    the weights, stage 1 is that probe instead of the paper's linear layer.

    Args:
        regression_weights: ``[D, K]`` from :func:`fit_multi_objective_ridge`, or None when
            ``regression`` is given.
        regression: a fitted :class:`ObjectiveMLP` (``loss.regression: mlp``), or None.
        lambdas: ``[K]`` from :func:`verbosity_decorrelation`; None means no decorrelation.
        verbosity_index: column of the verbosity objective; required when some lambda is
            non-zero. None (stored as -1) means no verbosity objective and no decorrelation.
        prompt_dim: size of the prompt features; default D (same backbone for both).
        hidden_sizes, dropout, temperature, beta_init: see :class:`GatingNetwork`.
    """

    regression_weights: Tensor | None
    lambdas: Tensor
    verbosity_index: Tensor

    def __init__(
        self,
        regression_weights: Tensor | None,
        lambdas: Tensor | None = None,
        verbosity_index: int | None = None,
        prompt_dim: int | None = None,
        hidden_sizes: Sequence[int] = (1024, 1024, 1024),
        dropout: float = 0.2,
        temperature: float = 10.0,
        beta_init: float = 1.0,
        regression: ObjectiveMLP | None = None,
    ):
        super().__init__()
        if (regression_weights is None) == (regression is None):
            raise ValueError("give exactly one of regression_weights and regression")
        if regression is not None:
            d, k_objectives = regression.in_features, regression.n_objectives
            self.regression: ObjectiveMLP | None = regression.eval().requires_grad_(False)
            self.register_buffer("regression_weights", None)
        else:
            assert regression_weights is not None
            if regression_weights.dim() != 2:
                raise ValueError("regression_weights must be [D, K]")
            d, k_objectives = regression_weights.shape
            self.regression = None
            self.register_buffer("regression_weights", regression_weights.detach().clone().float())
        if lambdas is not None and verbosity_index is None and bool(lambdas.abs().sum() > 0):
            raise ValueError("non-zero lambdas need the verbosity_index they refer to")
        if verbosity_index is not None and not 0 <= verbosity_index < k_objectives:
            raise ValueError(f"verbosity_index {verbosity_index} out of range for K={k_objectives}")
        lam = torch.zeros(k_objectives) if lambdas is None else lambdas.detach().clone().float()
        if lam.shape != (k_objectives,):
            raise ValueError(f"lambdas must be [K={k_objectives}], got {tuple(lam.shape)}")
        self.register_buffer("lambdas", lam)
        index = -1 if verbosity_index is None else verbosity_index
        self.register_buffer("verbosity_index", torch.tensor(index, dtype=torch.long))
        self.gating = GatingNetwork(
            prompt_dim or d, k_objectives, hidden_sizes, dropout, temperature, beta_init
        )

    @property
    def shape(self) -> tuple[int, int]:
        """``(D, K)``: feature size and number of objectives of stage 1."""
        if self.regression is not None:
            return self.regression.in_features, self.regression.n_objectives
        assert self.regression_weights is not None
        return tuple(self.regression_weights.shape)  # type: ignore[return-value]

    def raw_objectives(self, response_features: Tensor) -> Tensor:
        """``[B, D]`` -> ``[B, K]`` stage-1 objective scores ``r`` (before decorrelation)."""
        x = response_features.to(self.lambdas.dtype)
        if self.regression is not None:
            return self.regression(x)
        assert self.regression_weights is not None
        return x @ self.regression_weights

    def objectives(self, response_features: Tensor) -> Tensor:
        """``[B, D]`` response features -> ``[B, K]`` decorrelated objective scores ``r'``."""
        raw = self.raw_objectives(response_features)
        index = int(self.verbosity_index)
        return raw if index < 0 else apply_decorrelation(raw, self.lambdas, index)

    def forward(self, response_features: Tensor, prompt_features: Tensor) -> dict[str, Tensor]:
        """Returns ``score [B]``, ``objectives [B, K]`` (decorrelated) and ``gate [B, K]``."""
        objectives = self.objectives(response_features)
        gate = self.gating(prompt_features.to(self.lambdas.dtype))
        return {"score": armorm_score(gate, objectives), "objectives": objectives, "gate": gate}
