"""prefopt's pairwise losses equal TRL 1.16's on the same model and batch, to fp32 rounding.

TRL's own code computes its side: ``DPOTrainer._compute_loss`` (the method that holds all its
loss types, f-divergences, LD-DPO and WPO) runs on a tiny GPT-2 policy and reference patched
with TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``, as its trainer does), on a
padded batch of four pairs. Only ``DPOTrainer.__init__`` is skipped (it tokenizes a dataset,
builds an accelerator and optimiser): the trainer object is made with ``object.__new__`` and
given the attributes ``_compute_loss`` reads, on one process. prefopt's side is its own
``pair_logps`` (both layouts) and registered loss on the same models and pairs.

Every one of TRL's 15 ``loss_type`` values is compared, the InternVL MPO mixture, three
f-divergences, LD-DPO and WPO. TRL is a test-time dependency (the ``bench`` extra that
``make install`` installs); prefopt itself never imports it. A few seconds on CPU.
"""

from __future__ import annotations

import re
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch.testing import assert_close
from transformers import GPT2Config, GPT2LMHeadModel
from trl import DPOTrainer
from trl.trainer.utils import add_fused_lm_head

from prefopt.data.collate import PackedPairCollator, PreferenceCollator
from prefopt.losses.base import PairLogps
from prefopt.models.logps import pair_logps
from prefopt.registry import get_loss

PAD = 0
TRL_DEFAULTS: dict[str, Any] = {
    "beta": 0.1,
    "loss_weights": None,
    "ld_alpha": None,
    "f_divergence_type": "reverse_kl",
    "f_alpha_divergence_coef": 0.5,
    "label_smoothing": 0.0,
    "use_weighting": False,
    "discopop_tau": 0.05,
}

# (case, TRL's settings, prefopt's loss section): TRL's label_smoothing is 0 by default; its
# robust and exo_pair cases take the papers' eps (0.1 and 1e-3), prefopt's defaults for them
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("sigmoid", {"loss_type": ["sigmoid"]}, {"name": "sigmoid"}),
    ("hinge", {"loss_type": ["hinge"]}, {"name": "hinge"}),
    ("ipo", {"loss_type": ["ipo"]}, {"name": "ipo"}),
    (
        "exo_pair",
        {"loss_type": ["exo_pair"], "label_smoothing": 1e-3},
        {"name": "exo_pair", "label_smoothing": 1e-3},
    ),
    ("nca_pair", {"loss_type": ["nca_pair"]}, {"name": "nca_pair"}),
    (
        "robust",
        {"loss_type": ["robust"], "label_smoothing": 0.1},
        {"name": "robust", "label_smoothing": 0.1},
    ),
    ("bco_pair", {"loss_type": ["bco_pair"]}, {"name": "bco_pair"}),
    ("sppo_hard", {"loss_type": ["sppo_hard"]}, {"name": "sppo_hard"}),
    ("aot", {"loss_type": ["aot"]}, {"name": "aot"}),
    ("aot_unpaired", {"loss_type": ["aot_unpaired"]}, {"name": "aot_unpaired"}),
    (
        "aot smoothed",
        {"loss_type": ["aot"], "label_smoothing": 0.2},
        {"name": "aot", "label_smoothing": 0.2},
    ),
    ("apo_zero", {"loss_type": ["apo_zero"]}, {"name": "apo_zero"}),
    ("apo_down", {"loss_type": ["apo_down"]}, {"name": "apo_down"}),
    ("discopop", {"loss_type": ["discopop"]}, {"name": "discopop"}),
    ("sft", {"loss_type": ["sft"]}, {"name": "pair_sft"}),
    ("sigmoid_norm", {"loss_type": ["sigmoid_norm"]}, {"name": "sigmoid_norm"}),
    (
        "InternVL MPO mixture",
        {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
        {
            "name": "mix",
            "parts": [
                {"name": "sigmoid", "weight": 0.8},
                {"name": "bco_pair", "weight": 0.2},
                {"name": "pair_sft", "weight": 1.0},
            ],
        },
    ),
    (
        "forward KL, sigmoid",
        {"loss_type": ["sigmoid"], "f_divergence_type": "forward_kl"},
        {"name": "sigmoid", "f_divergence": "forward_kl"},
    ),
    (
        "JS, ipo",
        {"loss_type": ["ipo"], "f_divergence_type": "js_divergence"},
        {"name": "ipo", "f_divergence": "js_divergence"},
    ),
    (
        # TRL's coefficient is 1 - the f-DPO paper's alpha (prefopt's f_alpha)
        "alpha-divergence, sigmoid_norm",
        {
            "loss_type": ["sigmoid_norm"],
            "f_divergence_type": "alpha_divergence",
            "f_alpha_divergence_coef": 0.3,
        },
        {"name": "sigmoid_norm", "f_divergence": "alpha_divergence", "f_alpha": 0.7},
    ),
    ("LD-DPO", {"loss_type": ["sigmoid"], "ld_alpha": 0.4}, {"name": "sigmoid", "ld_alpha": 0.4}),
    (
        "LD-DPO, apo_down",
        {"loss_type": ["apo_down"], "ld_alpha": 0.0},
        {"name": "apo_down", "ld_alpha": 0.0},
    ),
    (
        "WPO",
        {"loss_type": ["sigmoid"], "use_weighting": True},
        {"name": "sigmoid", "wpo_weighting": True},
    ),
    (
        "WPO, nca_pair",
        {"loss_type": ["nca_pair"], "use_weighting": True},
        {"name": "nca_pair", "wpo_weighting": True},
    ),
]


