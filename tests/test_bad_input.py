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


# --- property-based: random invalid recipes and malformed data ------------------------------

import contextlib  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from unittest import mock  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from prefopt.data import DataError, load_records  # noqa: E402

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORD = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(
    lambda w: w not in ("null", "true", "false", "nan", "inf", "on", "off", "yes", "no")
)
INTS = ["trainer.batch_size", "trainer.max_steps", "trainer.grad_accum", "eval.n_prompts"]
FLOATS = ["loss.beta", "trainer.lr", "data.max_unknown_fraction"]


def _invalid_override():
    """(override, what the message must name): each is invalid whatever else is given."""
    unknown = st.builds(
        lambda section, word: (f"{section}.{word}x9=1", f"{section}.{word}x9"),
        st.sampled_from(["loss", "trainer", "data", "model", "eval"]),
        WORD,
    )
    not_int = st.builds(lambda key, word: (f"{key}={word}", key), st.sampled_from(INTS), WORD)
    # trainer.max_steps may be 0 (evaluate the initial policy, a baseline); the others not
    not_positive = st.one_of(
        st.builds(
            lambda key, n: (f"{key}={n}", key),
            st.sampled_from([k for k in INTS if k != "trainer.max_steps"]),
            st.integers(-(10**6), 0),
        ),
        st.builds(
            lambda n: (f"trainer.max_steps={n}", "trainer.max_steps"), st.integers(-(10**6), -1)
        ),
    )
    not_finite = st.builds(
        lambda key, v: (f"{key}={v}", key),
        st.sampled_from(FLOATS),
        st.sampled_from(["nan", "inf", "-inf", "1e999"]),
    )
    out_of_range = st.sampled_from(
        [
            ("trainer.lr=-0.1", "trainer.lr"),
            ("data.max_unknown_fraction=1.5", "data.max_unknown_fraction"),
            ("model.lora.r=0", "model.lora"),
            ("trainer.adam_betas=[0.9]", "trainer.adam_betas"),
            ("eval.top_p=0", "eval sampling"),
            ("world.n_sft=-1", "n_sft"),
            ("trainer.precision=fp8", "trainer.precision"),
            ("loss.name=no_such_loss", "loss.name"),
        ]
    )
    unparsable = st.builds(
        lambda key, junk: (f"{key}={junk}", key),
        st.sampled_from(FLOATS + INTS),
        st.sampled_from(["[1", "{a: ", "'open", "[1, [2]", "}{"]),
    )
    no_equals = st.builds(lambda word: (f"loss.{word}", f"loss.{word}"), WORD)
    return st.one_of(
        unknown, not_int, not_positive, not_finite, out_of_range, unparsable, no_equals
    )


@FAST
@given(
    recipe=st.sampled_from(["dpo", "sft", "rm", "simpo"]),
    bad=st.lists(_invalid_override(), min_size=1, max_size=3, unique_by=lambda b: b[1]),
    good=st.sampled_from([[], ["trainer.max_steps=5"], ["loss.name=sigmoid"]]),
)
def test_random_invalid_overrides_exit_2_naming_each_problem_never_a_traceback(recipe, bad, good):
    err = io.StringIO()
    never_trains = mock.patch("prefopt.pipeline.run.train", side_effect=AssertionError("trained"))
    with never_trains, contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", recipe, *good, *(o for o, _ in bad), "output_dir=/nonexistent/x"])
    text = err.getvalue()
    assert code == 2, text
    assert text.startswith("prefopt: invalid recipe:") and "Traceback" not in text
    for _, needle in bad:
        assert needle in text, (needle, text)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELD = st.one_of(st.text(max_size=6), JSON)
ROW = st.fixed_dictionaries(
    {"prompt": FIELD, "chosen": FIELD, "rejected": FIELD},
    optional={"margin": JSON, "id": JSON, "scores": JSON, "metadata": JSON, "messages": JSON},
)
LINE = st.one_of(
    ROW.map(lambda row: json.dumps(row).encode()),
    JSON.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=24),
)
GOOD = {"prompt": "p", "chosen": "a good answer", "rejected": "a bad one"}


