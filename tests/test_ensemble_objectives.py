"""Coste et al.'s ensemble objectives (arXiv 2310.02743) as scorer settings: mean, WCO (min),
UWO (mean - lambda * variance); hand-computed values and the recipe keys."""

import pytest
import torch
from torch.testing import assert_close

from prefopt.config import ConfigError, load_recipe
from prefopt.rewards.ensemble import ENSEMBLE_MODES, combine_rewards
from prefopt.rewards.scorers import EnsembleScorer


class Fixed:
    """A scorer returning fixed scores, whatever the text."""

    def __init__(self, values):
        self.values = torch.tensor(values)

    def score(self, prompts, completions):
        return self.values


def test_uwo_hand_values():
    """Three models x two completions: [[1, 2], [2, 2], [6, 2]].
    Completion 0: mean 3, population variance ((1-3)^2 + (2-3)^2 + (6-3)^2) / 3 = 14/3;
    UWO with lambda 0.5: 3 - 7/3 = 2/3; WCO: 1. Completion 1: every model agrees, variance 0,
    UWO = mean = WCO = 2."""
    scores = torch.tensor([[1.0, 2.0], [2.0, 2.0], [6.0, 2.0]])
    assert_close(combine_rewards(scores, "mean_minus_var", coef=0.5), torch.tensor([2 / 3, 2.0]))
    assert_close(combine_rewards(scores, "min"), torch.tensor([1.0, 2.0]))
    assert_close(combine_rewards(scores, "mean"), torch.tensor([3.0, 2.0]))
    # Coste et al.'s PPO code takes torch.var (divide by k - 1 = 2: variance 7); with
    # lambda 0.1 that is 3 - 0.7 = 2.3, the same as this mode at coef 0.1 * 3 / 2
    assert_close(combine_rewards(scores[:, :1], "mean_minus_var", coef=0.15), torch.tensor([2.3]))


def test_uwo_ranks_a_disputed_completion_below_an_agreed_one():
    """Best-of-n under UWO: the completion with the higher mean but large disagreement loses."""
    scores = torch.tensor([[0.0, 2.0], [4.0, 2.0]])  # means 2 and 2; variances 4 and 0
    assert combine_rewards(scores, "mean_minus_var", coef=0.5).argmax() == 1
    assert_close(combine_rewards(scores, "mean_minus_var", coef=0.5), torch.tensor([0.0, 2.0]))


def test_ensemble_scorer_uses_the_mode():
    ensemble = EnsembleScorer([Fixed([1.0]), Fixed([3.0])], mode="mean_minus_var", coef=1.0)
    # mean 2, population variance 1: 2 - 1 = 1
    assert_close(ensemble.score(["p"], ["c"]), torch.tensor([1.0]))


def test_recipe_keys_match_the_modes_and_are_validated():
    for mode in ENSEMBLE_MODES:  # the config accepts every mode combine_rewards has
        assert load_recipe("ppo", [f"reward.ensemble={mode}"]).reward.ensemble == mode
    recipe = load_recipe("ppo", ["reward.ensemble=mean_minus_var", "reward.ensemble_coef=0.1"])
    assert (recipe.reward.ensemble, recipe.reward.ensemble_coef) == ("mean_minus_var", 0.1)
    with pytest.raises(ConfigError, match="reward.ensemble"):
        load_recipe("ppo", ["reward.ensemble=median"])
    with pytest.raises(ConfigError, match="reward.ensemble_coef"):
        load_recipe("ppo", ["reward.ensemble_coef=-1"])
