"""prefopt's KTO, ORPO and CPO equal TRL 1.16's on the same models and batches (fp32 rounding).

TRL is a test-time dependency only (the `bench` extra); without it these tests are skipped.

How TRL is driven: each trainer's own loss code runs on a minimally constructed trainer
(``Trainer.__new__`` plus the attributes its loss path reads), so that no dataset preparation,
tokenizer or optimiser is involved and both sides see the same token batch:

* KTO: ``trl.KTOTrainer._compute_loss`` (1.16 has no separate ``kto_loss``; the loss is in this
  method), on two tiny GPT-2 models patched with TRL's own ``add_fused_lm_head`` as its
  constructor does, the reference model run by TRL; prefopt's side is its trainer's
  ``unpaired_logps`` on the same models and its ``UnpairedCollator`` batch (KL rows included).
* ORPO: ``trl.experimental.orpo.ORPOTrainer.get_batch_loss_metrics`` (its forward,
  ``odds_ratio_loss`` and metrics). TRL's NLL term covers the prompt tokens too; prefopt's, as
  the paper's ``L_SFT``, the completion only, so the comparison is of ``loss - nll_loss``, the
  odds-ratio part, and of its metrics (docs/algorithms/orpo.md).
* CPO: ``trl.experimental.cpo.CPOTrainer.get_batch_loss_metrics`` for every ``loss_type``
  (sigmoid, hinge, ipo, simpo, and alphapo as TRL spells it), the full loss, NLL included: the
  chosen completions have equal lengths, where TRL's batch token mean of the NLL equals
  prefopt's per-example one.

BCO: TRL 1.16 ships no BCOTrainer (neither in ``trl`` nor in ``trl.experimental``), so there is
nothing of TRL's to run; tests/test_unpaired_losses.py checks BCO against a plain-loop port of
the last BCOTrainer's running mean (RunningMoments) instead.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from prefopt.data import PreferenceCollator, UnpairedCollator
from prefopt.losses.base import PairLogps
from prefopt.losses.cpo import CPOConfig
from prefopt.losses.kto import KTOConfig
from prefopt.losses.orpo import ORPOConfig
from prefopt.losses.unpaired import UnpairedLogps
from prefopt.models.logps import padded_pair_logps, unpaired_logps
from prefopt.registry import get_loss

trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")

PAD = 0


def tiny_gpt2(seed: int):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=48,
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0  # train() is deterministic
    return transformers.GPT2LMHeadModel(config).eval()


def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def bare(cls, **attributes):
    """A trainer object without its constructor: only the attributes its loss path reads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = cls.__new__(cls)
    for name, value in attributes.items():
        setattr(trainer, name, value)
    return trainer


# --------------------------------------------------------------------------- KTO

UNPAIRED = [  # prompt ids, completion ids, desirable
    ([5, 6, 7], [10, 11, 12, 13], True),
    ([8, 9], [14, 15], False),
    ([5, 9, 7, 6], [16], True),
    ([7], [17, 18, 19, 20, 21], False),
    ([6, 8], [22, 23, 24], True),
    ([9, 9, 5], [25, 26], False),
]


@pytest.mark.parametrize(("desirable_weight", "undesirable_weight"), [(1.0, 1.0), (1.33, 0.8)])
def test_kto_equals_trls_kto_trainer(desirable_weight, undesirable_weight):
    from trl import KTOTrainer
    from trl.trainer.utils import add_fused_lm_head

    policy, reference = tiny_gpt2(0), tiny_gpt2(1)
    examples = [{"prompt_ids": p, "completion_ids": c, "desirable": d} for p, c, d in UNPAIRED]
    batch = UnpairedCollator(pad_token_id=PAD, max_length=16, mismatched=True)(examples)
    b = len(examples)

    cfg = KTOConfig(
        beta=0.1, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight
    )
    with torch.no_grad():
        ours = get_loss("kto").build(cfg)(
            unpaired_logps(policy, batch), unpaired_logps(reference, batch), batch["desirable"]
        )

    add_fused_lm_head(policy, outputs=("log_probs", "entropy", "mean_logits"))
    add_fused_lm_head(reference)
    trainer = bare(
        KTOTrainer,
        model=policy,
        ref_model=reference,
        accelerator=accelerator(),
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        loss_type="kto",
        beta=0.1,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
        calculate_KL=True,
        precompute_ref_logps=False,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": batch["input_ids"][:b],
        "attention_mask": batch["attention_mask"][:b],
        "completion_mask": batch["completion_mask"][:b],
        "KL_input_ids": batch["input_ids"][b:],
        "KL_attention_mask": batch["attention_mask"][b:],
        "KL_completion_mask": batch["completion_mask"][b:],
        "label": batch["desirable"],
    }
    policy.train()  # TRL reads model.training for its metric split (no dropout: see tiny_gpt2)
    with torch.no_grad():
        theirs = trainer._compute_loss(policy, inputs, return_outputs=False)
    metrics = trainer._metrics["train"]
    assert_close(ours.loss.mean(), theirs)
    assert_close(ours.metrics["z0"], torch.tensor(metrics["kl"][-1]))
    assert ours.metrics["z0"] > 0  # the reference point is in play, not clamped away
    for name in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert_close(ours.metrics[name], torch.tensor(metrics[name][-1]))


