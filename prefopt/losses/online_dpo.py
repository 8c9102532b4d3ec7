"""Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback",
arXiv 2402.04792, Algorithm 1; TRL's ``OnlineDPOTrainer``): at every step two completions of each
prompt are sampled from the current policy, ranked by a scorer (any `Scorer`: a reward model,
ArmoRM, the world's gold reward -- the paper's AI annotator), and the policy takes a DPO step on
the resulting pair: ``-logsig(beta ((l(y_c) - l_ref(y_c)) - (l(y_r) - l_ref(y_r))))`` with
summed completion log-probs (DPO, Rafailov et al. 2023, eq. 7).

On the online trainer it is a policy-loss form with ``needs_reference`` (the reference runs at
every rollout whatever the regulariser) and ``pairs`` (minibatches keep a prompt's two samples
together): the ranking is the sign of the advantage of ``advantage.name: rloo`` with k = 2
(``r_i - r_j``, so positive exactly for the higher-scored sample, penalty terms included);
a tie carries no preference and is left out of the mean. ``pair_loss`` names any loss of the
DPO family (``sigmoid`` by default; ``ipo``, ``hinge``... as offline) with ``beta``; the
paper's beta is 0.1. The PM divergence and the gold evaluation run as for every online run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from prefopt.losses.base import LossOutput, PairLogps, detached
from prefopt.losses.dpo import DPOConfig
from prefopt.losses.ppo import OnlineLossConfig, OnlinePolicyLoss
from prefopt.registry import LOSSES, get_loss, register_policy_loss


@dataclass
class OnlineDPOConfig(OnlineLossConfig):
    name: str = "online_dpo"
    beta: float = 0.1  # the DPO loss's beta (the paper's 0.1)
    pair_loss: str = "sigmoid"  # a pairwise loss of the DPO family (loss.name offline)
    epochs: int = 1  # one DPO step per rollout batch, on policy
    minibatch_size: int = 64

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.beta <= 0:
            problems.append(f"loss.beta must be > 0, got {self.beta}")
        pairwise = sorted(n for n, e in LOSSES.items() if e.kind == "pairwise")
        if self.pair_loss not in pairwise:
            problems.append(
                f"loss.pair_loss: {self.pair_loss!r} is not one of {', '.join(pairwise)}"
            )
        elif get_loss(self.pair_loss).config_cls is not DPOConfig:
            problems.append(
                f"loss.pair_loss: {self.pair_loss!r} has settings beyond beta; use one whose "
                "config is DPOConfig (sigmoid, ipo, hinge)"
            )
        if self.minibatch_size % 2:
            problems.append(f"loss.minibatch_size must be even (pairs), got {self.minibatch_size}")
        return problems


def pair_logps(logps: Tensor, mask: Tensor, chosen_first: Tensor) -> PairLogps:
    """Summed completion log-probs of rows (2i, 2i+1) as pairs; ``chosen_first`` [P] bool: row
    2i is the chosen one."""
    sums, tokens = (logps * mask).sum(-1).view(-1, 2), mask.sum(-1).view(-1, 2)
    first, second = sums[:, 0], sums[:, 1]
    n_first, n_second = tokens[:, 0], tokens[:, 1]
    pick = chosen_first
    return PairLogps(
        chosen=first.where(pick, second),
        rejected=second.where(pick, first),
        chosen_tokens=n_first.where(pick, n_second),
        rejected_tokens=n_second.where(pick, n_first),
    )


@register_policy_loss("online_dpo", OnlineDPOConfig)
class OnlineDPOLoss(OnlinePolicyLoss):
    needs_reference: ClassVar[bool] = True
    pairs: ClassVar[bool] = True  # rows (2i, 2i+1) are one prompt's two samples
    takes_token_weights: ClassVar[bool] = False  # a loss of whole completions
    cfg: OnlineDPOConfig

    def __init__(self, cfg: OnlineDPOConfig):
        super().__init__(cfg)
        self.dpo = get_loss(cfg.pair_loss).build(DPOConfig(name=cfg.pair_loss, beta=cfg.beta))

    def __call__(  # type: ignore[override]
        self,
        logps: Tensor,
        old_logps: Tensor,
        advantages: Tensor,
        mask: Tensor,
        tokens: Tensor | float | None = None,
        ref_logps: Tensor | None = None,
    ) -> LossOutput:
        """logps, old_logps, ref_logps, mask: [2P, T], rows (2i, 2i+1) one prompt's samples;
        advantages: [2P, T] or [2P], positive on the preferred sample. Returns the mean DPO
        loss over the pairs with a preference and the DPO metrics (``online_dpo/*``)."""
        if ref_logps is None:
            raise ValueError("online_dpo needs the reference's log-probs")
        per_row = advantages if advantages.dim() == 1 else (advantages * mask).sum(-1)
        first, second = per_row.detach().view(-1, 2).unbind(-1)
        chosen_first, preferred = first > second, (first != second).to(logps.dtype)
        out = self.dpo(
            pair_logps(logps, mask, chosen_first), pair_logps(ref_logps, mask, chosen_first)
        )
        loss = (out.loss * preferred).sum() / preferred.sum().clamp(min=1)
        metrics = {k: v.float().mean() for k, v in out.metrics.items()}
        metrics["ties"] = 1 - preferred.mean()
        return LossOutput(loss, detached(**{f"online_dpo/{k}": v for k, v in metrics.items()}))
