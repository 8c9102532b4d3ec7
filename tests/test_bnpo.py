"""BNPO's advantage estimator (prefopt.rl.estimators.bnpo) by hand: the Beta normalisation with
its parameters from the batch, GRPO and REINFORCE as its special cases, the map of continuous
rewards, the edge cases, and the estimator on a rollout record."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from prefopt.config import ConfigError, load_recipe
from prefopt.registry import get_advantage
from prefopt.rl.estimators.bnpo import BNPOConfig, beta_parameters, bnpo_advantages
from prefopt.rl.rollout import Rollout

BINARY = torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]])


def test_bnpo_binary_by_hand():
    """p = (0.25, 0.5, 0.75): mean 0.5, unbiased variance 0.0625, so m (1 - m) / v - 1 = 3,
    a = b = 1.5 and alpha = beta = 1 + 1.5 / 3 = 1.5. Beta(1.5, 1.5) has density
    sqrt(p (1 - p)) / B(1.5, 1.5) = (8 / pi) sqrt(p (1 - p)): 1.1026578 at 0.25 and 0.75,
    4 / pi at 0.5. Advantages (R - p) / f: 0.75 / 1.1026578 = 0.6801748, -0.25 / 1.1026578
    = -0.2267249, +-0.5 pi / 4 = +-0.3926991."""
    alpha, beta = beta_parameters(BINARY.mean(1))
    assert_close((alpha, beta), (torch.tensor(1.5), torch.tensor(1.5)))
    big, small, mid = 0.6801748, 0.2267249, math.pi / 8
    expected = torch.tensor(
        [[big, -small, -small, -small], [mid, mid, -mid, -mid], [small, small, small, -big]]
    )
    assert_close(bnpo_advantages(BINARY), expected)


def test_bnpo_at_one_and_a_half_is_grpo_times_pi_over_8():
    """With alpha = beta = 1.5 (the batch above) BNPO is GRPO with the population std of binary
    rewards, sqrt(p (1 - p)), scaled by B(1.5, 1.5) = pi / 8 (the paper's special case)."""
    p = BINARY.mean(1, keepdim=True)
    grpo = (BINARY - p) / BINARY.std(dim=1, unbiased=False, keepdim=True)
    assert_close(bnpo_advantages(BINARY), math.pi / 8 * grpo)


def test_bnpo_batch_range_and_reinforce_by_hand():
    """Rewards (2, 4 | 8, 10) with the batch's range [2, 10] map to (0, 0.25 | 0.75, 1): p =
    (0.125, 0.875), mean 0.5, unbiased variance 0.28125 > m (1 - m) = 0.25, so a, b < 0 and
    alpha = beta = 1: REINFORCE with the group baseline, (-0.125, 0.125) in both groups."""
    out = bnpo_advantages(torch.tensor([[2.0, 4.0], [8.0, 10.0]]), None, None)
    assert_close(out, torch.tensor([[-0.125, 0.125], [-0.125, 0.125]]))
    # the same as fixed bounds 2 and 10; a shift and a scale of the rewards change nothing
    assert_close(bnpo_advantages(torch.tensor([[2.0, 4.0], [8.0, 10.0]]), 2.0, 10.0), out)
    assert_close(bnpo_advantages(torch.tensor([[0.0, 1.0], [3.0, 4.0]]), None, None), out)


def test_bnpo_edge_cases():
    """One prompt, or no spread between the prompts' p: alpha = beta = 1 (R - p). A group at
    p = 0 while alpha > 1: f_N(0) = 0, the weight is capped and its advantages stay 0."""
    assert_close(bnpo_advantages(torch.tensor([[0.2, 0.6]])), torch.tensor([[-0.2, 0.2]]))
    tied = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # p = (0.5, 0.5)
    assert_close(bnpo_advantages(tied), torch.tensor([[0.5, -0.5], [-0.5, 0.5]]))
    # p = (0, 0.25, 0.5, 0.5, 0.25): mean 0.3, variance 0.04375, alpha = 1 + 3.8 * 0.3 / 3
    rewards = torch.tensor([[0.0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 0, 0]])
    alpha, beta = beta_parameters(rewards.mean(1))
    assert_close(alpha, torch.tensor(1.38))
    out = bnpo_advantages(rewards)
    assert torch.isfinite(out).all() and (out[0] == 0).all()
    assert (bnpo_advantages(torch.full((2, 3), 7.0), None, None) == 0).all()


def test_bnpo_refuses_rewards_outside_its_range():
    with pytest.raises(
        ValueError, match=r"advantage.reward_min, advantage.reward_max\] = \[0, 1\]"
    ):
        bnpo_advantages(torch.tensor([[2.0, 4.0], [0.0, 1.0]]))


def rollout_of(rewards: torch.Tensor, lengths: list[int]) -> Rollout:
    """A rollout record holding only what a critic-free estimator reads: each completion's
    sequence reward at its last token and the completion mask."""
    rows, width = rewards.numel(), max(lengths) + 1
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).float()
    token_rewards = torch.zeros(rows, width)
    token_rewards[torch.arange(rows), torch.tensor(lengths) - 1] = rewards.reshape(-1)
    zeros = torch.zeros(rows, width)
    return Rollout(
        sequences=torch.zeros(rows, width + 1, dtype=torch.long),
        attention_mask=torch.ones(rows, width + 1, dtype=torch.long),
        mask=mask,
        old_logps=zeros,
        ref_logps=zeros,
        old_values=None,
        advantages=None,
        returns=None,
        scores=rewards.reshape(-1),
        rewards=rewards.reshape(-1, 1),
        reward_weights=torch.ones(1),
        penalty=zeros,
        token_rewards=token_rewards,
        last_column=torch.tensor(lengths) - 1,
        kl=torch.zeros(rows),
        truncated=torch.zeros(rows, dtype=torch.bool),
        loss_mask=mask,
        group_size=rewards.shape[1],
    )


def test_bnpo_estimator_on_a_rollout():
    """The registered estimator reads the sequence rewards by group and puts each completion's
    advantage on its tokens: the hand-computed REINFORCE case above, lengths (1, 3, 2, 2)."""
    entry = get_advantage("bnpo")
    assert entry.needs_group and not entry.needs_critic
    estimator = entry.build(BNPOConfig(reward_min=None, reward_max=None))
    rollout = rollout_of(torch.tensor([[2.0, 4.0], [8.0, 10.0]]), [1, 3, 2, 2])
    advantages, returns = estimator(rollout)
    assert returns is None
    a = 0.125
    expected = torch.tensor([[-a, 0, 0, 0], [a, a, a, 0], [-a, -a, 0, 0], [a, a, 0, 0]])
    assert_close(advantages, expected)


def test_bnpo_config_is_checked():
    with pytest.raises(ConfigError, match=r"advantage.reward_min \(1.0\) must be < "):
        load_recipe("bnpo", ["advantage.reward_min=1.0", "advantage.reward_max=0.0"])
    with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
        load_recipe("bnpo", ["rollout.samples_per_prompt=1"])
    recipe = load_recipe("bnpo")
    assert recipe.advantage.reward_min is None and recipe.advantage.reward_max is None
    assert BNPOConfig().reward_min == 0.0 and BNPOConfig().reward_max == 1.0  # the authors'
