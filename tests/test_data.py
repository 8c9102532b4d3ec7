"""Tests for prefopt.data: loading, bad rows, tokenization boundary/truncation, collators."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from prefopt.data import (
    BadRows,
    DataError,
    PreferenceCollator,
    PromptCollator,
    SFTCollator,
    detect_format,
    load_records,
    normalize_rows,
    tokenize_preference,
    tokenize_prompts,
    tokenize_sft,
)

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0, 1, 2, 3
PAD, BOS, EOS = 0, 1, 2
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    """A small BPE that merges "wor" + "ld" into "world" when they are adjacent."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS)
    corpus = ["hello world peace war"] * 20 + ["the cat sat on the mat"] * 5 + ["wor ld"]
    tok.train_from_iterator(corpus, trainer)
    wrapped = _wrap(tok)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


WORDS = ["p1", "p2", "p3", "p4", "p5", "p6", "c1", "c2", "c3", "r1", "r2", "x", "y"]


@pytest.fixture(scope="module")
def words() -> PreTrainedTokenizerFast:
    """A word-level tokenizer: word i of WORDS has id 4 + i, so expected ids are easy to write."""
    vocab = {s: i for i, s in enumerate(SPECIALS)} | {w: 4 + i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return _wrap(tok)


def w(*names: str) -> list[int]:
    return [4 + WORDS.index(n) for n in names]


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the `datasets` Arrow cache of these tiny files out of the user's cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


# --- tokenization: boundary, BOS/EOS, truncation ------------------------------------------


def test_boundary_is_exact_where_joint_tokenization_would_merge(bpe: PreTrainedTokenizerFast):
    records = [{"prompt": "hello wor", "chosen": "ld peace", "rejected": "ld war", "index": 7}]
    (ex,) = tokenize_preference(records, bpe, max_length=64, max_prompt_length=32)

    def ids(text: str) -> list[int]:
        return bpe(text, add_special_tokens=False)["input_ids"]

    assert ex["prompt_ids"] == [BOS, *ids("hello wor")]
    assert ex["chosen_ids"] == [*ids("ld peace"), EOS]
    assert ex["rejected_ids"] == [*ids("ld war"), EOS]
    assert ex["index"] == 7 and ex["margin"] == 0.0
    separate = ex["prompt_ids"][1:] + ex["chosen_ids"][:-1]
    joint = ids("hello world peace")
    assert joint != separate  # joint tokenization merges across the boundary...
    assert bpe.convert_tokens_to_ids("world") in joint
    assert bpe.convert_tokens_to_ids("world") not in separate  # ...separate does not
    assert ids("wor")[-1] == ex["prompt_ids"][-1] and ids("ld")[0] == ex["chosen_ids"][0]


def pair(prompt: str, chosen: str, rejected: str, **extra: Any) -> dict[str, Any]:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def test_no_truncation_when_it_fits(words: PreTrainedTokenizerFast):
    rec = pair("p1 p2 p3", "c1 c2", "r1", margin=1.5, id="a")
    (ex,) = tokenize_preference([rec], words, max_length=7, max_prompt_length=2)
    assert ex["prompt_ids"] == [BOS, *w("p1", "p2", "p3")]
    assert ex["chosen_ids"] == [*w("c1", "c2"), EOS]
    assert ex["rejected_ids"] == [*w("r1"), EOS]
    assert ex["margin"] == 1.5 and ex["id"] == "a" and ex["index"] == 0


def test_prompt_truncated_from_left_keeping_bos(words: PreTrainedTokenizerFast):
    rec = pair("p1 p2 p3 p4 p5 p6", "c1 c2", "r1")
    (ex,) = tokenize_preference([rec], words, max_length=8, max_prompt_length=4)
    assert ex["prompt_ids"] == [BOS, *w("p4", "p5", "p6")]
    assert ex["chosen_ids"] == [*w("c1", "c2"), EOS]  # room 4: completions untouched
    assert ex["rejected_ids"] == [*w("r1"), EOS]
    (ex,) = tokenize_preference([rec], words, max_length=8, max_prompt_length=4, add_bos=False)
    assert ex["prompt_ids"] == w("p3", "p4", "p5", "p6")


def test_completion_truncated_from_right_loses_eos(words: PreTrainedTokenizerFast):
    rec = pair("p1 p2 p3 p4 p5 p6", "c1 c2 c3", "r1")
    (ex,) = tokenize_preference([rec], words, max_length=6, max_prompt_length=4)
    assert ex["prompt_ids"] == [BOS, *w("p4", "p5", "p6")]
    assert ex["chosen_ids"] == w("c1", "c2")  # cut: no EOS
    assert ex["rejected_ids"] == [*w("r1"), EOS]  # fits: EOS kept


def test_bos_not_doubled_when_already_in_text(words: PreTrainedTokenizerFast):
    (ex,) = tokenize_preference(
        [pair("<s> p1", "c1", "r1")], words, max_length=9, max_prompt_length=4
    )
    assert ex["prompt_ids"] == [BOS, *w("p1")]
    rec = pair("<s> p1 p2 p3 p4", "c1", "r1")  # BOS from the text stays first when cut
    (ex,) = tokenize_preference([rec], words, max_length=4, max_prompt_length=3, add_bos=False)
    assert (ex["prompt_ids"], ex["chosen_ids"]) == ([BOS, *w("p3", "p4")], w("c1"))


def test_prompt_too_long_dropped_and_counted(words: PreTrainedTokenizerFast):
    recs = [pair("p1 p2 p3 p4 p5 p6", "c1", "r1", index=3), pair("p1", "c1", "r1", index=4)]
    bad = BadRows()
    out = tokenize_preference(recs, words, max_length=4, max_prompt_length=4, bad_rows=bad)
    assert [ex["index"] for ex in out] == [4]
    assert bad.counts == {"prompt_too_long": 1} and bad.examples == {"prompt_too_long": [3]}


def test_tokenize_sft_and_prompts(words: PreTrainedTokenizerFast):
    recs = [{"prompt": "p1 p2 p3 p4 p5", "completion": "c1 c2 c3", "index": 0}]
    (ex,) = tokenize_sft(recs, words, max_length=6, max_prompt_length=3)
    assert ex == {
        "prompt_ids": [BOS, *w("p4", "p5")],
        "completion_ids": w("c1", "c2", "c3"),
        "index": 0,
    }
    bad = BadRows()
    assert tokenize_sft(recs, words, max_length=3, max_prompt_length=5, bad_rows=bad) == []
    assert bad.counts == {"prompt_too_long": 1}
    (ex,) = tokenize_prompts(recs, words, max_prompt_length=3)
    assert ex == {"prompt_ids": [BOS, *w("p4", "p5")], "index": 0}


# --- loading: bad rows ----------------------------------------------------------------------


def test_every_preference_bad_reason_counted(tmp_path: Path):
    rows: list[dict[str, Any]] = [
        pair("p", "good", "bad", margin=1.0, id=1, scores={"a": 1.0}, metadata={"k": "v"}),
        {"chosen": "a", "rejected": "b"},  # 1 missing_field:prompt
        {"prompt": "p", "chosen": None, "rejected": "b"},  # 2 missing_field:chosen
        {"prompt": "p", "chosen": "a"},  # 3 missing_field:rejected
        {"prompt": 3, "chosen": "a", "rejected": "b"},  # 4 wrong_type:prompt
        pair("p", "   \n", "b"),  # 5 empty_chosen
        pair("p", "a", ""),  # 6 empty_rejected
        pair("p", "same", "same"),  # 7 chosen_equals_rejected
        pair("p", "a", "b", margin="big"),  # 8 wrong_type:margin
        pair("p", "a", "b", metadata="x"),  # 9 wrong_type:metadata
        pair("p", "a", "b", scores=2),  # 10 wrong_type:scores
        {"prompt": "p", "chosen": "a", "rejected": 5},  # 11 wrong_type:rejected
        {"prompt": "p", "chosen": ["not a message"], "rejected": "b"},  # 12 wrong_type:chosen
        pair("p", "kept", "also kept"),  # 13
    ]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    records, bad = load_records(path)
    assert [r["index"] for r in records] == [0, 13]
    assert records[0] == {
        "prompt": "p",
        "chosen": "good",
        "rejected": "bad",
        "margin": 1.0,
        "id": 1,
        "scores": {"a": 1.0},
        "metadata": {"k": "v"},
        "index": 0,
    }
    assert records[1]["margin"] is None
    assert bad.counts == {
        "missing_field:prompt": 1,
        "missing_field:chosen": 1,
        "missing_field:rejected": 1,
        "wrong_type:prompt": 1,
        "empty_chosen": 1,
        "empty_rejected": 1,
        "chosen_equals_rejected": 1,
        "wrong_type:margin": 1,
        "wrong_type:metadata": 1,
        "wrong_type:scores": 1,
        "wrong_type:rejected": 1,
        "wrong_type:chosen": 1,
    }
    assert bad.total == 12 and bad.examples["empty_chosen"] == [5]
    with pytest.raises(DataError, match=r"prefs\.jsonl: row 1: .*missing_field:prompt"):
        load_records(path, on_bad_row="error")


def test_hh_parsing_and_bad_reasons(tmp_path: Path):
    turn1 = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:"
    rows = [
        {"chosen": turn1 + " fine, thanks", "rejected": turn1 + " go away"},
        {"chosen": "\n\nHuman: hi there", "rejected": "\n\nHuman: hi\n\nAssistant: yo"},
        {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"},
        {"chosen": "\n\nHuman: a\n\nAssistant: ", "rejected": "\n\nHuman: a\n\nAssistant: y"},
        {"chosen": "\n\nHuman: a\n\nAssistant: y", "rejected": "\n\nHuman: a\n\nAssistant:  "},
        {"chosen": "\n\nHuman: a\n\nAssistant: y", "rejected": "\n\nHuman: a\n\nAssistant: y"},
    ]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    records, bad = load_records(path)
    assert records == [
        {
            "prompt": turn1,
            "chosen": " fine, thanks",
            "rejected": " go away",
            "margin": None,
            "index": 0,
        }
    ]
    assert bad.counts == {
        "hh_no_assistant_turn": 1,
        "hh_prompt_mismatch": 1,
        "empty_chosen": 1,
        "empty_rejected": 1,
        "chosen_equals_rejected": 1,
    }
    sft, _ = load_records(path, kind="sft")
    assert sft == [{"prompt": turn1, "completion": " fine, thanks", "index": 0}]


def tldr_row(choice: Any = 1, post: str | None = "my post", **info: Any) -> dict[str, Any]:
    summaries = [{"text": "first summary", "policy": "a"}, {"text": "  second one", "policy": "b"}]
    base = {"id": "t3_x", "post": post, "title": "A title", "subreddit": "tifu"}
    return {"info": base | info, "summaries": summaries, "choice": choice, "worker": "w1"}


def test_tldr_parsing_and_bad_reasons(tmp_path: Path):
    rows = [
        tldr_row(),
        tldr_row(choice=0),
        tldr_row(post=None, article="news text", title=None, subreddit=None),
        tldr_row(post=None),  # no article either
        tldr_row(choice=2),
        {"info": None, "summaries": [], "choice": 0},
    ]
    path = write_jsonl(tmp_path / "comparisons.jsonl", rows)
    records, bad = load_records(path)
    prompt = "SUBREDDIT: r/tifu\nTITLE: A title\nPOST: my post\nTL;DR:"
    assert records[0] == {
        "prompt": prompt,
        "chosen": " second one",
        "rejected": " first summary",
        "margin": None,
        "id": "t3_x",
        "index": 0,
    }
    assert (records[1]["chosen"], records[1]["rejected"]) == (" first summary", " second one")
    assert records[2]["prompt"] == "POST: news text\nTL;DR:"
    assert bad.counts == {
        "missing_field:info.post": 1,
        "tldr_bad_choice": 1,
        "missing_field:info": 1,
    }


def test_sft_formats_and_empty_completion(tmp_path: Path):
    rows = [
        {"prompt": "p", "completion": "c"},
        {"prompt": "p", "completion": "  "},
        {"prompt": "p"},
    ]
    records, bad = load_records(write_jsonl(tmp_path / "sft.jsonl", rows), kind="sft")
    assert records == [{"prompt": "p", "completion": "c", "index": 0}]
    assert bad.counts == {"empty_completion": 1, "missing_field:completion": 1}
    msgs = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "hi"}]},
    ]
    records, bad = normalize_rows(msgs, kind="sft")
    assert records[0]["prompt"] == [{"role": "user", "content": "hi"}]
    assert records[0]["completion"] == [{"role": "assistant", "content": "yo"}]
    assert bad.counts == {"conversation_no_assistant_turn": 1}
    with pytest.raises(ValueError, match="kind='sft'"):
        normalize_rows(rows, kind="preference", format="sft")


