"""Evaluation metrics: calibration (ECE), n-gram diversity (distinct-n, EAD) and RETA."""

import csv
import math

import pytest
import torch
from torch.testing import assert_close

from prefopt.eval.calibration import expected_calibration_error
from prefopt.eval.diversity import (
    across_input_diversity,
    distinct_n,
    ead,
    ead_mean,
    ngram_stats,
    per_input_diversity,
)
from prefopt.eval.reta import default_etas, reta, reta_curve, reta_loop

# ------------------------------------------------------------------------------------ ECE

ECE_PROBS = torch.tensor([0.92, 0.83, 0.27, 0.66, 0.5, 0.97, 0.14])
ECE_LABELS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])


def test_ece_hand_computed():
    """Symmetrised: confidence max(p, 1-p), accuracy y if p > .5, 1-y if p < .5, .5 at p = .5.

    pair  p     y  conf  acc  bin
    1     0.92  1  0.92  1    (0.9, 1]
    2     0.83  0  0.83  0    (0.8, 0.9]
    3     0.27  0  0.73  1    (0.7, 0.8]
    4     0.66  1  0.66  1    (0.6, 0.7]
    5     0.50  1  0.50  0.5  (0.4, 0.5]
    6     0.97  1  0.97  1    (0.9, 1]
    7     0.14  1  0.86  0    (0.8, 0.9]

    (0.9, 1]:   2 pairs, conf 0.945, acc 1 -> 2/7 * 0.055
    (0.8, 0.9]: 2 pairs, conf 0.845, acc 0 -> 2/7 * 0.845
    (0.7, 0.8]: 1 pair,  |1 - 0.73| = 0.27 -> 1/7 * 0.27
    (0.6, 0.7]: 1 pair,  |1 - 0.66| = 0.34 -> 1/7 * 0.34
    (0.4, 0.5]: 1 pair,  |0.5 - 0.5| = 0
    ECE = (0.11 + 1.69 + 0.27 + 0.34) / 7 = 2.41 / 7 = 0.344285714
    One bin: |mean acc - mean conf| = |4.5 - 5.47| / 7 = 0.97 / 7 = 0.138571429
    """
    assert expected_calibration_error(ECE_PROBS, ECE_LABELS) == pytest.approx(2.41 / 7, abs=1e-7)
    assert expected_calibration_error(ECE_PROBS, ECE_LABELS, n_bins=1) == pytest.approx(
        0.97 / 7, abs=1e-7
    )


def test_ece_is_invariant_to_swapping_pairs():
    swapped = expected_calibration_error(1 - ECE_PROBS, 1 - ECE_LABELS)
    assert swapped == pytest.approx(expected_calibration_error(ECE_PROBS, ECE_LABELS), abs=1e-7)


def test_ece_zero_for_calibrated_and_large_for_overconfident():
    """p = 0.8 on 5 pairs of which 4 have the first preferred: acc 0.8 = conf 0.8."""
    probs = torch.full((5,), 0.8, dtype=torch.float64)
    labels = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    # confident (0.99) and right half of the time: |0.5 - 0.99| = 0.49
    overconfident = torch.full((4,), 0.99)
    assert expected_calibration_error(overconfident, torch.tensor([1.0, 0.0, 1.0, 0.0])) == (
        pytest.approx(0.49, abs=1e-6)
    )


def test_ece_rejects_bad_input():
    with pytest.raises(ValueError):
        expected_calibration_error(torch.tensor([]), torch.tensor([]))
    with pytest.raises(ValueError):
        expected_calibration_error(torch.tensor([1.2]), torch.tensor([1.0]))


# ------------------------------------------------------------------------------ diversity

TEXTS = ["the cat sat", "the cat ran", ""]


def test_distinct_n_hand_computed():
    """Unigrams: the cat sat the cat ran -> 4 distinct / 6.
    Bigrams: (the cat) (cat sat) (the cat) (cat ran) -> 3 / 4.
    Trigrams: (the cat sat) (the cat ran) -> 2 / 2. No 4-grams -> 0.0 (defined, not NaN).
    N-grams never cross texts: "sat the" is not a bigram."""
    assert ngram_stats(TEXTS, 1) == (4, 6)
    assert distinct_n(TEXTS, 1) == 4 / 6
    assert distinct_n(TEXTS, 2) == 3 / 4
    assert distinct_n(TEXTS, 3) == 1.0
    assert distinct_n(TEXTS, 4) == 0.0
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["", "   "], 1) == 0.0