# --------------------------------------------------------------------------- ORPO and CPO

PAIRS = [  # prompt ids, chosen ids, rejected ids (chosen of equal length: see the docstring)
    ([5, 6, 7], [10, 11, 12], [13, 14]),
    ([8, 9], [15, 16, 17], [18, 19, 20, 21, 22]),
    ([5, 9, 7, 6], [23, 24, 25], [26]),
    ([7], [27, 28, 29], [30, 31, 32]),
]


def pair_batch() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """prefopt's padded pair batch, and the same rows in TRL's chosen_*/rejected_* keys (labels:
    the completion tokens, -100 elsewhere)."""
    examples = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in PAIRS]
    batch = PreferenceCollator(pad_token_id=PAD)(examples)
    b = len(examples)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    theirs = {}
    for side, rows in (("chosen", slice(0, b)), ("rejected", slice(b, 2 * b))):
        theirs[f"{side}_input_ids"] = batch["input_ids"][rows]
        theirs[f"{side}_attention_mask"] = batch["attention_mask"][rows]
        theirs[f"{side}_labels"] = labels[rows]
    return batch, theirs


def trl_pair_loss(cls, model, batch, **attributes):
    """``(loss, metrics)`` of TRL's ``get_batch_loss_metrics`` of a bare ORPO or CPO trainer."""
    trainer = bare(
        cls,
        accelerator=accelerator(),
        is_encoder_decoder=False,
        aux_loss_enabled=False,
        **attributes,
    )
    with torch.no_grad():
        return trainer.get_batch_loss_metrics(model, batch)


def prefopt_pair_loss(cfg, model, batch):
    with torch.no_grad():
        policy: PairLogps = padded_pair_logps(model, batch)
        return get_loss(cfg.name).build(cfg)(policy, None)


def test_orpo_odds_ratio_term_equals_trls_orpo_trainer():
    from trl.experimental.orpo import ORPOTrainer

    model = tiny_gpt2(2)
    batch, theirs_batch = pair_batch()
    ours = prefopt_pair_loss(ORPOConfig(beta=0.1, nll_alpha=0.0), model, batch)
    loss, metrics = trl_pair_loss(ORPOTrainer, model, theirs_batch, beta=0.1, padding_value=PAD)
    assert_close(ours.loss.mean(), loss - metrics["nll_loss"])
    assert_close(ours.metrics["log_odds_ratio"].mean(), torch.tensor(metrics["log_odds_ratio"]))
    assert_close(ours.metrics["log_odds_chosen"].mean(), torch.tensor(metrics["log_odds_chosen"]))
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert_close(ours.metrics[name].mean(), torch.tensor(metrics[name]))


@pytest.mark.parametrize(
    ("trl_settings", "ours"),
    [
        ({"loss_type": "sigmoid"}, CPOConfig()),
        ({"loss_type": "sigmoid", "label_smoothing": 0.1}, CPOConfig(label_smoothing=0.1)),
        ({"loss_type": "hinge"}, CPOConfig(variant="hinge")),
        ({"loss_type": "ipo"}, CPOConfig(variant="ipo")),
        ({"loss_type": "simpo", "simpo_gamma": 0.5}, CPOConfig(variant="simpo", gamma=0.5)),
        # TRL's alphapo: simpo, cpo_alpha 0, alpha
        (
            {"loss_type": "simpo", "simpo_gamma": 0.5, "cpo_alpha": 0.0, "alpha": 0.3},
            CPOConfig(variant="simpo", gamma=0.5, nll_alpha=0.0, alpha=0.3),
        ),
    ],
)
def test_cpo_equals_trls_cpo_trainer(trl_settings, ours):
    from trl.experimental.cpo import CPOTrainer

    model = tiny_gpt2(3)
    batch, theirs_batch = pair_batch()
    settings = {"beta": 0.1, "label_smoothing": 0.0, "cpo_alpha": 1.0, "alpha": 0.0, **trl_settings}
    loss, metrics = trl_pair_loss(CPOTrainer, model, theirs_batch, pad_token_id=PAD, **settings)
    mine = prefopt_pair_loss(ours, model, batch)
    assert_close(mine.loss.mean(), loss)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies"):
        assert_close(mine.metrics[name].mean(), torch.tensor(metrics[name]))


def test_unpaired_logps_match_the_plain_rows():
    """The mismatched rows' log-probs are those of prompt i with completion i-1, row by row."""
    model = tiny_gpt2(4)
    examples = [{"prompt_ids": p, "completion_ids": c, "desirable": d} for p, c, d in UNPAIRED]
    batch = UnpairedCollator(pad_token_id=PAD, max_length=16, mismatched=True)(examples)
    with torch.no_grad():
        logps: UnpairedLogps = unpaired_logps(model, batch)
        shifted = [
            {
                "prompt_ids": e["prompt_ids"],
                "completion_ids": examples[i - 1]["completion_ids"],
                "desirable": True,
            }
            for i, e in enumerate(examples)
        ]
        plain = unpaired_logps(model, UnpairedCollator(PAD, 16, mismatched=False)(shifted))
    assert logps.mismatched is not None
    assert_close(logps.mismatched, plain.completion)
