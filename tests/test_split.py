"""Tests of the MPO split (prefopt.pipeline.split): hand-computed thresholds, relabelling,
bucket accuracies and relabel counts, the written files, and the split on the synthetic world
with its gold reward as the scorer."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from prefopt.pipeline.split import (
    bucket_report,
    format_split_report,
    relabel,
    relabel_effect,
    resolve_threshold,
    run_split,
    score_pairs,
    split_pairs,
)
from prefopt.world import read_jsonl

# |deltas| = 0.5, 1, 2, 0.2, 1.5, 3; sorted 0.2, 0.5, 1, 1.5, 2, 3.
DELTAS = torch.tensor([0.5, -1.0, 2.0, -0.2, 1.5, -3.0])


def test_split_absolute_tau() -> None:
    assert split_pairs(DELTAS, 1.0).tolist() == [False, True, True, False, True, True]
    assert split_pairs(DELTAS, 0.0).all()
    assert not split_pairs(DELTAS, 5.0).any()
    assert resolve_threshold(DELTAS, 1.0, "absolute") == 1.0


def test_split_quantile_tau() -> None:
    # The median of the six gaps interpolates between 1 and 1.5: 1.25; the top half is easy.
    assert resolve_threshold(DELTAS, 0.5, "quantile") == pytest.approx(1.25)
    assert split_pairs(DELTAS, 0.5, "quantile").tolist() == [
        False, False, True, False, True, True,
    ]  # fmt: skip
    assert split_pairs(DELTAS, 0.0, "quantile").all()  # threshold 0.2, the smallest gap
    assert split_pairs(DELTAS, 1.0, "quantile").tolist() == [False] * 5 + [True]


@pytest.mark.parametrize(
    ("tau", "mode", "match"),
    [
        (1.0, "relative", "mode"),
        (-0.5, "absolute", ">= 0"),
        (1.5, "quantile", r"\[0, 1\]"),
        (-0.1, "quantile", r"\[0, 1\]"),
        (math.nan, "absolute", "finite"),
        (math.inf, "absolute", "finite"),
    ],
)
def test_split_rejects_bad_mode_or_tau(tau: float, mode: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_pairs(DELTAS, tau, mode)


def test_split_rejects_bad_deltas() -> None:
    with pytest.raises(ValueError, match="1-D"):
        split_pairs(DELTAS.reshape(2, 3), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        split_pairs(torch.tensor([1.0, math.nan]), 1.0)
    with pytest.raises(ValueError, match="at least one"):
        split_pairs(torch.zeros(0), 0.5, "quantile")


def _pair(chosen: str, rejected: str, **metadata: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"prompt": "p :", "chosen": chosen, "rejected": rejected}
    if metadata:
        record["metadata"] = metadata
    return record


def test_relabel_swaps_exactly_the_easy_pairs_with_negative_delta() -> None:
    records = [
        _pair("a", "b", gold_gap=1.0),  # easy, RM agrees: kept
        {
            **_pair("c", "d", gold_gap=-0.75, label_agrees_with_gold=False),
            "margin": 2.0,
            "scores": [0.1, 0.9],
            "id": "x1",
        },  # easy, RM disagrees: swapped
        _pair("e", "f", gold_gap=0.5),  # hard, RM disagrees: unchanged
        _pair("g", "h"),  # hard, no metadata: unchanged
        _pair("i", "j"),  # easy, no metadata: gains one
    ]
    records[1]["metadata"].update(gold_chosen=0.25, gold_rejected=1.0, topic="t")
    original = copy.deepcopy(records)
    deltas = torch.tensor([2.0, -2.0, -0.5, 0.5, -1.0])
    easy = split_pairs(deltas, 1.0)
    assert easy.tolist() == [True, True, False, False, True]

    out = relabel(records, deltas, easy)

    assert records == original  # the input is not mutated
    assert out[0] == {**original[0], "metadata": {"gold_gap": 1.0, "relabelled": False}}
    assert out[1] == {
        "prompt": "p :",
        "chosen": "d",
        "rejected": "c",
        "margin": -2.0,
        "scores": [0.9, 0.1],
        "id": "x1",
        "metadata": {
            "gold_gap": 0.75,
            "label_agrees_with_gold": True,
            "gold_chosen": 1.0,
            "gold_rejected": 0.25,
            "topic": "t",
            "relabelled": True,
        },
    }
    assert out[2] == original[2] and out[3] == original[3]
    assert out[4] == {**_pair("j", "i"), "metadata": {"relabelled": True}}
    swapped = [o["chosen"] != r["chosen"] for o, r in zip(out, records, strict=True)]
    assert swapped == (easy & (deltas < 0)).tolist()


def test_relabel_checks_lengths() -> None:
    with pytest.raises(ValueError, match="2 records but 3 deltas"):
        relabel([_pair("a", "b")] * 2, torch.ones(3), torch.ones(3, dtype=torch.bool))


# Buckets by |delta|: [0, 1): 0.5, -0.3, 0.0 | [1, 2): 1.0, -1.7 | [2, 3): 2.5 |
# >= 3: 3.0, -4.0, 5.0 (edges belong to the bucket above them).
BUCKET_DELTAS = torch.tensor([0.5, -0.3, 0.0, 1.0, -1.7, 2.5, 3.0, -4.0, 5.0])
BUCKET_GOLD = torch.tensor([1.0, 0.4, -0.2, 0.0, -1.0, 2.0, -3.0, -1.0, 1.0])


def test_bucket_accuracies_by_hand() -> None:
    report = bucket_report(BUCKET_DELTAS)
    rows = report["buckets"]
    assert [r["bucket"] for r in rows] == ["[0, 1)", "[1, 2)", "[2, 3)", ">= 3"]
    assert [r["n"] for r in rows] == [3, 2, 1, 3]
    assert [r["ties"] for r in rows] == [1, 0, 0, 0]
    # [0, 1): one right, one wrong, one tie (a half): 1.5 / 3.
    expected = [(0.5, math.sqrt(0.25 / 3)), (0.5, math.sqrt(0.25 / 2)), (1.0, 0.0)]
    expected.append((2 / 3, math.sqrt(2 / 9 / 3)))
    for row, (p, se) in zip(rows, expected, strict=True):
        assert row["rm_accuracy"] == pytest.approx(p)
        assert row["rm_accuracy_se"] == pytest.approx(se)
    overall = report["overall"]
    assert (overall["n"], overall["ties"]) == (9, 1)
    assert overall["rm_accuracy"] == pytest.approx(5.5 / 9)
    assert not report["gold"] and "rm_gold_agreement" not in overall


def test_bucket_gold_agreement_by_hand() -> None:
    report = bucket_report(BUCKET_DELTAS, gold_gaps=BUCKET_GOLD)
    rows = report["buckets"]
    assert [r["gold_ties"] for r in rows] == [0, 1, 0, 0]
    # [0, 1): agree, disagree, RM tie (a half) -> 1.5 / 3; labels: gold > 0 twice of three.
    # [1, 2): the gold tie is left out; -1.7 vs -1.0 agrees; the label (gold -1) does not.
    # >= 3: 3 vs -3 disagrees, the other two agree; one label of three agrees with gold.
    rm = [0.5, 1.0, 1.0, 2 / 3]
    label = [2 / 3, 0.0, 1.0, 1 / 3]
    n_gold = [3, 1, 1, 3]
    for row, a, b, n in zip(rows, rm, label, n_gold, strict=True):
        assert row["rm_gold_agreement"] == pytest.approx(a)
        assert row["rm_gold_agreement_se"] == pytest.approx(math.sqrt(a * (1 - a) / n))
        assert row["label_gold_agreement"] == pytest.approx(b)
        assert row["label_gold_agreement_se"] == pytest.approx(math.sqrt(b * (1 - b) / n))
    overall = report["overall"]
    assert overall["gold_ties"] == 1
    assert overall["rm_gold_agreement"] == pytest.approx(5.5 / 8)
    assert overall["label_gold_agreement"] == pytest.approx(0.5)


def test_bucket_edges_and_empty_buckets() -> None:
    report = bucket_report(BUCKET_DELTAS, edges=(0, 10, 20))
    rows = report["buckets"]
    assert [r["bucket"] for r in rows] == ["[0, 10)", "[10, 20)", ">= 20"]
    assert [r["n"] for r in rows] == [9, 0, 0]
    assert rows[1]["rm_accuracy"] is None and rows[1]["rm_accuracy_se"] is None
    for bad in [(1, 2), (0, 2, 1), (0, 1, 1), ()]:
        with pytest.raises(ValueError, match="edges"):
            bucket_report(BUCKET_DELTAS, edges=bad)


def test_relabel_effect_counts_by_hand() -> None:
    deltas = torch.tensor([-2.0, -3.0, 2.0, -0.5, -1.5, -4.0])
    gold = torch.tensor([-1.0, 1.0, 1.0, -1.0, 0.0, -2.0])
    easy = split_pairs(deltas, 1.0)  # all but the fourth
    effect = relabel_effect(deltas, easy, gold)
    # Swapped: pairs 0, 1, 4, 5. Fixed: 0 and 5 (gold < 0); broke: 1; 4 is a gold tie.
    # Easy pairs gold can judge: 0, 1, 2, 5; agreeing before: 1, 2; after: 0, 2, 5.
    assert effect == {
        "n_easy": 5,
        "relabelled": 4,
        "fixed": 2,
        "broke": 1,
        "net": 1,
        "gold_ties": 1,
        "easy_label_gold_agreement_before": 0.5,
        "easy_label_gold_agreement_after": 0.75,
    }


class WordCount:
    """Toy scorer: the reward of a completion is its number of words; records every call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def score(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        assert len(prompts) == len(completions)
        self.calls.append(len(completions))
        return torch.tensor([float(len(c.split())) for c in completions])


def _toy_records(with_gold: bool) -> list[dict[str, Any]]:
    texts = [("a b c", "a"), ("a", "a b c d"), ("a b", "a"), ("x", "y z"), ("p q", "r s")]
    gold = [0.5, -2.0, 1.0, 1.0, -1.0]
    return [
        _pair(c, r, gold_gap=g, pair_id=f"toy-{i}") if with_gold else _pair(c, r)
        for i, ((c, r), g) in enumerate(zip(texts, gold, strict=True))
    ]  # word-count deltas: 2, -3, 1, -1, 0


def test_score_pairs_batches_chosen_and_rejected_together() -> None:
    scorer = WordCount()
    deltas = score_pairs(scorer, _toy_records(False), batch_size=4)
    assert deltas.tolist() == [2.0, -3.0, 1.0, -1.0, 0.0]
    assert deltas.dtype == torch.float64
    assert scorer.calls == [4, 4, 2]  # two pairs (four texts) a call
    with pytest.raises(ValueError, match="batch_size"):
        score_pairs(scorer, _toy_records(False), batch_size=1)


def test_run_split_writes_the_files(tmp_path: Path) -> None:
    records = _toy_records(with_gold=True)
    original = copy.deepcopy(records)
    report = run_split(WordCount(), records, 1.5, "absolute", tmp_path / "out", batch_size=4)
    assert records == original
    paths = report["paths"]
    assert paths == {
        "easy": str(tmp_path / "out" / "easy.jsonl"),
        "hard": str(tmp_path / "out" / "hard.jsonl"),
        "report": str(tmp_path / "out" / "split.json"),
    }
    # |deltas| 2 and 3 pass 1.5: pair 0 is kept, pair 1 swapped; the other three are hard.
    assert read_jsonl(paths["easy"]) == [
        {**original[0], "metadata": {**original[0]["metadata"], "relabelled": False}},
        {
            "prompt": "p :",
            "chosen": "a b c d",
            "rejected": "a",
            "metadata": {"gold_gap": 2.0, "pair_id": "toy-1", "relabelled": True},
        },
    ]
    assert read_jsonl(paths["hard"]) == original[2:]
    assert json.loads(Path(paths["report"]).read_text()) == report
    expected = {"tau": 1.5, "mode": "absolute", "threshold": 1.5, "n_pairs": 5, "n_easy": 2}
    expected.update(n_hard=3, n_relabelled=1, frac_easy=0.4)
    assert {k: report[k] for k in expected} == expected
    # Pair 1's label disagreed with gold (gold_gap -2) and the relabel fixed it.
    effect = report["relabel_effect"]
    assert (effect["relabelled"], effect["fixed"], effect["broke"]) == (1, 1, 0)
    buckets = report["bucket_report"]
    assert buckets["gold"] and [r["n"] for r in buckets["buckets"]] == [1, 2, 1, 1]
    assert buckets["buckets"][1]["rm_accuracy"] == 0.5  # deltas 1 and -1


def test_run_split_quantile_without_gold_is_deterministic(tmp_path: Path) -> None:
    records = _toy_records(with_gold=False)
    first = run_split(WordCount(), records, 0.5, "quantile", tmp_path / "a")
    second = run_split(WordCount(), records, 0.5, "quantile", tmp_path / "b")
    # |deltas| 2, 3, 1, 1, 0: the median is 1, so all but the tie are easy.
    assert first["threshold"] == 1.0 and first["n_easy"] == 4 and first["n_relabelled"] == 2
    assert first["relabel_effect"] is None and not first["bucket_report"]["gold"]
    easy = read_jsonl(first["paths"]["easy"])
    assert [(r["chosen"], r["rejected"]) for r in easy] == [
        ("a b c", "a"), ("a b c d", "a"), ("a b", "a"), ("y z", "x"),
    ]  # fmt: skip
    assert [r["metadata"] for r in easy] == [{"relabelled": s} for s in (False, True, False, True)]
    for name in ("easy", "hard"):
        assert Path(first["paths"][name]).read_bytes() == Path(second["paths"][name]).read_bytes()
    with pytest.raises(ValueError, match="at least one record"):
        run_split(WordCount(), [], 1.0, "absolute", tmp_path / "c")
    scorer = WordCount()
    with pytest.raises(ValueError, match="mode"):
        run_split(scorer, records, 1.0, "relative", tmp_path / "d")
    assert scorer.calls == [] and not (tmp_path / "d").exists()  # nothing scored or written


def test_format_split_report() -> None:
    text = format_split_report(bucket_report(BUCKET_DELTAS, gold_gaps=BUCKET_GOLD))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["|delta|", "pairs", "ties", "RM"]
    # bucket, pairs, ties, accuracy ± se, gold ties, RM vs gold ± se, label vs gold ± se
    cells = "[0, 1) 3 1 50.0% ± 28.9 0 50.0% ± 28.9 66.7% ± 27.2"
    assert lines[1].split() == cells.split()
    assert lines[-1].startswith("all")


@pytest.fixture(scope="module")
def world_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[Any], dict]:
    from prefopt.world import WorldConfig, build_world

    world = build_world(WorldConfig())
    records = world.preference_records("train")[:500]
    out = tmp_path_factory.mktemp("world-split")
    return world, records, run_split(world, records, 1.0, "absolute", out)