# --- loading: file formats ------------------------------------------------------------------

GOOD_ROWS = [
    pair("What is 2+2?", " 4", " 5", margin=1.0, id=0),
    pair("Name a colour.", " red", " seven", margin=0.25, id=1),
    pair("Say hi, politely", " Hello there.", " no", margin=2.0, id=2),
]


def test_every_file_format_gives_identical_records(tmp_path: Path):
    frame = pd.DataFrame(GOOD_ROWS)
    paths = [
        write_jsonl(tmp_path / "d.jsonl", GOOD_ROWS),
        write_jsonl(tmp_path / "d.jsonl.gz", GOOD_ROWS),
        str(tmp_path / "d.json"),
        str(tmp_path / "d.parquet"),
        str(tmp_path / "d.csv"),
        str(tmp_path / "d.csv.gz"),
    ]
    (tmp_path / "d.json").write_text(json.dumps(GOOD_ROWS))
    frame.to_parquet(paths[3])
    frame.to_csv(paths[4], index=False)
    frame.to_csv(paths[5], index=False)
    expected = [{**row, "index": i} for i, row in enumerate(GOOD_ROWS)]
    for path in paths:
        records, bad = load_records(path)
        assert records == expected, path
        assert bad.total == 0


def test_glob_folder_and_max_rows(tmp_path: Path):
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", GOOD_ROWS)
    write_jsonl(folder / "test.jsonl", GOOD_ROWS[:1])
    records, _ = load_records(str(folder))
    assert len(records) == 3
    records, _ = load_records(str(folder), split="test")
    assert [r["id"] for r in records] == [0]
    records, _ = load_records(str(folder / "*.jsonl"), max_rows=4)
    assert len(records) == 4
    with pytest.raises(FileNotFoundError):
        load_records(str(tmp_path / "missing.jsonl"))


