"""The log-prob mismatch between a rollout engine and the trainer, and its truncated
importance-sampling correction (docs/algorithms/ppo.md, "Engine log-probs").

An inference engine (vLLM, even transformers' own cached ``generate``) scores the tokens it
samples with other kernels, another batching and sometimes another precision than the
trainer's forward, so the two log-probs of one token differ: ``pi_engine(y_t)`` is the
distribution the samples really came from, ``pi_trainer(y_t)`` the one PPO's ratio is taken
against when the trainer recomputes the old log-probs.

* The mismatch, logged as ``rollout/logp_diff_mean`` and ``rollout/logp_diff_max``: the mean and
  the largest ``|log pi_trainer(y_t) - log pi_engine(y_t)|`` over the completion tokens, as TRL
  1.16 logs ``sampling/sampling_logp_difference/{mean,max}`` (``trl/trainer/grpo_trainer.py``,
  ``_generate_and_score_completions``).
* Truncated importance sampling (TIS; Yao et al. 2025, "Your Efficient RL Framework Secretly
  Brings You Off-Policy RL Training", verl's ``tis_imp_ratio_cap``): each token's policy loss is
  multiplied by ``w_t = min(exp(log pi_trainer(y_t) - log pi_engine(y_t)), C)``, detached, which
  turns the expectation over the engine's samples into one over the trainer's distribution,
  with the weight capped at ``C`` for bounded variance. It is TRL 1.16's
  ``vllm_importance_sampling_mode="token_truncate"`` with ``vllm_importance_sampling_clip_max
  = C`` and no lower bound (``grpo_trainer.py``: ``torch.clamp(exp(old_per_token_logps -
  sampling_per_token_logps), min=None, max=C)``, then ``per_token_loss * ratio`` before the
  KL term is added); TRL's default mode is ``sequence_mask`` (cap 3.0), prefopt's the token
  form only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefopt.rl.advantages import masked_mean


def logp_mismatch(trainer_logps: Tensor, engine_logps: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """``{"logp_diff_mean", "logp_diff_max"}``: the mean and the maximum of ``|trainer -
    engine|`` over the tokens of ``mask`` (all three ``[R, T]``; 0 when the mask is empty),
    detached."""
    diff = (trainer_logps.detach() - engine_logps.detach()).abs()
    valid = mask.bool()
    largest = diff[valid].max() if valid.any() else diff.new_zeros(())
    return {"logp_diff_mean": masked_mean(diff, mask), "logp_diff_max": largest}


def truncated_importance_weights(
    trainer_logps: Tensor, engine_logps: Tensor, mask: Tensor, cap: float
) -> Tensor:
    """``[R, T]`` detached TIS weights ``min(exp(trainer - engine), cap)`` on the tokens of
    ``mask``, 1 off it (the loss masks those anyway)."""
    if cap < 1:
        raise ValueError(f"the TIS cap must be >= 1, got {cap}")
    ratio = torch.exp(trainer_logps.detach() - engine_logps.detach()).clamp(max=cap)
    return torch.where(mask.bool(), ratio, torch.ones_like(ratio))
