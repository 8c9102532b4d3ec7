"""Reward models behind one interface: `score(prompts, completions) -> Tensor [N]`.

`load_scorer(spec)` loads a reward-model run / folder (Bradley-Terry, LoRA or full), an ArmoRM
folder, an ensemble (``A,B,C``) or the world's gold reward (``world``).
"""

_LAZY = {
    "load_scorer": "prefopt.rewards.scorers",
    "Scorer": "prefopt.rewards.scorers",
    "RewardModelScorer": "prefopt.rewards.scorers",
    "EnsembleScorer": "prefopt.rewards.scorers",
    "ArmoRMScorer": "prefopt.rewards.armorm_model",
    "combine_rewards": "prefopt.rewards.ensemble",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = sorted(_LAZY)