def test_detect_format():
    assert detect_format([pair("p", "a", "b")]) == "preference"
    assert detect_format([{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "x"}]) == "hh"
    assert detect_format([tldr_row()]) == "tldr"
    assert detect_format([{"chosen": [{"role": "user", "content": "a"}], "rejected": []}]) == (
        "conversation"
    )
    assert detect_format([{"prompt": "p", "completion": "c"}]) == "sft"
    assert detect_format([{"messages": []}]) == "sft"
    with pytest.raises(DataError, match="cannot detect"):
        detect_format([{"text": "x"}])


# --- conversational rendering ---------------------------------------------------------------


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def test_conversational_rendering(tmp_path: Path, bpe: PreTrainedTokenizerFast):
    rows = [
        {  # implicit prompt: the shared messages before the last reply
            "chosen": [msg("user", "hi"), msg("assistant", "hello")],
            "rejected": [msg("user", "hi"), msg("assistant", "go")],
        },
        {
            "chosen": [msg("user", "a"), msg("assistant", "x")],
            "rejected": [msg("user", "b"), msg("assistant", "y")],
        },
        {"chosen": [msg("user", "a")], "rejected": [msg("user", "a")]},
    ]
    path = write_jsonl(tmp_path / "conv.jsonl", rows)
    records, bad = load_records(path, tokenizer=bpe)
    assert bad.counts == {"conversation_prompt_mismatch": 1, "conversation_no_assistant_turn": 1}
    assert records == [
        {
            "prompt": "<|user|>hi<|end|><|assistant|>",
            "chosen": "hello<|end|>",
            "rejected": "go<|end|>",
            "margin": None,
            "index": 0,
        }
    ]
    raw, _ = load_records(path)  # no tokenizer: messages kept, rendered at tokenization
    assert raw[0]["prompt"] == [msg("user", "hi")]
    assert raw[0]["chosen"] == [msg("assistant", "hello")]
    from_messages = tokenize_preference(raw, bpe, max_length=64, max_prompt_length=32)
    assert from_messages == tokenize_preference(records, bpe, max_length=64, max_prompt_length=32)
    # explicit text prompt with full conversations (UltraFeedback style)
    uf = [
        {
            "prompt": "hi",
            "chosen": [msg("user", "hi"), msg("assistant", "hello")],
            "rejected": [msg("assistant", "go")],
        }
    ]
    (rec,), _ = normalize_rows(uf, tokenizer=bpe)
    assert (rec["prompt"], rec["chosen"], rec["rejected"]) == (
        records[0]["prompt"],
        "hello<|end|>",
        "go<|end|>",
    )


