"""Combining the scores of a reward-model ensemble, optionally penalising disagreement.

Uncertainty-penalised ensembles follow Coste et al. (2023), "Reward Model Ensembles Help
Mitigate Overoptimization", arXiv 2310.02743: the policy is optimised against a conservative
estimate of the reward instead of a single model's score. With ``k`` models scoring the same
``B`` completions, ``scores[m, b]``:

* ``"mean"``:            ``R_b = mean_m scores[m, b]``
* ``"mean_minus_std"``:  ``R_b = mean_m scores[m, b] - coef * std_m scores[m, b]``
* ``"min"``:             ``R_b = min_m scores[m, b]`` (worst-case optimisation, WCO)
* ``"mean_minus_var"``:  ``R_b = mean_m scores[m, b] - coef * var_m scores[m, b]``
  (uncertainty-weighted optimisation, UWO, as Coste et al. wrote it: their code
  ``tlc4418/llm_optimization`` uses the population variance ``np.var`` for best-of-n with
  coef 0.5, and ``torch.var``, the sample variance (divide by ``k - 1``), for PPO with coef 0.1;
  with ``k`` members the latter is this mode with coef ``0.1 k / (k - 1)``)

The standard deviation is the *population* one (divide by ``k``, ``correction=0``): it is the
spread of the ensemble members themselves, it is defined for ``k = 1`` (then 0, so that
``mean_minus_std`` reduces to the single model's score), and it does not depend on treating the
members as a sample from some larger population. ``mean_minus_std`` is prefopt's unit-free
variant of UWO (the standard deviation is on the scale of the rewards); ``mean_minus_var`` is
Coste et al.'s own objective, whose ``coef`` has the units of 1 / reward.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["ENSEMBLE_MODES", "combine_rewards"]

ENSEMBLE_MODES = ("mean", "mean_minus_std", "min", "mean_minus_var")


def combine_rewards(scores: Tensor, mode: str = "mean", coef: float = 1.0) -> Tensor:
    """Combine ``[k, B]`` ensemble scores into ``[B]`` rewards (see the module docstring).

    Args:
        scores: ``[k, B]``, one row per reward model.
        mode: one of ``ENSEMBLE_MODES``.
        coef: weight of the (population) standard deviation in ``"mean_minus_std"``, of the
            (population) variance in ``"mean_minus_var"``.
    """
    if scores.dim() != 2 or scores.shape[0] == 0:
        raise ValueError(f"scores must be [k, B] with k >= 1, got shape {tuple(scores.shape)}")
    if mode == "mean":
        return scores.mean(dim=0)
    if mode == "mean_minus_std":
        return scores.mean(dim=0) - coef * scores.std(dim=0, correction=0)
    if mode == "mean_minus_var":
        return scores.mean(dim=0) - coef * scores.var(dim=0, correction=0)
    if mode == "min":
        return scores.min(dim=0).values
    raise ValueError(f"unknown ensemble mode {mode!r}; expected one of {ENSEMBLE_MODES}")
