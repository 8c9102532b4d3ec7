"""The preference-matching divergence of a policy (Xiao et al. 2024, arXiv 2405.16455).

The authors' evaluation: for each prompt draw two independent samples y_1, y_2 from the policy,
score both with the reward model r, and measure how far the policy's log-likelihood ratio is
from the reward gap,

    D_PM = mean over prompts of ((r(x, y_1) - r(x, y_2)) - (log pi(y_1|x) - log pi(y_2|x)))^2,

which is 0 exactly when pi ∝ exp(r) on the sampled pairs (the PM optimum, whose implied
preferences are Bradley-Terry's). KL-RLHF's optimum pi ∝ pi_ref exp(r / beta) leaves the
reference's log-ratio and a 1/beta scale in it. Reported with its standard error over prompts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from prefopt.eval.compare import standard_error
from prefopt.models.engines import sample_once
from prefopt.models.generation import completion_logps


@torch.no_grad()
def pm_divergence(
    policy: nn.Module,
    tokenizer: Any,
    scorer: Any,
    prompts: list[str],
    cfg: Any,
    device: torch.device,
    seed: int = 0,
    max_prompt_length: int = 64,
) -> dict[str, float]:
    """``{"pm_divergence", "pm_divergence_se", "pm_n_prompts"}`` on two samples per prompt of
    ``prompts`` (sampling settings and the engine, ``cfg.engine``, from ``cfg``, an
    EvalConfig)."""
    # two samples per prompt at temperature 1 without truncation: log pi is their distribution's
    two = replace(cfg, samples_per_prompt=2, temperature=1.0, top_k=0, top_p=1.0)
    samples = sample_once(policy, tokenizer, prompts, two, device, seed, max_prompt_length)
    logps = completion_logps(policy, samples, device, temperature=1.0).double().reshape(-1, 2)
    scores = torch.as_tensor(
        scorer.score(samples.flat_prompts, samples.flat_completions), dtype=torch.float64
    ).reshape(-1, 2)
    return pm_divergence_from(scores, logps)


def pm_divergence_from(scores: torch.Tensor, logps: torch.Tensor) -> dict[str, float]:
    """The divergence from ``[P, 2]`` rewards and summed log-probs of two samples per prompt."""
    if scores.shape != logps.shape or scores.dim() != 2 or scores.shape[1] != 2:
        raise ValueError(f"need [P, 2] scores and log-probs, got {tuple(scores.shape)}")
    s, lp = scores.double(), logps.double()
    per_prompt = ((s[:, 0] - s[:, 1]) - (lp[:, 0] - lp[:, 1])) ** 2
    return {
        "pm_divergence": float(per_prompt.mean()),
        "pm_divergence_se": standard_error(per_prompt),
        "pm_n_prompts": int(s.shape[0]),
    }