def test_world_gold_scorer_split(world_split: tuple[Any, list[Any], dict]) -> None:
    world, records, report = world_split
    easy = read_jsonl(report["paths"]["easy"])
    hard = read_jsonl(report["paths"]["hard"])
    assert len(easy) == report["n_easy"] and len(hard) == report["n_hard"]
    assert report["n_easy"] + report["n_hard"] == 500 and 0 < report["n_easy"] < 500
    # With the gold reward as the RM, every relabelled easy pair agrees with gold.
    assert all(r["metadata"]["label_agrees_with_gold"] for r in easy)
    assert all(r["metadata"]["gold_gap"] >= 1.0 - 1e-5 for r in easy)
    # ... and the metadata follows the swap: gold_gap is still gold(chosen) - gold(rejected).
    prompts = [r["prompt"] for r in easy]
    gaps = world.score(prompts, [r["chosen"] for r in easy]).double()
    gaps -= world.score(prompts, [r["rejected"] for r in easy]).double()
    recorded = torch.tensor([r["metadata"]["gold_gap"] for r in easy], dtype=torch.float64)
    torch.testing.assert_close(gaps, recorded, atol=2e-6, rtol=0)
    # Hard pairs are the original records, untouched.
    hard_ids = {r["metadata"]["pair_id"] for r in hard}
    assert hard == [r for r in records if r["metadata"]["pair_id"] in hard_ids]
    # The RM is the gold reward, so it agrees with gold in every bucket.
    buckets = report["bucket_report"]
    for row in [*buckets["buckets"], buckets["overall"]]:
        assert row["n"] > 0 and row["rm_gold_agreement"] == 1.0
    effect = report["relabel_effect"]
    assert effect["broke"] == 0 and effect["fixed"] == effect["relabelled"] > 0
    assert effect["easy_label_gold_agreement_after"] == 1.0
    # MPO's premise holds on the world: small-gap labels are the noisy ones.
    rows = buckets["buckets"]
    assert rows[0]["label_gold_agreement"] < rows[-1]["label_gold_agreement"]
    assert "relabelling:" in format_split_report(report)
