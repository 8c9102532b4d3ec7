"""The unpaired format (prompt, completion, desirable) of KTO and BCO: loading, bad rows,
conversion from pairs, the collator's mismatched rows, and the world's gold-labelled data."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch

from prefopt.data import (
    DataError,
    UnpairedCollator,
    detect_format,
    load_records,
    pairs_to_unpaired,
    tokenize_sft,
)
from prefopt.data.loaders import records_kind


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


GOOD = [
    {"prompt": "p0", "completion": "a good answer", "desirable": True, "id": "a"},
    {"prompt": "p1", "completion": "a bad answer", "desirable": False},
    {"prompt": "p2", "completion": "TRL's column", "label": True},  # TRL's field name
    {
        "prompt": [{"role": "user", "content": "hi"}],
        "completion": [{"role": "assistant", "content": "hello"}],
        "desirable": False,
    },
]
# one row per reason, in this order (row indices 0..7 of BAD)
BAD = [
    ({"completion": "c", "desirable": True}, "missing_field:prompt"),
    ({"prompt": "p", "desirable": True}, "missing_field:completion"),
    ({"prompt": "p", "completion": "c"}, "missing_field:desirable"),
    ({"prompt": "p", "completion": "c", "desirable": 1}, "wrong_type:desirable"),
    ({"prompt": "p", "completion": "c", "desirable": "yes"}, "wrong_type:desirable"),
    ({"prompt": 3, "completion": "c", "desirable": True}, "wrong_type:prompt"),
    ({"prompt": "p", "completion": "  ", "desirable": True}, "empty_completion"),
    ({"prompt": "p", "completion": "c", "desirable": True, "label": False}, "conflicting_labels"),
]


def test_good_rows_load_with_their_label(tmp_path):
    records, bad = load_records(write_jsonl(tmp_path / "u.jsonl", GOOD), kind="unpaired")
    assert bad.total == 0
    assert [r["desirable"] for r in records] == [True, False, True, False]
    assert records[0]["id"] == "a" and records[2]["completion"] == "TRL's column"
    assert records[3]["prompt"] == [{"role": "user", "content": "hi"}]  # no tokenizer: messages
    assert [r["index"] for r in records] == [0, 1, 2, 3]


def test_every_bad_row_is_counted_by_reason(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [GOOD[0], *(row for row, _ in BAD)])
    records, bad = load_records(path, kind="unpaired")
    assert len(records) == 1
    expected: dict[str, int] = {}
    for _, reason in BAD:
        expected[reason] = expected.get(reason, 0) + 1
    assert bad.counts == expected
    # source row indices (row 0 is the good one)
    assert bad.examples["wrong_type:desirable"] == [4, 5]
    assert bad.examples["conflicting_labels"] == [8]
    with pytest.raises(DataError, match=r"row 1: bad row \(missing_field:prompt\)"):
        load_records(path, kind="unpaired", on_bad_row="error")


def test_csv_reads_true_and_false_as_booleans(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("prompt,completion,desirable\np,c,True\np,d,false\np,e,maybe\n")
    records, bad = load_records(str(path), kind="unpaired")
    assert [r["desirable"] for r in records] == [True, False]
    assert bad.counts == {"wrong_type:desirable": 1}


def test_detection_and_kinds(tmp_path):
    assert detect_format([{"prompt": "p", "completion": "c", "desirable": True}]) == "unpaired"
    assert detect_format([{"prompt": "p", "completion": "c", "label": False}]) == "unpaired"
    assert detect_format([{"prompt": "p", "completion": "c"}]) == "sft"
    pairs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="data.unpaired: pairs"):
        load_records(pairs, kind="unpaired")
    with pytest.raises(DataError, match="format 'unpaired'"):
        load_records(write_jsonl(tmp_path / "u.jsonl", GOOD), kind="preference")
    assert records_kind("unpaired", "rows") == "unpaired"
    assert records_kind("unpaired", "pairs") == "preference"
    assert (records_kind("pairwise"), records_kind("sft")) == ("preference", "sft")


def test_each_pair_gives_a_desirable_and_an_undesirable_example(tmp_path):
    pairs, _ = load_records(
        write_jsonl(
            tmp_path / "p.jsonl",
            [
                {"prompt": "p0", "chosen": "good0", "rejected": "bad0", "id": 5},
                {"prompt": "p1", "chosen": "good1", "rejected": "bad1"},
            ],
        )
    )
    unpaired = pairs_to_unpaired(pairs)
    assert [(r["prompt"], r["completion"], r["desirable"], r["index"]) for r in unpaired] == [
        ("p0", "good0", True, 0),
        ("p0", "bad0", False, 0),
        ("p1", "good1", True, 1),
        ("p1", "bad1", False, 1),
    ]
    assert unpaired[0]["id"] == unpaired[1]["id"] == 5


def test_collator_adds_the_mismatched_pairs_and_cuts_them_to_fit():
    examples = [
        {"prompt_ids": [1, 2], "completion_ids": [10, 11, 12], "desirable": True},
        {"prompt_ids": [3, 4, 5, 6], "completion_ids": [20], "desirable": False},
        {"prompt_ids": [7], "completion_ids": [30, 31], "desirable": True},
    ]
    batch = UnpairedCollator(pad_token_id=0, max_length=6, mismatched=True)(examples)
    assert batch["desirable"].tolist() == [True, False, True]
    rows = [
        [t for t, keep in zip(ids, mask, strict=True) if keep]
        for ids, mask in zip(
            batch["input_ids"].tolist(), batch["attention_mask"].tolist(), strict=True
        )
    ]
    completion = [
        [t for t, keep in zip(ids, mask, strict=True) if keep]
        for ids, mask in zip(
            batch["input_ids"].tolist(), batch["completion_mask"].tolist(), strict=True
        )
    ]
    assert rows[:3] == [[1, 2, 10, 11, 12], [3, 4, 5, 6, 20], [7, 30, 31]]
    # prompt i with completion i-1 (cyclically); prompt 1 leaves room for 2 of [10, 11, 12]
    assert rows[3:] == [[1, 2, 30, 31], [3, 4, 5, 6, 10, 11], [7, 20]]
    assert completion[3:] == [[30, 31], [10, 11], [20]]
    plain = UnpairedCollator(pad_token_id=0, max_length=6, mismatched=False)(examples)
    assert plain["input_ids"].shape[0] == 3


def test_tokenized_demonstrations_keep_their_label(world):
    records = [{"prompt": "p", "completion": "hello", "desirable": False, "index": 3}]
    (example,) = tokenize_sft(records, world.tokenizer(), max_length=32, max_prompt_length=16)
    assert example["desirable"] is False and example["index"] == 3


# --------------------------------------------------------------------------- the world


@pytest.fixture(scope="module")
def world():
    from prefopt.world import build_world
    from prefopt.world.config import WorldConfig

    return build_world(WorldConfig(n_train_pairs=64, n_test_pairs=16, n_ood_pairs=16))


def test_world_desirability_is_the_gold_rule(world):
    train, test = world.unpaired_records("train"), world.unpaired_records("test")
    assert (len(train), len(test)) == (128, 32)  # two completions per pair of the split
    gold = world.gold_reward([r["prompt"] for r in train], [r["completion"] for r in train])
    torch.testing.assert_close(
        gold, torch.tensor([r["metadata"]["gold"] for r in train]), atol=1e-6, rtol=0
    )
    threshold = statistics.median(r["metadata"]["gold"] for r in train)
    for record in train + test:
        assert record["metadata"]["threshold"] == pytest.approx(threshold, abs=1e-6)
        assert record["desirable"] == (record["metadata"]["gold"] > record["metadata"]["threshold"])
    assert sum(r["desirable"] for r in train) == 64  # the median splits the train half/half
    assert len({r["prompt"] for r in test} & {r["prompt"] for r in train}) == 0


def test_world_unpaired_data_leaves_the_other_datasets_unchanged():
    from prefopt.world import build_world
    from prefopt.world.config import WorldConfig

    config = WorldConfig(n_train_pairs=16, n_test_pairs=8, n_ood_pairs=8)
    before = build_world(config).preference_records("train")
    other = build_world(config)
    other.unpaired_records("train")
    assert other.preference_records("train") == before
    assert other.unpaired_records("train") == build_world(config).unpaired_records("train")


def test_unpaired_files_are_checked_with_the_worlds_tokenizer_before_training(tmp_path, world):
    """A world model reading a file: its unpaired rows (or its pairs, with data.unpaired:
    pairs) are read as such by the unknown-token check, before any model is trained."""
    from prefopt.config import ConfigError
    from prefopt.pipeline.run import check_data_for_world_tokenizer
    from tests.conftest import tiny_recipe

    words = world.unpaired_records("train")[:4]
    ours = [{k: r[k] for k in ("prompt", "completion", "desirable")} for r in words]
    english = [{"prompt": "How do I bake bread?", "completion": "Knead it.", "desirable": True}]
    pairs = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": "x"} for r in words]
    for rows, extra, fails in (
        (ours, [], False),
        (english, [], True),
        (pairs, ["data.unpaired=pairs"], False),
    ):
        source = write_jsonl(tmp_path / "rows.jsonl", rows)
        recipe = tiny_recipe("kto", None, f"data.source={source}", "data.eval_split=null", *extra)
        if fails:
            with pytest.raises(ConfigError, match="unknown to the tokenizer"):
                check_data_for_world_tokenizer(recipe)
        else:
            check_data_for_world_tokenizer(recipe)