def test_ead_hand_computed():
    """V = 4, EAD_n = distinct / (V (1 - (3/4)^C)):
    n=1: C=6: 4 (1 - 729/4096) = 3367/1024 -> 4 / (3367/1024) = 4096/3367 = 1.216513...
    n=2: C=4: 4 (1 - 81/256) = 700/256 -> 3 / (700/256) = 768/700 = 1.097142857
    n=3: C=2: 4 (1 - 9/16) = 7/4 -> 2 / (7/4) = 8/7
    'power' (V = 4^n), n=2: V=16, C=4: 16 (1 - (15/16)^4) = 14911/4096 -> 12288/14911
    """
    assert ead(TEXTS, 1, 4) == pytest.approx(4096 / 3367, rel=1e-12)
    assert ead(TEXTS, 2, 4) == pytest.approx(768 / 700, rel=1e-12)
    assert ead(TEXTS, 3, 4) == pytest.approx(8 / 7, rel=1e-12)
    assert ead(TEXTS, 4, 4) == 0.0
    assert ead(TEXTS, 2, 4, ngram_space="power") == pytest.approx(12288 / 14911, rel=1e-12)
    assert ead(TEXTS, 1, 4, ngram_space="power") == ead(TEXTS, 1, 4)
    assert ead_mean(TEXTS, 4, max_n=3) == pytest.approx(
        (4096 / 3367 + 768 / 700 + 8 / 7) / 3, rel=1e-12
    )
    # no 4- or 5-grams: those orders are undefined and left out of the mean, not counted 0
    assert ead_mean(TEXTS, 4, max_n=5) == pytest.approx(
        (4096 / 3367 + 768 / 700 + 8 / 7) / 3, rel=1e-12
    )


def test_ead_edge_cases():
    """V = 1: the expected distinct count of C >= 1 draws is 1. Huge V (vocab ** 5 with
    GPT-2's 50,257) must not divide by zero: EAD -> distinct-n as V >> C."""
    assert ead(["a a a"], 1, 1) == 1.0
    assert ead([], 1, 100) == 0.0
    texts = ["a b c d e f g", "a b c d e f h"]
    big = ead(texts, 5, 50257, ngram_space="power")
    assert math.isfinite(big)
    assert big == pytest.approx(distinct_n(texts, 5), rel=1e-12)
    assert ead(texts, 1, 10**12) == pytest.approx(distinct_n(texts, 1), rel=1e-9)
    with pytest.raises(ValueError):
        ead(texts, 1, 10, ngram_space="bogus")  # type: ignore[arg-type]


SAMPLES = [["a b", "a b"], ["a b c", "d e f"]]


def test_per_input_and_across_input_diversity():
    """Per input (max_n = 2, V = 10):
      prompt 0: unigrams a b a b -> 2/4; bigrams (a b) (a b) -> 1/2
      prompt 1: 6 distinct / 6 unigrams; bigrams (a b) (b c) (d e) (e f) -> 4/4
      distinct_1 = (0.5 + 1) / 2 = 0.75, distinct_2 = 0.75
      EAD: 10 (1 - 0.9^C) = 3.439 (C=4), 1.9 (C=2), 4.68559 (C=6)
      prompt 0: (2/3.439 + 1/1.9) / 2, prompt 1: (6/4.68559 + 4/3.439) / 2
    Across input (first samples "a b", "a b c"):
      unigrams a b a b c -> 3/5; bigrams (a b) (a b) (b c) -> 2/3
      EAD: (3 / 4.0951 + 2 / 2.71) / 2   [10 (1 - 0.9^5) = 4.0951, 10 (1 - 0.9^3) = 2.71]
    """
    per = per_input_diversity(SAMPLES, vocab_size=10, max_n=2)
    assert set(per) == {"distinct_1", "distinct_2", "distinct_mean", "ead"}
    assert per["distinct_1"] == pytest.approx(0.75)
    assert per["distinct_2"] == pytest.approx(0.75)
    assert per["distinct_mean"] == pytest.approx(0.75)
    ead_0 = (2 / 3.439 + 1 / 1.9) / 2
    ead_1 = (6 / 4.68559 + 4 / 3.439) / 2
    assert per["ead"] == pytest.approx((ead_0 + ead_1) / 2, rel=1e-12)

    across = across_input_diversity(SAMPLES, vocab_size=10, max_n=2)
    assert across["distinct_1"] == pytest.approx(3 / 5)
    assert across["distinct_2"] == pytest.approx(2 / 3)
    assert across["ead"] == pytest.approx((3 / 4.0951 + 2 / 2.71) / 2, rel=1e-12)


