"""Bad input from the command line: a clear message and the right exit status, never a
traceback, and nothing wrong trains silently."""

from __future__ import annotations

import json

import pytest

from prefopt.cli import main
from tests.conftest import TINY

ENGLISH = [
    {"prompt": "How do I bake bread?", "chosen": "Mix flour and water.", "rejected": "No idea."},
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Berlin."},
]


def _english(tmp_path):
    path = tmp_path / "english.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ENGLISH))
    return path


def test_english_data_with_the_worlds_tokenizer_is_refused_before_anything_trains(tmp_path, capsys):
    data = _english(tmp_path)
    run = tmp_path / "run"
    # from world:sft: refused before the world's SFT model would be trained for it
    assert main(["train", "dpo", *TINY, f"data.source={data}", f"output_dir={run}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not run.exists()
    assert (
        f"data.source={data}: 100% of its tokens are unknown to the tokenizer (the world's, of "
        "model.name_or_path=world:sft), e.g. row 0: 'How do I bake bread?'; training would see "
        "only '<unk>'. Set model.name_or_path (or model.tokenizer)"
    ) in err


def test_the_trainer_refuses_data_its_tokenizer_cannot_read_unless_allowed(
    tmp_path, capsys, tiny_pretrained
):
    data = _english(tmp_path)
    common = [
        *TINY,
        "model.name_or_path=null",
        f"model.tokenizer={tiny_pretrained}",
        f"data.source={data}",
        "trainer.batch_size=2",
        "trainer.max_steps=1",
    ]
    assert main(["train", "dpo", *common, f"output_dir={tmp_path / 'a'}"]) == 2
    err = capsys.readouterr().err
    assert f"unknown to the tokenizer ({tiny_pretrained})" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()
    # the share allowed is a setting: with all of it allowed the same data trains
    allowed = ["data.max_unknown_fraction=1", f"output_dir={tmp_path / 'b'}"]
    assert main(["train", "dpo", *common, *allowed]) == 0
    assert (tmp_path / "b" / "summary.json").exists()


def test_the_unknown_share_counts_tokens_of_prompts_and_completions(tiny_pretrained):
    from transformers import AutoTokenizer

    from prefopt.data.tokenize import unknown_token_share

    tokenizer = AutoTokenizer.from_pretrained(tiny_pretrained)
    word = tokenizer.convert_ids_to_tokens(10)
    rows = [{"prompt": f"{word} {word} zzz", "chosen": word, "rejected": "qqq", "index": 3}]
    share, first = unknown_token_share(rows, tokenizer)
    assert share == pytest.approx(2 / 5) and first is rows[0]
    assert unknown_token_share([{"prompt": word, "chosen": word}], tokenizer) == (0.0, None)
