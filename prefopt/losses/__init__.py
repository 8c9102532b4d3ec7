"""Every built-in loss, imported here so the full list is visible in one place.

Importing a module registers its losses in `prefopt.registry.LOSSES`.
"""

from prefopt.losses import (  # noqa: F401  (registration side effects)
    anchored,
    aot,
    armorm,
    bco,
    cispo,
    cpo,
    dpo,
    dpo_variants,
    gmpo,
    gspo,
    kto,
    mix,
    online_dpo,
    orpo,
    ppo,
    reward,
    sapo,
    sft,
    vespo,
)
from prefopt.losses.base import LossConfig, LossOutput, PairLogps
from prefopt.losses.dpo import DPOConfig, PairwiseLoss

__all__ = ["DPOConfig", "LossConfig", "LossOutput", "PairLogps", "PairwiseLoss"]