def test_diversity_of_empty_completions_is_zero_not_nan():
    per = per_input_diversity([["", ""], ["x y z", "x y w"]], vocab_size=50257)
    assert all(math.isfinite(v) for v in per.values())
    # prompt 0 contributes 0.0: distinct_1 = (0 + 4/6) / 2
    assert per["distinct_1"] == pytest.approx((0 + 4 / 6) / 2)
    assert per_input_diversity([[""]], vocab_size=10)["ead"] == 0.0
    with pytest.raises(ValueError):
        per_input_diversity([[]], vocab_size=10)


# ----------------------------------------------------------------------------------- RETA


def _f64(values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize(("q", "n"), [(1, 1), (1, 7), (5, 3), (13, 64), (200, 17)])
def test_reta_at_one_is_exactly_one(q, n):
    generator = torch.Generator().manual_seed(q * 100 + n)
    scores = torch.randn(q, n, generator=generator)
    oracle = torch.rand(q, n, generator=generator, dtype=torch.float64) * 1e3 + 1e-3
    assert reta(scores, oracle, 1.0) == 1.0
    curve = reta_curve(scores, oracle, subset_size=max(1, n - 1), n_resamples=7)
    assert curve.etas[-1] == 1.0
    assert curve.mean[-1] == 1.0
    assert curve.std[-1] == 0.0


def test_reta_hand_computed():
    """Prompt 0: scores [0.1, 0.9, 0.5, 0.3], J = [1, 2, 3, 4]; RM order J = 2, 3, 4, 1; mean 2.5
      eta 0.25 (k=1): 2 / 2.5 = 0.8;  eta 0.5 (k=2): 2.5 / 2.5 = 1;  eta 0.75 (k=3): 3 / 2.5 = 1.2
    Prompt 1: a perfect RM on J = [1, 2, 3, 4]: eta 0.25: 4 / 2.5 = 1.6; eta 0.5: 3.5 / 2.5 = 1.4
    RETA = mean over prompts: (0.8 + 1.6) / 2 = 1.2 and (1 + 1.4) / 2 = 1.2
    """
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [1.0, 2.0, 3.0, 4.0]])
    oracle = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    assert reta(scores[:1], oracle[:1], 0.25) == pytest.approx(0.8)
    assert reta(scores[:1], oracle[:1], 0.5) == pytest.approx(1.0)
    assert reta(scores[:1], oracle[:1], 0.75) == pytest.approx(1.2)
    assert reta(scores, oracle, 0.25) == pytest.approx(1.2)
    assert reta(scores, oracle, 0.5) == pytest.approx(1.2)


def test_reta_top_k_is_robust_to_float_error_and_ties_break_by_index():
    """eta = 7/25, N = 25: (7/25) * 25 = 7.000000000000001 in floating point, but k must be 7.
    A perfect RM on J = 1..25: top 7 = 25..19, mean 22; mean of all 13 -> 22/13 (k = 8 would
    give 21.5/13). Likewise eta = 0.1 * 3 = 0.30000000000000004 on N = 10 keeps k = 3:
    top 3 of 1..10 = 10, 9, 8 -> 9 / 5.5.
    Ties: scores [1, 1, 0], J = [1, 3, 2]: the earlier response wins the tie -> 1 / 2."""
    assert (7 / 25) * 25 > 7 and 0.1 * 3 * 10 > 3  # the traps are real
    values = torch.arange(1.0, 26.0).unsqueeze(0)
    assert reta(values, values, 7 / 25) == pytest.approx(22 / 13)
    values = torch.arange(1.0, 11.0).unsqueeze(0)
    assert reta(values, values, 0.1 * 3) == pytest.approx(9 / 5.5)
    assert reta(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[1.0, 3.0, 2.0]]), 1 / 3) == 0.5
    assert reta(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[3.0, 1.0, 2.0]]), 1 / 3) == 1.5


