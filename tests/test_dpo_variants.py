"""The DPO-family losses beyond DPO itself, against values worked out by hand, and their
settings (f-divergence, LD-DPO, WPO), the mixture and the degenerate cases the papers discuss.

The pair of tests/test_losses.py (beta = 0.1):
  policy  l(y_c) = -10, l(y_r) = -12, n_c = 4, n_r = 2
  ref     l(y_c) = -11, l(y_r) = -11
  u_c = 1, u_r = -1, r_c = beta u_c = 0.1, r_r = -0.1, z = beta (u_c - u_r) = 0.2
  sig(0.1) = 0.524979187, sig(0.2) = 0.549833997
  logsig(0.1) = -0.644396660, logsig(-0.1) = -0.744396660
  logsig(0.2) = -0.598138869, logsig(-0.2) = -0.798138869
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close
from transformers import GPT2Config, GPT2LMHeadModel

from prefopt.data.collate import PackedPairCollator, PreferenceCollator
from prefopt.losses.aot import AOTConfig
from prefopt.losses.base import PairLogps
from prefopt.losses.dpo import DPOConfig, IPOConfig, SimPOConfig
from prefopt.losses.dpo_variants import DiscoPOPConfig, EXOConfig
from prefopt.losses.mix import MixConfig
from prefopt.losses.sft import PairSFTConfig
from prefopt.models.logps import pair_logps, token_logps
from prefopt.registry import get_loss

POLICY = PairLogps(
    torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([4.0]), torch.tensor([2.0])
)
REF = PairLogps(
    torch.tensor([-11.0]), torch.tensor([-11.0]), torch.tensor([4.0]), torch.tensor([2.0])
)


def build(cfg):
    return get_loss(cfg.name).build(cfg)


def pairs(chosen, rejected, ref_chosen, ref_rejected, n_c=None, n_r=None):
    """Policy and reference log-probs of a batch from plain lists."""
    b = len(chosen)
    n_c = torch.tensor(n_c or [4.0] * b)
    n_r = torch.tensor(n_r or [2.0] * b)
    t = torch.tensor
    return PairLogps(t(chosen), t(rejected), n_c, n_r), PairLogps(
        t(ref_chosen), t(ref_rejected), n_c, n_r
    )


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        # eps = 1e-3: sig(z) (logsig(z) - log(1-eps)) + sig(-z) (logsig(-z) - log eps)
        # = 0.549833997 (-0.598138869 + 0.001000500) + 0.450166003 (-0.798138869 + 6.907755279)
        # = -0.328326 + 2.750341 = 2.422015
        (EXOConfig(), 2.422014621),
        # m = sig(0.2 / 0.05) = sig(4) = 0.982013790
        # (1 - m) 0.598138869 + m exp(-0.2) = 0.017986210 * 0.598138869 + 0.982013790 * 0.818730753
        (DiscoPOPConfig(), 0.814763141),
        # beta (u_c/n_c - u_r/n_r) = 0.1 (1/4 + 1/2) = 0.075; -logsig(0.075) = log(1 + e^-0.075)
        (DPOConfig(name="sigmoid_norm"), 0.656350141),
        # -logsig(0.1) - 1/2 logsig(-0.1) - 1/2 logsig(0.1)
        # = 0.644396660 + 0.372198330 + 0.322198330
        (DPOConfig(name="nca_pair"), 1.338793320),
        # -logsig(r_c) - logsig(-r_r) = 2 * 0.644396660
        (DPOConfig(name="bco_pair"), 1.288793320),
        # (u_c - 1/(2 beta))^2 + (u_r + 1/(2 beta))^2 = (1 - 5)^2 + (-1 + 5)^2
        (DPOConfig(name="sppo_hard"), 32.0),
        # 1 - sig(0.1) + sig(-0.1) = 1 - 0.524979187 + 0.475020813
        (DPOConfig(name="apo_zero"), 0.950041625),
        # sig(r_c) + 1 - sig(r_c - r_r) = 0.524979187 + 1 - 0.549833997
        (DPOConfig(name="apo_down"), 0.975145190),
        # one pair: sorting changes nothing, d = (l_c - l_r) - (ref_c - ref_r) = 2, -logsig(0.2)
        (AOTConfig(name="aot"), 0.598138869),
        # one pair: d = u_c - u_r = 2, -logsig(0.2)
        (AOTConfig(name="aot_unpaired"), 0.598138869),
        # the chosen NLL per token: 10 / 4
        (PairSFTConfig(), 2.5),
    ],
)
def test_losses_hand_computed(cfg, expected):
    out = build(cfg)(POLICY, REF)
    assert_close(out.loss, torch.tensor([expected]), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("f_divergence", "expected"),
    [
        # s = 1 - e^-u: s_c = 1 - e^-1 = 0.632120559, s_r = 1 - e = -1.718281828
        # z = 0.1 * 2.350402387; -logsig(0.235040239)
        ("forward_kl", 0.582516713),
        # s = log 2 + logsig(u): s_c - s_r = logsig(1) - logsig(-1) = 1 exactly; -logsig(0.1)
        ("js_divergence", 0.644396660),
        # s = (1 - e^(-alpha u)) / alpha at alpha 0.5: s_c = 2 (1 - e^-0.5) = 0.786938681,
        # s_r = 2 (1 - e^0.5) = -1.297442541; z = 0.1 * 2.084381222; -logsig(0.208438122)
        ("alpha_divergence", 0.594349123),
    ],
)
def test_f_divergences_hand_computed(f_divergence, expected):
    out = build(DPOConfig(f_divergence=f_divergence))(POLICY, REF)
    assert_close(out.loss, torch.tensor([expected]), rtol=0, atol=1e-6)


def test_alpha_divergence_limits_are_reverse_and_forward_kl():
    # f'(t) = (1 - t^-alpha) / alpha -> log t as alpha -> 0; 1 - 1/t at alpha = 1
    dpo = build(DPOConfig())(POLICY, REF).loss
    near_zero = build(DPOConfig(f_divergence="alpha_divergence", f_alpha=1e-4))(POLICY, REF)
    assert_close(near_zero.loss, dpo, rtol=0, atol=1e-4)
    near_one = build(DPOConfig(f_divergence="alpha_divergence", f_alpha=1 - 1e-6))(POLICY, REF)
    forward = build(DPOConfig(f_divergence="forward_kl"))(POLICY, REF)
    assert_close(near_one.loss, forward.loss, rtol=0, atol=1e-5)


def test_ipo_takes_the_f_divergence_scores_per_token():
    # js: s_c = 0.379885494, s_r = -0.620114506; h = s_c/4 - s_r/2 = 0.404028 ; (h - 5)^2
    s_c = math.log(2) - math.log1p(math.exp(-1))
    s_r = math.log(2) - math.log1p(math.exp(1))
    h = s_c / 4 - s_r / 2
    out = build(IPOConfig(f_divergence="js_divergence"))(POLICY, REF)
    assert_close(out.loss, torch.tensor([(h - 5) ** 2]), rtol=0, atol=1e-5)


def test_exo_is_zero_at_its_target_margin_and_dpo_is_not():
    # KL(q || p) = 0 when q = p: sig(z) = 1 - eps, i.e. z = log((1 - eps) / eps) = 6.906755
    eps = 1e-3
    margin = math.log((1 - eps) / eps) / 0.1  # u_c - u_r giving that z at beta 0.1
    policy, ref = pairs([margin], [0.0], [0.0], [0.0])
    assert_close(build(EXOConfig())(policy, ref).loss, torch.tensor([0.0]), rtol=0, atol=1e-6)
    assert build(DPOConfig())(policy, ref).loss.item() > 1e-3  # -logsig(6.9) = 0.001


def test_sppo_hard_is_zero_at_its_targets():
    # u_c = 1/(2 beta) = 5 and u_r = -5: both squares vanish, whatever the margin elsewhere
    policy, ref = pairs([-6.0], [-16.0], [-11.0], [-11.0])
    assert_close(build(DPOConfig(name="sppo_hard"))(policy, ref).loss, torch.tensor([0.0]))


def grads(cfg, policy=POLICY, ref=REF):
    """d loss / d l(y_c), d loss / d l(y_r) of the policy."""
    chosen = policy.chosen.clone().requires_grad_()
    rejected = policy.rejected.clone().requires_grad_()
    logps = PairLogps(chosen, rejected, policy.chosen_tokens, policy.rejected_tokens)
    build(cfg)(logps, ref).loss.sum().backward()
    return chosen.grad.item(), rejected.grad.item()


def test_apo_down_lowers_both_likelihoods_the_rejected_more():
    # d/dl_c = beta (sig'(r_c) - sig'(r_c - r_r)) = 0.1 (0.249376 - 0.247517) = 0.000186 > 0
    # d/dl_r = beta sig'(r_c - r_r) = 0.1 * 0.247517 = 0.024752 > 0
    # gradient descent moves against the gradient: both log-probs fall, the rejected faster
    d_chosen, d_rejected = grads(DPOConfig(name="apo_down"))
    assert d_chosen == pytest.approx(0.000185947, abs=1e-8)
    assert d_rejected == pytest.approx(0.024751657, abs=1e-8)
    # APO-zero raises the chosen one: d/dl_c = -beta sig'(r_c) < 0, d/dl_r = beta sig'(r_r) > 0
    d_chosen, d_rejected = grads(DPOConfig(name="apo_zero"))
    assert d_chosen == pytest.approx(-0.0249376, abs=1e-7)
    assert d_rejected == pytest.approx(0.0249376, abs=1e-7)


def test_apo_down_at_the_reference_moves_only_the_rejected_completion():
    # policy = reference: r_c = r_r = 0, sig'(0) - sig'(0) = 0 for the chosen one
    d_chosen, d_rejected = grads(DPOConfig(name="apo_down"), REF, REF)
    assert d_chosen == 0.0
    assert d_rejected == pytest.approx(0.025, abs=1e-9)  # beta sig'(0) = 0.1 / 4


def test_aot_sorts_within_the_batch():
    # pair A: policy margin l_c - l_r = 2, reference margin 0; pair B: -1 and 3.
    # sorted policy margins [-1, 2], sorted reference margins [0, 3]: d = [-1, -1]
    # each loss -logsig(-0.1) = 0.744396660 (paired, unsorted, they would be -logsig(0.2) =
    # 0.598 and -logsig(-0.4) = 0.913)
    policy, ref = pairs([-10.0, -5.0], [-12.0, -4.0], [-11.0, -1.0], [-11.0, -4.0])
    out = build(AOTConfig(name="aot"))(policy, ref)
    assert_close(out.loss, torch.tensor([0.744396660] * 2), rtol=0, atol=1e-6)
    # pair A alone is plain DPO: its loss depends on the batch it is in
    alone = build(AOTConfig(name="aot"))(*pairs([-10.0], [-12.0], [-11.0], [-11.0]))
    assert_close(alone.loss, torch.tensor([0.598138869]), rtol=0, atol=1e-6)


def test_aot_unpaired_sorts_chosen_and_rejected_log_ratios_apart():
    # u_c = [1, -2], u_r = [3, 0]: sorted [-2, 1] - [0, 3] = [-2, -2]; -logsig(-0.2)
    policy, ref = pairs([1.0, -2.0], [3.0, 0.0], [0.0, 0.0], [0.0, 0.0])
    out = build(AOTConfig(name="aot_unpaired"))(policy, ref)
    assert_close(out.loss, torch.tensor([0.798138869] * 2), rtol=0, atol=1e-6)
    # with label smoothing 0.1: 0.9 * 0.798138869 + 0.1 * 0.598138869
    smoothed = build(AOTConfig(name="aot_unpaired", label_smoothing=0.1))(policy, ref)
    assert_close(smoothed.loss, torch.tensor([0.778138869] * 2), rtol=0, atol=1e-6)


def test_pair_sft_token_mean_is_over_the_batch():
    # chosen NLLs 10 and 2 over 4 and 1 tokens: token mean 12 / 5 = 2.4 (sequence mean 1.25+...)
    policy, _ = pairs([-10.0, -2.0], [-1.0, -1.0], [0.0, 0.0], [0.0, 0.0], n_c=[4.0, 1.0])
    assert_close(build(PairSFTConfig())(policy, None).loss.mean(), torch.tensor(2.4))
    seq = build(PairSFTConfig(reduction="sequence_mean"))(policy, None).loss
    assert_close(seq, torch.tensor([2.5, 2.0]))


def with_summaries(logps, shared, aligned=None):
    return PairLogps(
        logps.chosen,
        logps.rejected,
        logps.chosen_tokens,
        logps.rejected_tokens,
        torch.tensor([shared[0]]),
        torch.tensor([shared[1]]),
        None if aligned is None else torch.tensor([aligned[0]]),
        None if aligned is None else torch.tensor([aligned[1]]),
    )


def test_ld_dpo_down_weights_the_tokens_beyond_the_shared_length():
    # shared length min(4, 2) = 2: policy l_shared(y_c) = -6 (tail -4), l(y_r) all shared
    # reference l_shared(y_c) = -5 (tail -6). ld_alpha = 0.5:
    # policy chosen -6 + 0.5 (-4) = -8; reference chosen -5 + 0.5 (-6) = -8
    # u_c = 0, u_r = -1: z = 0.1; -logsig(0.1) = 0.644396660
    policy = with_summaries(POLICY, (-6.0, -12.0))
    ref = with_summaries(REF, (-5.0, -11.0))
    out = build(DPOConfig(ld_alpha=0.5))(policy, ref)
    assert_close(out.loss, torch.tensor([0.644396660]), rtol=0, atol=1e-6)
    assert_close(out.metrics["rewards/chosen"], torch.tensor([0.0]))
    # ld_alpha 1 is plain DPO
    plain = build(DPOConfig(ld_alpha=1.0))(policy, ref)
    assert_close(plain.loss, build(DPOConfig())(POLICY, REF).loss)


def test_ld_dpo_without_the_shared_summary_refuses():
    with pytest.raises(ValueError, match="shared"):
        build(DPOConfig(ld_alpha=0.5))(POLICY, REF)


def test_wpo_weights_each_pair_by_its_aligned_probabilities():
    # mean aligned log-probs -2/4 and -1/2: w = e^-0.5 e^-0.5 = e^-1 = 0.367879441
    # 0.598138869 * 0.367879441 = 0.220042993
    policy = with_summaries(POLICY, (0.0, 0.0), aligned=(-2.0, -1.0))
    out = build(DPOConfig(wpo_weighting=True))(policy, REF)
    assert_close(out.loss, torch.tensor([0.220042993]), rtol=0, atol=1e-6)
    assert_close(out.metrics["wpo/weights"], torch.tensor([math.exp(-1)]))


def test_settings_a_loss_does_not_take_are_refused_naming_the_key():
    cases = [
        (DPOConfig(name="apo_zero", f_divergence="forward_kl"), "loss.f_divergence"),
        (AOTConfig(name="aot", wpo_weighting=True), "loss.wpo_weighting"),
        (SimPOConfig(ld_alpha=0.5), "loss.ld_alpha"),
        (DPOConfig(name="bco_pair", f_divergence="js_divergence"), "loss.f_divergence"),
    ]
    for cfg, key in cases:
        problems = cfg.validate()
        assert any(p.startswith(key) and "does not support" in p for p in problems), problems
    assert DPOConfig(name="sigmoid_norm", f_divergence="js_divergence").validate() == []
    assert any("loss.ld_alpha" in p for p in DPOConfig(ld_alpha=1.5).validate())
    assert any("loss.label_smoothing" in p for p in EXOConfig(label_smoothing=0.0).validate())


def test_mixture_is_the_weighted_sum_with_metrics_per_part():
    # 0.8 sigmoid + 0.2 bco_pair + 1.0 pair_sft = 0.8 * 0.598138869 + 0.2 * 1.288793320 + 2.5
    mix = build(
        MixConfig(
            parts=[
                {"name": "sigmoid", "weight": 0.8},
                {"name": "bco_pair", "weight": 0.2},
                {"name": "pair_sft"},
            ]
        )
    )
    out = mix(POLICY, REF)
    assert_close(out.loss, torch.tensor([0.478511095 + 0.257758664 + 2.5]), rtol=0, atol=1e-6)
    assert_close(out.metrics["bco_pair/loss"], torch.tensor([1.288793320]))
    assert_close(out.metrics["pair_sft/loss"], torch.tensor([2.5]))
    assert_close(out.metrics["rewards/margins"], torch.tensor([0.2]))  # the first part's
    assert mix.needs_reference


def test_a_mixture_of_reference_free_parts_needs_no_reference():
    mix = build(MixConfig(parts=[{"name": "simpo"}, {"name": "pair_sft", "weight": 0.5}]))
    assert not mix.needs_reference
    # simpo: 2 (-10/4 + 12/2) - 1 = 6, log(1 + e^-6) = 0.002475685; + 0.5 * 2.5
    assert_close(mix(POLICY, None).loss, torch.tensor([1.252475685]), rtol=0, atol=1e-6)


def test_repeated_part_names_get_an_index():
    mix = build(MixConfig(parts=[{"name": "sigmoid"}, {"name": "sigmoid", "beta": 0.2}]))
    out = mix(POLICY, REF)
    # -logsig(0.2) + -logsig(0.4) = 0.598138869 + 0.513015318
    assert_close(out.loss, torch.tensor([1.111154187]), rtol=0, atol=1e-6)
    assert {"sigmoid.0/loss", "sigmoid.1/loss"} <= set(out.metrics)


def tiny_model():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).eval()


def varied_pairs(n: int = 5) -> list[dict]:
    g = torch.Generator().manual_seed(3)

    def ids(k):
        return torch.randint(1, 50, (k,), generator=g).tolist()

    return [
        {"prompt_ids": ids(2 + i), "chosen_ids": ids(1 + 2 * i), "rejected_ids": ids(6 - i)}
        for i in range(n)
    ]


def loop_summaries(model, examples):
    """The shared-length and aligned sums one completion at a time, the obvious way."""
    out: dict[str, list[float]] = {"shared": [], "aligned": []}
    for which in ("chosen_ids", "rejected_ids"):
        for e in examples:
            other = "rejected_ids" if which == "chosen_ids" else "chosen_ids"
            shared = min(len(e[which]), len(e[other]))
            ids = torch.tensor([e["prompt_ids"] + e[which]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            start = len(e["prompt_ids"]) - 1  # the logits that predict the completion
            per_token = token_logps(logits[start:], ids[0, 1 + start :])
            log_sum_sq = torch.logsumexp(2 * logits[start:], -1) - 2 * torch.logsumexp(
                logits[start:], -1
            )
            out["shared"].append(per_token[:shared].sum().item())
            out["aligned"].append((per_token - log_sum_sq).sum().item())
    return {k: torch.tensor(v) for k, v in out.items()}


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_shared_and_aligned_summaries_equal_a_plain_loop(layout):
    model, examples = tiny_model(), varied_pairs()
    collator = PreferenceCollator(0) if layout == "padded" else PackedPairCollator(0, 40)
    with torch.no_grad():
        logps = pair_logps(model, collator(examples), frozenset({"shared", "aligned"}))
        expected = loop_summaries(model, examples)
    b = len(examples)
    assert_close(logps.chosen_shared, expected["shared"][:b], atol=2e-5, rtol=0)
    assert_close(logps.rejected_shared, expected["shared"][b:], atol=2e-5, rtol=0)
    assert_close(logps.chosen_aligned, expected["aligned"][:b], atol=2e-5, rtol=0)
    assert_close(logps.rejected_aligned, expected["aligned"][b:], atol=2e-5, rtol=0)
    # chosen 1, 3, 5, 7, 9 tokens against rejected 6, 5, 4, 3, 2: either side can be shorter
    plain = pair_logps(model, collator(examples))
    assert plain.chosen_shared is None and plain.chosen_aligned is None


def test_a_mixture_typo_fails_at_load_naming_the_part_key():
    from prefopt.config import ConfigError, load_recipe

    parts = (
        "loss.parts=[{name: sigmoid, betta: 0.1}, {name: sft}, {name: nope},"
        " {name: bco_pair, f_divergence: js_divergence}, {name: ipo, weight: -1}]"
    )
    with pytest.raises(ConfigError) as caught:
        load_recipe("mix_internvl", [parts])
    problems = caught.value.problems
    assert any(
        p.startswith("unknown key 'loss.parts.0.betta'; did you mean 'beta'") for p in problems
    )
    assert any(p.startswith("loss.parts.1.name") and "'pair_sft'" in p for p in problems)
    assert any(p.startswith("loss.parts.2.name: unknown loss 'nope'") for p in problems)
    assert any(
        p.startswith("loss.parts.3.f_divergence: loss 'bco_pair' does not") for p in problems
    )
    assert any(p == "loss.parts.4.weight must be > 0, got -1" for p in problems)
    assert len(problems) == 5


def test_the_shipped_mixture_is_internvls():
    from prefopt.config import load_recipe

    recipe = load_recipe("mix_internvl")
    loss = get_loss("mix").build(recipe.loss)
    assert [(w, c.name) for w, c in recipe.loss.part_configs()] == [
        (0.8, "sigmoid"),
        (0.2, "bco_pair"),
        (1.0, "pair_sft"),
    ]
    assert loss.needs_reference and loss.policy_summaries == frozenset()


def test_ld_dpo_with_a_cached_reference_is_refused_at_load():
    from prefopt.config import ConfigError, load_recipe

    with pytest.raises(ConfigError, match="reference.mode: cached .* loss.ld_alpha"):
        load_recipe("ld_dpo", ["reference.mode=cached"])
    load_recipe("wpo", ["reference.mode=cached"])  # WPO's weights need the policy only


@pytest.mark.parametrize(
    ("recipe", "overrides"),
    [
        ("ld_dpo", ["loss.wpo_weighting=true"]),  # both summaries, packed layout
        ("mix_internvl", ["data.layout=padded"]),  # pair_sft's token mean: per micro-batch
    ],
)
def test_gradient_accumulation_with_the_summaries(tmp_path, recipe, overrides):
    """LD-DPO and WPO are per pair: 4 micro-batches of 2 train as one batch of 8. The InternVL
    mixture is not (pair_sft's token mean is over each micro-batch's tokens), so it differs."""
    from prefopt.trainers.preference import PreferenceTrainer
    from tests.conftest import tiny_recipe

    def trained(batch, accum):
        config = tiny_recipe(
            recipe,
            tmp_path / f"{recipe}-{batch}x{accum}",
            "model.name_or_path=null",
            "trainer.max_steps=2",
            f"trainer.batch_size={batch}",
            f"trainer.grad_accum={accum}",
            *overrides,
        )
        trainer = PreferenceTrainer(config, tmp_path / f"{recipe}-{batch}x{accum}")
        trainer.train()
        return {n: p.detach().clone() for n, p in trainer.unwrapped().named_parameters()}

    big, accumulated = trained(8, 1), trained(2, 4)
    differ = [n for n in big if not torch.allclose(big[n], accumulated[n], rtol=1e-5, atol=1e-6)]
    if recipe == "mix_internvl":
        assert differ
    else:
        assert differ == []