def test_chat_template_without_clean_prefix_raises(tmp_path: Path, words: PreTrainedTokenizerFast):
    tok = _wrap(Tokenizer.from_str(words.backend_tokenizer.to_str()))
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]\n{% endif %}"
    )
    rows = [
        {
            "prompt": [msg("user", "x")],
            "chosen": [msg("assistant", "y")],
            "rejected": [msg("assistant", "c1")],
        }
    ]
    with pytest.raises(DataError, match="row 0.*does not start with"):
        normalize_rows(rows, tokenizer=tok)


# --- collators ------------------------------------------------------------------------------


def test_preference_collator_matches_hand_written_tensors():
    examples = [
        {
            "prompt_ids": [1, 5, 6],
            "chosen_ids": [7, 2],
            "rejected_ids": [8, 9, 2],
            "margin": 0.5,
            "index": 3,
        },
        {"prompt_ids": [1, 5], "chosen_ids": [7], "rejected_ids": [2], "margin": 0.0, "index": 9},
    ]
    batch = PreferenceCollator(pad_token_id=0)(examples)
    expected_ids = torch.tensor(
        [
            [1, 5, 6, 7, 2, 0],
            [1, 5, 7, 0, 0, 0],
            [1, 5, 6, 8, 9, 2],
            [1, 5, 2, 0, 0, 0],
        ]
    )
    expected_attention = torch.tensor(
        [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    )
    expected_completion = torch.tensor(
        [[0, 0, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [0, 0, 1, 0, 0, 0]]
    )
    assert torch.equal(batch["input_ids"], expected_ids)
    assert torch.equal(batch["attention_mask"], expected_attention)
    assert torch.equal(batch["completion_mask"], expected_completion)
    assert torch.equal(batch["margin"], torch.tensor([0.5, 0.0]))
    assert batch["margin"].dtype == torch.float32 and batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["index"], torch.tensor([3, 9]))
    padded = PreferenceCollator(pad_token_id=0, pad_to_multiple_of=4)(examples)
    assert padded["input_ids"].shape == (4, 8)
    assert torch.equal(padded["input_ids"][:, :6], expected_ids)
    assert padded["attention_mask"][:, 6:].sum() == 0


def test_sft_and_prompt_collators():
    examples = [
        {"prompt_ids": [1, 5, 6], "completion_ids": [7, 2]},
        {"prompt_ids": [1], "completion_ids": [8]},
    ]
    batch = SFTCollator(pad_token_id=0)(examples)
    assert torch.equal(batch["input_ids"], torch.tensor([[1, 5, 6, 7, 2], [1, 8, 0, 0, 0]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]))
    assert torch.equal(batch["completion_mask"], torch.tensor([[0, 0, 0, 1, 1], [0, 1, 0, 0, 0]]))
    assert "margin" not in batch and "index" not in batch
    prompts = PromptCollator(pad_token_id=0)(examples)
    assert torch.equal(prompts["input_ids"], torch.tensor([[1, 5, 6], [0, 0, 1]]))
    assert torch.equal(prompts["attention_mask"], torch.tensor([[1, 1, 1], [0, 0, 1]]))


# --- BadRows ----------------------------------------------------------------------------------


def test_bad_rows_merge_dict_and_report():
    a, b = BadRows(max_examples=2), BadRows()
    for i in range(3):
        a.add("empty_chosen", i)
    b.add("empty_chosen", 10)
    b.add("hh_prompt_mismatch", 11)
    a.merge(b)
    assert a.as_dict() == {
        "total": 5,
        "by_reason": {"empty_chosen": 4, "hh_prompt_mismatch": 1},
        "examples": {"empty_chosen": [0, 1], "hh_prompt_mismatch": [11]},
        "truncated": 0,
    }
    report = a.report("data.jsonl")
    assert "dropped 5 bad row(s) from data.jsonl" in report
    assert "empty_chosen: 4 (rows 0, 1, ...)" in report
    assert BadRows().report() == "no bad rows"


# --- real data --------------------------------------------------------------------------------

HH_NAME = Path("shared") / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def hh_file() -> Path:
    here = Path(__file__).resolve()
    for root in (here.parents[2], here.parents[1]):
        if (root / HH_NAME).is_file():
            return root / HH_NAME
    pytest.skip(f"real HH-RLHF file not found at ../{HH_NAME} or ./{HH_NAME} (not in the repo)")


def test_real_hh_rlhf_harmless_test_counts():
    path = hh_file()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        assert sum(1 for _ in f) == 2312
    records, bad = load_records(str(path))
    assert len(records) + bad.total == 2312
    assert len(records) == 2303
    assert bad.counts == {"hh_prompt_mismatch": 5, "empty_chosen": 4}
    assert bad.examples == {
        "hh_prompt_mismatch": [1254, 1688, 1950, 1952, 2036],
        "empty_chosen": [86, 516, 925, 1103],
    }
    assert all(r["prompt"].endswith("\n\nAssistant:") for r in records)
    assert all(r["chosen"].startswith(" ") for r in records)


GOOD_LINE = b'{"prompt": "p", "chosen": "a good answer", "rejected": "a bad one"}\n'


@pytest.mark.parametrize(
    ("bad_line", "reason", "message"),
    [
        (b"{not json\n", "unreadable_line:not_json", "line 2: not JSON"),
        (b"[1, 2]\n", "unreadable_line:not_an_object", "line 2: not an object (a JSON list)"),
        (b"null\n", "unreadable_line:not_an_object", "line 2: not an object (a JSON NoneType)"),
        (b'"a string"\n', "unreadable_line:not_an_object", "line 2: not an object (a JSON str)"),
        (b'{"prompt": "p\xff"}\n', "unreadable_line:not_utf-8", "line 2: not UTF-8 (byte 13)"),
        (
            b'{"prompt": "\\ud800"}\n',
            "unreadable_line:a_lone_surrogate",
            "line 2: a lone surrogate",
        ),
    ],
)
def test_an_unreadable_json_line_is_counted_or_named_never_a_traceback(
    tmp_path, bad_line, reason, message
):
    from prefopt.data import DataError, load_records

    path = tmp_path / "pairs.jsonl"
    path.write_bytes(GOOD_LINE + bad_line + GOOD_LINE)
    records, bad = load_records(str(path))
    assert len(records) == 2 and bad.counts == {reason: 1} and bad.examples[reason] == [2]
    with pytest.raises(DataError, match=f"{path}: {re.escape(message)}"):
        load_records(str(path), on_bad_row="error")


def test_an_empty_json_lines_file_is_an_error_naming_it(tmp_path):
    from prefopt.data import DataError, load_records

    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=f"{path}: no records"):
        load_records(str(path))
    path.write_bytes(b"[1]\n\n")
    with pytest.raises(DataError, match="no records"):
        load_records(str(path))


