"""The typed record of one rollout batch, as the online trainer optimises on it.

Shapes: ``R`` rollouts (``N`` prompts x ``k`` samples per prompt, grouped by prompt: rows
``i*k .. i*k+k-1`` are prompt ``i``'s), ``T`` the width of the left-padded prompt block plus the
generated tokens, ``M`` the number of rewards (1 unless ``reward.components`` lists several).
Per-token tensors are ``[R, T-1]``: column ``j`` describes the token at sequence column ``j + 1``
(the one predicted from the logits at ``j``), so ``mask[:, j]`` is 1 exactly where that token is
a completion token.

The trainer fills a record in steps (sample, score, forward passes, token rewards) and an
advantage estimator (``prefopt.registry.ADVANTAGES``) reads it whole: an estimator is a
function of this record, never of the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Rollout:
    """One rollout batch (see the module docstring for the shapes' conventions).

    sequences: [R, T] long, prompt (left-padded) then completion ids (pad after the first EOS).
    attention_mask: [R, T] long, 1 on real prompt and completion tokens.
    mask: [R, T-1] float, 1 where column j's token (sequence column j+1) is a completion token.
    old_logps: [R, T-1] log-prob of each token under the policy that sampled it (at the
        sampling temperature).
    ref_logps: [R, T-1] the same under the reference (``old_logps`` itself when no reference
        runs: a fixed coefficient 0).
    old_values: [R, T-1] the critic's values at rollout time, or None (critic-free).
    advantages: [R, T-1] per-token advantages (0 off the mask); None until the first update
        when the critic's values are taken from that update's forward (``old_values`` None
        too until then; OnlineTrainer.values_deferred).
    returns: [R, T-1] the critic's targets (GAE's A + V), or None (critic-free).
    scores: [R] the combined score after normalisation, the EOS penalty, overlong shaping and
        clipping: the reward the policy maximises.
    rewards: [R, M] each reward's own raw score (``reward.components``; M = 1: the scorer's).
    reward_weights: [M] the weights of ``rewards`` in the combined score.
    penalty: [R, T-1] the regulariser's per-token penalty.
    token_rewards: [R, T-1] ``-coef * penalty`` (when the penalty is in the reward) plus the
        score at the last completion token.
    last_column: [R] the column (in the T-1 convention) of each completion's last token.
    kl: [R] summed k1 KL ``sum_t (old_logp - ref_logp)`` of each completion.
    truncated: [R] bool, the completion ran out of new tokens before an EOS.
    loss_mask: [R, T-1] the tokens the policy loss sees: ``mask``, less the rows of truncated
        completions with ``rollout.mask_truncated`` (DAPO; TRL's mask_truncated_completions).
    group_size: k, the samples of each prompt.
    first: the first column (T-1 convention) that can hold a completion token (the prompt
        block's last column): per-token log-probs are computed from there on, 0 before.
    engine_logps: [R, T-1] the rollout engine's own log-probs of the tokens it sampled (0 off
        the mask), or None when it returned none (docs/algorithms/ppo.md, "Engine log-probs").
    old_from_engine: ``old_logps`` are ``engine_logps`` (``rollout.logps_from_generation``):
        no trainer forward at rollout time; the mismatch is measured on the first update.
    tis_weights: [R, T-1] detached truncated importance weights ``min(exp(old_logps -
        engine_logps), rollout.tis_cap)`` of each token's policy loss (1 off the mask), or None.
    mismatch_pending: the trainer's log-probs of the first update still equal the old ones
        (no optimiser step since the rollout): that update measures the mismatch.
    """

    sequences: Tensor
    attention_mask: Tensor
    mask: Tensor
    old_logps: Tensor
    ref_logps: Tensor
    old_values: Tensor | None
    advantages: Tensor | None
    returns: Tensor | None
    scores: Tensor
    rewards: Tensor
    reward_weights: Tensor
    penalty: Tensor
    token_rewards: Tensor
    last_column: Tensor
    kl: Tensor
    truncated: Tensor
    loss_mask: Tensor
    group_size: int = 1
    first: int = 0
    engine_logps: Tensor | None = None
    old_from_engine: bool = False
    tis_weights: Tensor | None = None
    mismatch_pending: bool = False

    @property
    def size(self) -> int:
        return int(self.sequences.shape[0])

    @property
    def lengths(self) -> Tensor:
        """[R] completion tokens of each rollout (its EOS included when it has one)."""
        return self.mask.sum(-1)