def tiny_lm(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    # larger weights than GPT-2's init, so that policy and reference differ clearly
    config.initializer_range = 0.3
    return GPT2LMHeadModel(config).eval()


def examples() -> list[dict[str, Any]]:
    """Four pairs; the chosen completion shorter than the rejected one, longer, or as long
    (LD-DPO's split); the policy's margins sort in another order than the reference's (AOT)."""
    g = torch.Generator().manual_seed(1)

    def ids(k: int) -> list[int]:
        return torch.randint(1, 64, (k,), generator=g).tolist()

    lengths = [(3, 4, 6), (5, 7, 5), (2, 5, 5), (4, 3, 4)]
    return [
        {"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)} for p, c, r in lengths
    ]


@pytest.fixture(scope="module")
def models() -> tuple[GPT2LMHeadModel, GPT2LMHeadModel]:
    policy, reference = tiny_lm(0), tiny_lm(1)
    # TRL's heads; without fused_lm_head=True the forward is the original one (prefopt's side)
    add_fused_lm_head(
        policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")
    )
    add_fused_lm_head(reference)
    return policy, reference


def trl_loss(policy, reference, batch: dict[str, torch.Tensor], settings: dict[str, Any]) -> float:
    """TRL 1.16's loss through ``DPOTrainer._compute_loss`` on one process."""
    return trl_loss_and_metrics(policy, reference, batch, settings)[0]


def trl_loss_and_metrics(
    policy, reference, batch: dict[str, torch.Tensor], settings: dict[str, Any]
) -> tuple[float, dict[str, float]]:
    """TRL's loss and the metrics it logged for that batch (``rewards/*``, ``logps/*``)."""
    args = {**TRL_DEFAULTS, **settings}
    trainer = object.__new__(DPOTrainer)
    identity = lambda x: x  # noqa: E731  (one process: gathering is the identity)
    trainer.__dict__.update(
        model=policy,
        ref_model=reference,
        accelerator=SimpleNamespace(
            device=torch.device("cpu"), gather=identity, gather_for_metrics=identity
        ),
        args=SimpleNamespace(discopop_tau=args["discopop_tau"], gradient_checkpointing_kwargs=None),
        beta=args["beta"],
        loss_types=args["loss_type"],
        loss_weights=args["loss_weights"] or [1.0] * len(args["loss_type"]),
        ld_alpha=args["ld_alpha"],
        f_divergence_type=args["f_divergence_type"],
        f_alpha_divergence_coef=args["f_alpha_divergence_coef"],
        label_smoothing=args["label_smoothing"],
        use_weighting=args["use_weighting"],
        precompute_ref_logps=False,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    with torch.no_grad():
        loss = float(trainer._compute_loss(policy, inputs, return_outputs=False))
    mode = "train" if policy.training else "eval"  # where TRL files them
    return loss, {k: v[-1] for k, v in trainer._metrics[mode].items()}


def prefopt_loss(policy, reference, batch: dict[str, torch.Tensor], section: dict[str, Any]):
    entry = get_loss(section["name"])
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(entry.config_cls), section))
    assert config.validate() == [], config.validate()
    loss = entry.build(config)
    with torch.no_grad():
        ref: PairLogps | None = None
        if loss.needs_reference:
            ref = pair_logps(reference, batch, loss.reference_summaries)
        out = loss(pair_logps(policy, batch, loss.policy_summaries), ref, batch)
    return out.loss.mean(), {k: v.mean().item() for k, v in out.metrics.items()}


@pytest.mark.parametrize(("case", "trl_settings", "section"), CASES, ids=[c[0] for c in CASES])
def test_prefopt_loss_equals_trl(models, case, trl_settings, section):
    policy, reference = models
    pairs = examples()
    batch = PreferenceCollator(PAD)(pairs)
    expected, trl_metrics = trl_loss_and_metrics(policy, reference, batch, trl_settings)
    for collator in (PreferenceCollator(PAD), PackedPairCollator(PAD, row_length=24)):
        found, metrics = prefopt_loss(policy, reference, collator(pairs), section)
        assert_close(found, torch.tensor(expected), rtol=1e-5, atol=1e-5)
        # the logged implicit rewards (LD-weighted under ld_alpha, as TRL's) and log-probs;
        # pair_sft logs no rewards
        names = ["rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen"]
        for name in [n for n in names if n in metrics]:
            assert metrics[name] == pytest.approx(trl_metrics[name], rel=1e-5, abs=1e-5), name


def test_the_comparison_is_not_trivial(models):
    """The cases differ from each other: the models and pairs make every loss move."""
    policy, reference = models
    batch = PreferenceCollator(PAD)(examples())
    values = {case: trl_loss(policy, reference, batch, s) for case, s, _ in CASES}
    assert len({round(v, 4) for v in values.values()}) == len(values), values
    logps = pair_logps(policy, batch)
    ref = pair_logps(reference, batch)
    # the implicit-reward margins are far from 0 (DPO's loss is not log 2), and AOT's sorting
    # pairs other margins than DPO's
    margins, ref_margins = logps.chosen - logps.rejected, ref.chosen - ref.rejected
    assert (margins - ref_margins).abs().min() > 0.5
    assert margins.argsort().tolist() != ref_margins.argsort().tolist()


def test_every_trl_loss_type_is_compared():
    from trl import DPOConfig as TRLDPOConfig

    doc = TRLDPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    compared = {t for _, s, _ in CASES for t in s["loss_type"]}
    listed = set(re.findall(r"`'(\w+)'`", doc))
    assert compared == listed == {
        "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
        "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
    }  # fmt: skip