GOOD_ROW = {"prompt": "p", "chosen": "a good answer", "rejected": "a bad one"}
GOOD_CSV_LINE = b"p,a good answer,a bad one\n"
CSV_HEADER = b"prompt,chosen,rejected\n"


def _json_array(*items: bytes) -> bytes:
    return b"[\n" + b",\n".join(items) + b"\n]\n"


@pytest.mark.parametrize(
    ("name", "content", "reason", "where", "message"),
    [
        (  # an element of a JSON array that is not an object
            "pairs.json",
            _json_array(json.dumps(GOOD_ROW).encode(), b"[1, 2]", json.dumps(GOOD_ROW).encode()),
            "unreadable_row:not_an_object",
            1,
            "row 1: not an object (a JSON list)",
        ),
        (
            "pairs.json",
            _json_array(
                json.dumps(GOOD_ROW).encode(),
                b'{"prompt": "\\udc00"}',
                json.dumps(GOOD_ROW).encode(),
            ),
            "unreadable_row:a_lone_surrogate",
            1,
            "row 1: a lone surrogate",
        ),
        (  # JSON lines under a .json name, as datasets accepts them
            "pairs.json",
            GOOD_LINE + b"{not json\n" + GOOD_LINE,
            "unreadable_line:not_json",
            2,
            "line 2: not JSON",
        ),
        (
            "pairs.csv",
            CSV_HEADER + GOOD_CSV_LINE + b"p,one,two,three\n" + GOOD_CSV_LINE,
            "unreadable_line:wrong_number_of_fields",
            3,
            "line 3: wrong number of fields (4; the header has 3)",
        ),
        (
            "pairs.csv",
            CSV_HEADER + GOOD_CSV_LINE + b'"p"x,a,b\n' + GOOD_CSV_LINE,
            "unreadable_line:not_csv",
            3,
            "line 3: not CSV",
        ),
        (
            "pairs.csv",
            CSV_HEADER + GOOD_CSV_LINE + b"p\xff,a,b\n" + GOOD_CSV_LINE,
            "unreadable_line:not_utf-8",
            3,
            "line 3: not UTF-8",
        ),
        (
            "pairs.csv.gz",
            gzip.compress(CSV_HEADER + GOOD_CSV_LINE * 2 + b'p,"never closed\n', mtime=0),
            "unreadable_line:not_csv",
            4,
            "line 4: not CSV (unexpected end of data)",
        ),
    ],
)
def test_a_bad_row_of_a_json_or_csv_file_is_counted_or_named_never_a_traceback(
    tmp_path, name, content, reason, where, message
):
    path = tmp_path / name
    path.write_bytes(content)
    records, bad = load_records(str(path))
    assert len(records) == 2 and bad.counts == {reason: 1} and bad.examples[reason] == [where]
    assert all(r["chosen"] == "a good answer" for r in records)
    with pytest.raises(DataError, match=f"^{re.escape(f'{path}: {message}')}"):
        load_records(str(path), on_bad_row="error")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.json", b"  \n", "the file is empty"),
        ("empty.csv", b"", "the file is empty (no header line)"),
        ("header.csv", CSV_HEADER, "no records (the file holds no rows)"),
        (
            "broken.json",
            _json_array(b'{"prompt": "p" "chosen": "a"}'),
            "line 2, column 16: not JSON",
        ),
        ("bytes.json", b'[{"prompt": "\xff"}]', "line 1: not UTF-8 (byte 13)"),
        ("string.json", b'"just text"', "not a JSON array of objects (a JSON str)"),
        (
            "columns.json",
            b'{"prompt": ["a", "b"], "chosen": ["c"]}',
            "an object of columns whose lists differ in length ([1, 2])",
        ),
        ("twice.csv", b"prompt,chosen,prompt\n", "line 1: column 'prompt' appears more than once"),
        ("bad.parquet", b"not parquet at all", "not a readable parquet file (ArrowInvalid:"),
        ("cut.jsonl.gz", gzip.compress(GOOD_LINE * 50, mtime=0)[:-12], "cannot be read ("),
        ("fields.json", b'[{"data": 1}]', "cannot detect the data format from fields ['data']"),
    ],
)
def test_an_unreadable_data_file_is_a_one_line_error_naming_it(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        load_records(str(path))
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "\n" not in str(caught.value)


def test_json_columns_and_a_single_object_read_as_rows(tmp_path):
    columns = tmp_path / "columns.json"
    columns.write_text(json.dumps({k: [v, v + "!"] for k, v in GOOD_ROW.items()}))
    records, bad = load_records(str(columns))
    assert [r["chosen"] for r in records] == ["a good answer", "a good answer!"] and not bad.total
    single = tmp_path / "single.json"
    single.write_text(json.dumps(GOOD_ROW, indent=2))
    records, _ = load_records(str(single))
    assert [(r["prompt"], r["index"]) for r in records] == [("p", 0)]


def test_csv_cells_are_text_except_margin_and_integer_ids(tmp_path):
    path = tmp_path / "typed.csv"
    path.write_text(
        "id,prompt,chosen,rejected,margin\n"
        "7,12,a good answer,a bad one,0.5\n"
        "x8,p,a good answer,a bad one,\n"
        "9,p,a good answer,a bad one,big\n"
    )
    records, bad = load_records(str(path))
    assert [(r["id"], r["prompt"], r["margin"]) for r in records] == [
        (7, "12", 0.5),
        ("x8", "p", None),
    ]
    assert bad.counts == {"wrong_type:margin": 1} and bad.examples["wrong_type:margin"] == [2]


def test_a_bad_data_file_ends_training_with_one_line_naming_it(tmp_path, capsys, tiny_pretrained):
    from prefopt.cli import main
    from tests.conftest import TINY

    data = tmp_path / "pairs.json"
    data.write_bytes(_json_array(json.dumps(GOOD_ROW).encode(), b'{"prompt": "p",, }'))
    args = [*TINY, f"model.tokenizer={tiny_pretrained}", "model.name_or_path=null"]
    code = main(["train", "dpo", *args, f"data.source={data}", f"output_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip() == (
        f"prefopt: training failed: DataError: {data}: line 3, column 16: not JSON "
        "(Expecting property name enclosed in double quotes)"
    )


def test_a_folder_datasets_cannot_read_is_a_one_line_error_naming_it(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.json").write_bytes(_json_array(b'{"prompt": "p",, }'))
    with pytest.raises(DataError) as caught:
        load_records(str(folder))
    assert str(caught.value).startswith(f"{folder}: cannot be read (")
    assert "\n" not in str(caught.value)
