"""Pure tensor functions of the online trainer: advantages, KL, PPO losses, regularisers.

Every built-in regulariser and advantage-estimator module is imported here so the full lists
are visible in one place; importing them registers them in `prefopt.registry.REGULARISERS` and
`prefopt.registry.ADVANTAGES`.
"""

from prefopt.rl import estimators, regularisers  # noqa: F401  (registration side effects)
from prefopt.rl.advantages import (
    discounted_returns,
    gae,
    grpo_advantages,
    masked_mean,
    masked_var,
    masked_whiten,
    reinforce_pp_advantages,
    reinforce_pp_baseline_scores,
    rloo_advantages,
)
from prefopt.rl.bandit import bradley_terry, implied_preferences, kl_rlhf_optimum, pm_optimum
from prefopt.rl.kl import AdaptiveKLController, FixedKLController, kl_penalty
from prefopt.rl.ppo import (
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    token_aggregate,
)
from prefopt.rl.regularisers import (
    ConditionalPMConfig,
    KLRegulariserConfig,
    PMConfig,
    Regulariser,
    RegulariserConfig,
)

__all__ = [
    "AdaptiveKLController",
    "ConditionalPMConfig",
    "FixedKLController",
    "KLRegulariserConfig",
    "PMConfig",
    "Regulariser",
    "RegulariserConfig",
    "bradley_terry",
    "clipped_policy_loss",
    "clipped_value_loss",
    "discounted_returns",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "grpo_advantages",
    "implied_preferences",
    "kl_penalty",
    "kl_rlhf_optimum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "pm_optimum",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_scores",
    "rloo_advantages",
    "token_aggregate",
]