@pytest.mark.parametrize(
    ("subset_size", "etas"), [(5, None), (9, [0.1, 0.35, 0.5, 1.0]), (1, None)]
)
def test_vectorised_reta_curve_equals_the_loop(subset_size, etas):
    generator = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 4, (7, 9), generator=generator).float()  # many ties
    oracle = torch.rand(7, 9, generator=generator) + 0.1
    fast = reta_curve(scores, oracle, etas=etas, subset_size=subset_size, n_resamples=20, seed=5)
    slow = reta_loop(scores, oracle, etas=etas, subset_size=subset_size, n_resamples=20, seed=5)
    assert fast.etas == slow.etas
    assert_close(_f64(fast.mean), _f64(slow.mean), rtol=1e-12, atol=1e-12)
    assert_close(_f64(fast.std), _f64(slow.std), rtol=1e-9, atol=1e-12)
    assert fast.best_eta == slow.best_eta
    full = reta_curve(scores, oracle, etas=[0.2, 0.5], subset_size=9)
    assert full.n_resamples == 1 and full.std == [0.0, 0.0]
    assert full.mean[0] == pytest.approx(reta(scores, oracle, 0.2), abs=1e-12)


def _synthetic_oracle(q=200, n=20, seed=0):
    generator = torch.Generator().manual_seed(seed)
    oracle = torch.rand(q, n, generator=generator, dtype=torch.float64) + 0.05
    noise = torch.randn(q, n, generator=generator, dtype=torch.float64)
    return oracle, noise


def test_reta_orders_perfect_random_and_anticorrelated_rms():
    oracle, noise = _synthetic_oracle()
    perfect = reta(oracle, oracle, 0.1)
    random_rm = reta(noise, oracle, 0.1)
    anti = reta(-oracle, oracle, 0.1)
    assert perfect > 1.5
    assert 0.85 < random_rm < 1.15
    assert anti < 0.3
    assert perfect > random_rm > anti


def test_reta_curves_ordered_by_rm_noise_at_small_eta():
    oracle, noise = _synthetic_oracle()
    curves = [
        reta_curve(oracle + sigma * noise, oracle, subset_size=10, n_resamples=50)
        for sigma in (1.0, 0.3, 0.05)
    ]
    assert curves[0].etas[:3] == [0.1, 0.2, 0.3]
    for e in range(3):  # eta = 0.1, 0.2, 0.3
        noisy, medium, clean = (c.mean[e] for c in curves)
        assert noisy < medium < clean
    assert all(s >= 0 for c in curves for s in c.std)
    assert curves[2].best_eta == 0.1


def test_reta_best_eta():
    """J = 1..5 per prompt; the RM puts the worst response first, then the rest correctly:
    k=1: 1/3; k=2: (1+5)/2 / 3 = 1; k=3: (1+5+4)/3 / 3 = 10/9; k=4: 13/4 / 3 = 13/12; k=5: 1.
    The best quantile is eta = 3/5 with RETA 10/9."""
    oracle = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]] * 3)
    scores = torch.tensor([[9.0, 2.0, 3.0, 4.0, 5.0]] * 3)
    curve = reta_curve(scores, oracle, subset_size=5)
    assert curve.etas == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert_close(_f64(curve.mean), _f64([1 / 3, 1.0, 10 / 9, 13 / 12, 1.0]))
    assert curve.best_eta == 0.6
    assert curve.best_value == pytest.approx(10 / 9)
    anti = reta_curve(-oracle, oracle, subset_size=5)
    assert anti.best_eta == 1.0 and anti.best_value == 1.0