def _entered_training_validly(records: list[dict]) -> None:
    """What may enter training: text or messages, non-blank and different completions."""
    for record in records:
        assert isinstance(record["prompt"], str | list)
        for side in ("chosen", "rejected"):
            value = record[side]
            assert isinstance(value, str | list) and value
            if isinstance(value, str):
                assert value.strip()
        assert record["chosen"] != record["rejected"]
        margin = record.get("margin")
        assert margin is None or (isinstance(margin, float) and math.isfinite(margin))


def _load(name: str, content: bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        try:
            return load_records(str(path))
        except DataError as exc:  # a whole file that cannot be used: one line, naming it
            assert str(exc).startswith(str(path)) and "\n" not in str(exc)
            return None


@FAST
@given(lines=st.lists(LINE, max_size=12), good=st.integers(0, 3))
def test_random_json_lines_are_kept_valid_or_counted_never_a_crash(lines, good):
    content = b"\n".join([json.dumps(GOOD).encode()] * good + lines) + b"\n"
    loaded = _load("pairs.jsonl", content)
    if loaded is None:
        return
    records, bad = loaded
    _entered_training_validly(records)
    # every line is accounted for: kept, or counted as a bad row
    assert len(records) + bad.total == sum(1 for line in content.split(b"\n") if line.strip())


@FAST
@given(items=st.lists(st.one_of(ROW, JSON), max_size=10), good=st.integers(0, 3))
def test_random_json_arrays_are_kept_valid_or_counted_never_a_crash(items, good):
    rows = [GOOD] * good + items
    loaded = _load("pairs.json", json.dumps(rows).encode())
    if loaded is None:
        return
    records, bad = loaded
    _entered_training_validly(records)
    assert len(records) + bad.total == len(rows)


CELL = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)


@FAST
@given(
    rows=st.lists(st.lists(CELL, min_size=1, max_size=5), max_size=10),
    junk=st.lists(st.binary(max_size=16), max_size=3),
    good=st.integers(0, 3),
)
def test_random_csv_is_kept_valid_or_counted_never_a_crash(rows, junk, good):
    import csv

    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["prompt", "chosen", "rejected", "margin"])
    writer.writerows([["p", "a good answer", "a bad one", "0.5"]] * good + rows)
    content = text.getvalue().encode() + b"\n".join(junk)
    loaded = _load("pairs.csv", content)
    if loaded is None:
        return
    records, bad = loaded
    _entered_training_validly(records)
    if not junk:  # well-formed CSV: every record is kept or counted
        assert len(records) + bad.total == good + len(rows)


def _recipe_keys() -> list[str]:
    from omegaconf import OmegaConf

    from prefopt.config import Recipe, _all_keys

    keys = _all_keys(OmegaConf.structured(Recipe)) + ["loss.beta", "loss.nll_alpha"]
    return sorted(k for k in keys if k not in ("imports", "output_dir"))  # imports runs code


class _Trained(Exception):
    """The recipe was valid: it reached training (stopped here)."""


@FAST
@given(values=st.dictionaries(st.sampled_from(_recipe_keys()), JSON, min_size=1, max_size=4))
def test_random_recipe_files_are_validated_or_trained_never_a_traceback(values):
    import yaml

    nested: dict = {"base": "dpo"}
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            if not isinstance(node.get(parent), dict):
                node[parent] = {}
            node = node[parent]
        node[leaf] = value
    err = io.StringIO()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.yaml"
        path.write_text(yaml.safe_dump(nested))
        reached = mock.patch("prefopt.pipeline.run.train", side_effect=_Trained)
        try:
            with (
                reached,
                contextlib.redirect_stderr(err),
                contextlib.redirect_stdout(io.StringIO()),
            ):
                code = main(["train", str(path), f"output_dir={folder}/never"])
        except _Trained:
            return  # a valid recipe: validation had nothing to say
    text = err.getvalue()
    assert code == 2 and text.startswith("prefopt: invalid recipe:"), text
    assert "Traceback" not in text
