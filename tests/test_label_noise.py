"""Coste et al.'s label noise (a share of training pairs with chosen and rejected swapped)."""

import pytest

from prefopt.config import ConfigError, load_recipe
from prefopt.data.noise import flip_labels


def _pair(i):
    return {"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", "margin": float(i),
            "metadata": {"gold_chosen": 2.0 * i, "gold_rejected": -1.0, "gold_gap": 2.0 * i + 1,
                         "label_agrees_with_gold": True, "pair_id": i}}  # fmt: skip


def test_a_quarter_of_eight_pairs_is_two_swapped_consistently():
    """rate 0.25 of 8 pairs: exactly 2 flipped; in each, the texts and every chosen/rejected
    field trade places, margin and gold_gap change sign, the gold-agreement flag flips; the
    other 6 records are the originals; the input is not modified; same seed, same pairs."""
    records = [_pair(i) for i in range(8)]
    out, count = flip_labels(records, 0.25, seed=3)
    assert count == 2
    flipped = [i for i, r in enumerate(out) if r["chosen"] != f"c{i}"]
    assert len(flipped) == 2
    for i in flipped:
        r = out[i]
        assert (r["chosen"], r["rejected"], r["margin"]) == (f"r{i}", f"c{i}", -float(i))
        m = r["metadata"]
        assert (m["gold_chosen"], m["gold_rejected"]) == (-1.0, 2.0 * i)
        assert m["gold_gap"] == -(2.0 * i + 1) and m["label_agrees_with_gold"] is False
        assert m["label_flipped"] is True and m["pair_id"] == i
    assert all(out[i] is records[i] for i in range(8) if i not in flipped)
    assert records == [_pair(i) for i in range(8)]  # untouched
    assert flip_labels(records, 0.25, seed=3)[0] == out
    assert flip_labels(records, 0.0, seed=3) == (records, 0)
    assert all(r["chosen"].startswith("r") for r in flip_labels(records, 1.0, seed=0)[0])


def test_the_recipe_key_is_validated():
    assert load_recipe("rm", ["data.label_noise=0.25"]).data.label_noise == 0.25
    with pytest.raises(ConfigError, match="data.label_noise"):
        load_recipe("rm", ["data.label_noise=1.5"])
    with pytest.raises(ValueError, match="rate"):
        flip_labels([_pair(0)], -0.1, seed=0)
