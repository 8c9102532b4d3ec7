"""prefopt's policy-loss forms against TRL 1.16's GRPO loss on identical tensors.

TRL's own computation is driven: `GRPOTrainer._compute_loss` runs on a minimally constructed
trainer (`object.__new__`, only the attributes that method reads; the accelerator is a
one-process stand-in) whose log-prob forward returns the given per-token log-probs, so every
line of TRL's loss (ratio, clipping, SAPO's gate, CISPO's weight, the aggregation of each
``loss_type``) is TRL's. For each TRL ``loss_type`` (and GSPO: ``importance_sampling_level=
"sequence"``; two-sided clipping: ``delta``; VESPO's gamma kernel at TRL's defaults and at a
wider one; LUSPO, which is GSPO with ``loss.aggregate:
constant`` and ``loss.constant: 1``) the loss and its gradient with respect to the
log-probs equal prefopt's to fp32 rounding. No training, no model.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close
from trl.trainer.grpo_trainer import GRPOTrainer

import prefopt.losses  # noqa: F401  (registers the losses)
from prefopt.registry import get_loss

B, T, MAX_LEN = 6, 7, 9


class OneProcess:
    """The accelerator calls `_compute_loss` makes, for one process."""

    num_processes = 1

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x


def trl_loss(loss_type, logps, old, advantages, mask, *, level="token", **args):
    trainer = object.__new__(GRPOTrainer)
    settings = {
        "epsilon_low": args.pop("epsilon_low", 0.2),
        "epsilon_high": args.pop("epsilon_high", 0.2),
        "loss_type": loss_type,
        "importance_sampling_level": level,
        "beta": 0.0,
        "top_entropy_quantile": 1.0,
        "off_policy_mask_threshold": None,
        "use_vllm": False,
        "aux_loss_enabled": False,
        "_entropy_bonus_enabled": False,
        "max_completion_length": MAX_LEN,
        "current_gradient_accumulation_steps": 1,
        "model": SimpleNamespace(training=True),
        "accelerator": OneProcess(),
        "_metrics": {"train": defaultdict(list), "eval": defaultdict(list)},
        "args": SimpleNamespace(
            delta=args.pop("delta", None),
            use_bias_correction_kl=False,
            sapo_temperature_pos=1.0,
            sapo_temperature_neg=1.05,
            vespo_k_pos=args.pop("vespo_k_pos", 2.0),
            vespo_lambda_pos=args.pop("vespo_lambda_pos", 3.0),
            vespo_k_neg=args.pop("vespo_k_neg", 3.0),
            vespo_lambda_neg=args.pop("vespo_lambda_neg", 2.0),
            steps_per_generation=1,
        ),
    }
    assert not args, args
    for name, value in settings.items():
        setattr(trainer, name, value)
    entropies = torch.zeros_like(logps)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logps, entropies, None)
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long),
        "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum(),
    }
    return trainer._compute_loss(None, inputs)


def prefopt_loss(name, logps, old, advantages, mask, **cfg):
    entry = get_loss(name)
    loss_fn = entry.build(entry.config_cls(**cfg))
    tokens = mask.sum() if loss_fn.cfg.aggregate == "global_token_mean" else None
    return loss_fn(logps, old, advantages, mask, tokens=tokens).loss


def tensors(seed):
    """Log-probs with ratios far enough from 1 to clip, both advantage signs, ragged masks
    (one row with a single token)."""
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(B, T, generator=g) * 3 - 0.1
    old = logps + 0.4 * torch.randn(B, T, generator=g)
    advantages = torch.randn(B, generator=g)
    lengths = torch.tensor([7, 5, 1, 6, 3, 7])
    mask = (torch.arange(T) < lengths[:, None]).float()
    return logps, old, advantages, mask


#: TRL loss_type (and its settings) -> prefopt's loss and config
CASES = {
    "grpo": (("grpo", {}), ("ppo", {"aggregate": "sequence_mean"})),
    "bnpo": (("bnpo", {}), ("ppo", {"aggregate": "token_mean"})),
    "dr_grpo": (("dr_grpo", {}), ("ppo", {"aggregate": "constant", "constant": MAX_LEN})),
    "dapo": (
        ("dapo", {"epsilon_high": 0.28}),
        ("ppo", {"aggregate": "global_token_mean", "clip_high": 0.28}),
    ),
    "two_sided": (("grpo", {"delta": 1.3}), ("ppo", {"aggregate": "sequence_mean", "delta": 1.3})),
    "gspo": (
        ("grpo", {"level": "sequence", "epsilon_low": 3e-4, "epsilon_high": 4e-4}),
        ("gspo", {}),
    ),
    "gspo_wide": (  # a clip range the sequence ratios fall inside and outside of
        ("grpo", {"level": "sequence", "epsilon_low": 0.05, "epsilon_high": 0.1}),
        ("gspo", {"clip": 0.05, "clip_high": 0.1}),
    ),
    # LUSPO: GSPO's sequence ratio, each sequence's loss scaled by its length (a token sum)
    "luspo": (
        ("luspo", {"level": "sequence", "epsilon_low": 0.05, "epsilon_high": 0.1}),
        ("gspo", {"clip": 0.05, "clip_high": 0.1, "aggregate": "constant", "constant": 1.0}),
    ),
    "cispo": (("cispo", {"epsilon_high": 1.2}), ("cispo", {"ratio_max": 1.2})),
    "cispo_default": (("cispo", {"epsilon_high": 5.0}), ("cispo", {})),
    "sapo": (("sapo", {}), ("sapo", {})),
    "vespo": (("vespo", {}), ("vespo", {})),
    # a flatter kernel: seed 1's sequence with W = 6.8 keeps phi 0.26 (0 at TRL's defaults)
    "vespo_wide": (
        ("vespo", {"vespo_k_pos": 0.5, "vespo_lambda_pos": 0.4, "vespo_k_neg": 0.3}),
        ("vespo", {"k_pos": 0.5, "lambda_pos": 0.4, "k_neg": 0.3}),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_and_gradient_equal_trls(case, seed):
    (trl_type, trl_args), (name, cfg) = CASES[case]
    logps, old, advantages, mask = tensors(seed)
    ours_in = logps.clone().requires_grad_(True)
    theirs_in = logps.clone().requires_grad_(True)
    ours = prefopt_loss(name, ours_in, old, advantages, mask, **cfg)
    theirs = trl_loss(trl_type, theirs_in, old, advantages, mask, **dict(trl_args))
    assert_close(ours, theirs)
    ours.backward()
    theirs.backward()
    # TRL's loss has gradient on masked-out positions of its unmasked terms only through
    # the mask's zeros, so the gradients agree everywhere
    assert_close(ours_in.grad, theirs_in.grad)
    assert ours_in.grad.abs().sum() > 0  # the comparison is not of two zeros


def test_the_cases_clip_something():
    """The agreement above exercises the clipped branches: with these tensors some token ratios
    leave [0.8, 1.2] on the side that binds."""
    logps, old, advantages, mask = tensors(0)
    ratio = torch.exp(logps - old)
    a = advantages[:, None]
    binding = ((ratio > 1.2) & (a > 0)) | ((ratio < 0.8) & (a < 0))
    assert (binding & mask.bool()).any()