def test_reta_curve_files(tmp_path):
    oracle, noise = _synthetic_oracle(q=20, n=8)
    curve = reta_curve(oracle + noise, oracle, n_resamples=10)
    assert curve.subset_size == 4  # default N // 2
    assert curve.etas == default_etas(4) == [0.25, 0.5, 0.75, 1.0]
    curve.to_csv(tmp_path / "reta.csv")
    with (tmp_path / "reta.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["eta", "mean", "std"]
    assert len(rows) == 1 + len(curve.etas)
    assert [float(v) for v in rows[1]] == [curve.etas[0], curve.mean[0], curve.std[0]]
    curve.plot(tmp_path / "reta.png")
    assert (tmp_path / "reta.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reta_rejects_bad_input():
    with pytest.raises(ValueError, match="J > 0"):
        reta(torch.zeros(2, 3), torch.zeros(2, 3), 0.5)
    with pytest.raises(ValueError, match="eta"):
        reta(torch.zeros(2, 3), torch.ones(2, 3), 0.0)
    with pytest.raises(ValueError, match="subset_size"):
        reta_curve(torch.zeros(2, 3), torch.ones(2, 3), subset_size=4)


def test_reta_table_labels_columns_with_the_etas_it_shows():
    from prefopt.eval.reta import RetaCurve
    from prefopt.eval.reta_eval import format_table

    eighths = [i / 8 for i in range(1, 9)]
    curve = RetaCurve(eighths, [2.0 - e for e in eighths], [0.0] * 8, 0.125, 1.875, 16, 10)
    header, row = format_table({"rm": curve}).splitlines()
    # 0.1 is not on a grid of eighths: the column is the nearest point, 0.125, and says so
    assert header.split()[1:] == ["eta=0.125", "eta=0.25", "eta=0.5", "eta=1", "best", "eta"]
    assert row.split() == ["rm", "1.875", "1.750", "1.500", "1.000", "0.125"]


def test_paired_comparison_hand_values():
    from prefopt.eval.compare import paired_comparison

    a = torch.tensor([1.0, 1.0, -1.0, 0.0])
    b = torch.tensor([1.0, -1.0, -1.0, 2.0])
    gaps = torch.tensor(
        [0.0, math.log(3.0), -math.log(3.0), math.log(3.0)]
    )  # p = .5, .75, .25, .75
    out = paired_comparison(a, b, gaps)
    # right on the labels: a = 1, 1, 0, 0 (a tie is not right); b = 1, 0, 0, 1
    assert out["accuracy"]["a"] == 0.5 and out["accuracy"]["b"] == 0.5
    diffs = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float64)
    assert out["accuracy"]["diff"] == 0.0
    assert out["accuracy"]["se"] == pytest.approx(float(diffs.std()) / 2)
    assert out["disagreement"] == 0.5
    # expected: a = .5, .75, .75 (negative margin, p = .25), .5 (tie); b = .5, .25, .75, .75
    assert out["expected_accuracy"]["a"] == pytest.approx(2.5 / 4)
    assert out["expected_accuracy"]["b"] == pytest.approx(2.25 / 4)
    expected_diffs = torch.tensor([0.0, 0.5, 0.0, -0.25], dtype=torch.float64)
    assert out["expected_accuracy"]["diff"] == pytest.approx(0.25 / 4)
    assert out["expected_accuracy"]["se"] == pytest.approx(float(expected_diffs.std()) / 2)
    assert "expected_accuracy" not in paired_comparison(a, b)
    with pytest.raises(ValueError, match="one size"):
        paired_comparison(a, b[:3])


def _uniform_random_texts(n_words: int, vocab: list[str], n_sets: int, k: int) -> list[list[str]]:
    import random

    rng = random.Random(n_words)
    return [[" ".join(rng.choices(vocab, k=n_words)) for _ in range(k)] for _ in range(n_sets)]


def test_ead_of_uniform_random_text_does_not_depend_on_length_in_power_space():
    """The world's vocabulary (265 tokens): uniformly random text scores the same EAD at 6 and
    at 32 words with V = vocab ** n, while Kirk et al.'s one-V convention grows with length."""
    from prefopt.world import WorldConfig, build_world

    world = build_world(WorldConfig())
    vocab_size = len(world.tokenizer())
    words = world.language.words
    short = _uniform_random_texts(6, words, 64, 4)
    long = _uniform_random_texts(32, words, 64, 4)
    power = [per_input_diversity(s, vocab_size, ngram_space="power")["ead"] for s in (short, long)]
    vocab = [per_input_diversity(s, vocab_size, ngram_space="vocab")["ead"] for s in (short, long)]
    assert abs(power[0] - power[1]) < 0.03, power
    assert power[0] == pytest.approx(1.0, abs=0.03)
    assert vocab[1] - vocab[0] > 0.1, vocab  # the confound the power space removes
    # texts shorter than 5 words are not penalised for having no 5-grams
    tiny = _uniform_random_texts(3, words, 64, 4)
    assert per_input_diversity(tiny, vocab_size, ngram_space="power")["ead"] == pytest.approx(
        1.0, abs=0.03
    )
