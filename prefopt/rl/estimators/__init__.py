"""Advantage estimators of the online trainer, one module each.

Every built-in estimator is imported here so the full list is visible in one place; importing
a module registers its estimator in `prefopt.registry.ADVANTAGES` with its config dataclass
(the recipe's ``advantage:`` section) and whether it needs a critic or a group of samples per
prompt. A new estimator is one module here (config + class + the registration) and its test.
"""

from prefopt.rl.estimators import bnpo, gae, gdpo, grpo, reinforce_pp, rloo  # noqa: F401
from prefopt.rl.estimators.base import AdvantageConfig, AdvantageEstimator

__all__ = ["AdvantageConfig", "AdvantageEstimator"]
