"""Nothing lost, nothing silent (issue 26): a run folder belongs to one run, a resume continues
the run stored in its folder, and a recipe edited in Python is checked as strictly as YAML."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from prefopt.config import ConfigError, load_recipe, save_recipe, validate_recipe
from prefopt.pipeline.run import train
from prefopt.trainers.base import TrainingError
from tests.conftest import REPO, TINY, read_metrics, tiny_recipe

DPO = ["model.name_or_path=null", "trainer.max_steps=2"]


def _hold_lock(run_dir) -> subprocess.Popen:
    """Another process that holds the run folder's lock (as a training run does) until killed."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from prefopt.paths import run_folder_lock\n"
        "with run_folder_lock(Path(sys.argv[1])):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_in_a_busy_folder_fails_at_once_and_a_killed_holder_leaves_no_lock(tmp_path):
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        started = time.monotonic()
        with pytest.raises(TrainingError, match="in use by another run") as info:
            train(tiny_recipe("dpo", run, *DPO))
        assert time.monotonic() - started < 5  # at once: before any model loads
        assert f"pid {holder.pid}" in str(info.value) and "output_dir" in str(info.value)
        assert not (run / "metrics.jsonl").exists() and not (run / "recipe.yaml").exists()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, as in a crash
        holder.wait()
    # the lock file stays behind, but the kernel released the dead holder's lock
    assert (run / ".prefopt.lock").exists()
    summary, _ = train(tiny_recipe("dpo", run, *DPO))
    assert summary["steps"] == 2
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [1, 2]


def test_two_cli_runs_with_one_output_dir_the_second_exits_1_with_one_line(tmp_path):
    from tests.conftest import cli_train_dpo

    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        result = subprocess.run(
            cli_train_dpo(run, "trainer.max_steps=2"), capture_output=True, text=True
        )
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1, result.stderr
    assert "is in use by another run" in result.stderr and "Traceback" not in result.stderr
    assert not (run / "recipe.yaml").exists()


def _ppo(run, model, *extra):
    return tiny_recipe(
        "ppo",
        run,
        f"model.name_or_path={model}",
        "reward.scorer=world",
        "value.init=policy",
        "loss.minibatch_size=4",
        "rollout.max_new_tokens=6",
        "trainer.max_steps=2",
        *extra,
    )


def test_resume_refuses_a_folder_of_another_algorithm_both_ways_and_writes_nothing(
    tmp_path, tiny_pretrained
):
    ppo_run, dpo_run = tmp_path / "ppo", tmp_path / "dpo"
    train(_ppo(ppo_run, tiny_pretrained))
    train(tiny_recipe("dpo", dpo_run, *DPO))
    for run, other in ((ppo_run, tiny_recipe("dpo", ppo_run, *DPO, "resume=auto")),
                       (dpo_run, _ppo(dpo_run, tiny_pretrained, "resume=auto"))):  # fmt: skip
        before = {
            p.name: p.read_bytes()
            for p in run.iterdir()
            if p.is_file() and p.name != ".prefopt.lock"
        }
        with pytest.raises(TrainingError, match="holds another run") as info:
            train(other)
        message = str(info.value)
        assert "loss.name" in message and "resume=auto" in message
        after = {
            p.name: p.read_bytes()
            for p in run.iterdir()
            if p.is_file() and p.name != ".prefopt.lock"
        }
        assert after == before  # recipe.yaml, metrics.jsonl, summary.json untouched


def test_resume_allows_what_resuming_changes_and_names_anything_else(tmp_path):
    run = tmp_path / "run"
    train(tiny_recipe("dpo", run, *DPO))
    with pytest.raises(TrainingError, match=r"trainer\.lr: 0\.0002 -> 0\.001"):
        train(tiny_recipe("dpo", run, *DPO, "trainer.lr=1e-3", "resume=auto"))
    with pytest.raises(TrainingError, match=r"loss\.beta: 0\.1 -> 0\.2"):
        train(tiny_recipe("dpo", run, *DPO, "loss.beta=0.2", "resume=auto"))
    # longer, logged and saved differently, evaluated differently: the same run, continued
    summary, _ = train(
        tiny_recipe(
            "dpo",
            run,
            *DPO,
            "trainer.max_steps=4",
            "trainer.log_every=2",
            "trainer.save_every=1",
            "eval.n_prompts=4",
            "resume=auto",
        )  # fmt: skip
    )
    assert summary["steps"] == 4


def test_resume_on_another_process_count_may_scale_the_batch_to_keep_the_global_batch(
    tmp_path, monkeypatch
):
    """A checkpoint written by 2 processes with 4 rows each resumes in one process with 8 (the
    same global batch: docs/scaling.md's engine moves); any other batch is another run, and the
    message says what the global batch was and would be."""
    from prefopt.train import check_same_run

    run = tmp_path / "run"
    run.mkdir()
    stored = tiny_recipe("dpo", run, *DPO, "trainer.batch_size=4")
    save_recipe(stored, run / "recipe.yaml")
    checkpoint = run / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": 2, "processes": 2}))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_same_run(run, tiny_recipe("dpo", run, *DPO, "trainer.batch_size=8"), "auto")
    check_same_run(run, tiny_recipe("dpo", run, *DPO, "trainer.batch_size=4",
                                    "trainer.grad_accum=2"), str(checkpoint))  # fmt: skip
    with pytest.raises(TrainingError, match=r"global batch .*: 8 over 2 process\(es\) -> 4 over 1"):
        check_same_run(run, tiny_recipe("dpo", run, *DPO, "trainer.batch_size=4"), "auto")
    monkeypatch.setenv("WORLD_SIZE", "2")  # the same process count: the batch is the run's
    check_same_run(run, tiny_recipe("dpo", run, *DPO, "trainer.batch_size=4"), "auto")
    with pytest.raises(TrainingError, match=r"trainer\.batch_size: 4 -> 8"):
        check_same_run(run, tiny_recipe("dpo", run, *DPO, "trainer.batch_size=8"), "auto")


def test_a_recipe_edited_in_python_is_checked_as_strictly_as_yaml():
    recipe = load_recipe("dpo")
    recipe.loss.betta = 0.1  # a typo: a new attribute, which asdict would drop silently
    recipe.trainer.max_steps = "3"  # a string where an int is declared
    recipe.trainer.progress_bar = 1  # an int where a bool is declared
    with pytest.raises(ConfigError) as info:
        validate_recipe(recipe)
    problems = info.value.problems
    assert any("unknown key 'loss.betta'; did you mean 'loss.beta'" in p for p in problems)
    assert "trainer.max_steps: expected int, got '3' (str)" in problems
    assert "trainer.progress_bar: expected bool, got 1 (int)" in problems
    recipe = load_recipe("dpo")
    recipe.trainer.lr = 1  # an int where a float is declared: YAML allows it, so does Python
    recipe.trainer.max_grad_norm = None  # optional
    assert validate_recipe(recipe).trainer.lr == 1


def test_max_steps_0_is_documented_as_the_baseline_it_is():
    """docs/recipes.md said ``>= 1`` while 0 is accepted on purpose (it evaluates the initial
    policy: rlhf_vs_sft's SFT and best-of-n rows)."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "recipes.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith("| `trainer.max_steps`"))
    assert ">= 0" in row and "0" in row
    assert load_recipe("dpo", ["trainer.max_steps=0"]).trainer.max_steps == 0
    with pytest.raises(ConfigError, match="trainer.max_steps must be >= 0"):
        load_recipe("dpo", ["trainer.max_steps=-1"])


# --------------------------------------------------------------------------- data


def _world_tokenizer():
    from prefopt.config import load_recipe
    from prefopt.world import build_world

    return build_world(load_recipe("dpo", TINY).world).tokenizer()


def _write_jsonl(path, rows) -> str:
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


GOOD_ROW = {"prompt": "a question", "chosen": "a good answer", "rejected": "a bad one"}


def test_a_200_mb_row_is_a_counted_bad_row_read_in_bounded_memory(tmp_path):
    """The 200 MB row is never tokenized: its field is over data.max_field_chars. In a child
    process whose address space is limited to what its imports use plus 1.5 GB (the row itself
    is 200 MB; before the bound a 10 MB row alone took 2.8 GB to tokenize, a 200 MB one got the
    process killed at 22 GB): loading and tokenizing succeed, and the peak resident memory of
    that part (VmHWM, reset once the tokenizer is built: building the world on an empty cache
    peaks higher than the rest) grows by less than 1.5 GB."""
    path = tmp_path / "pairs.jsonl"
    with path.open("w") as f:
        f.write('{"prompt": "p", "chosen": "' + "word " * 40_000_000 + '", "rejected": "no"}\n')
        f.write('{"prompt": "p", "chosen": "yes", "rejected": "no"}\n')
    code = (
        "import resource, sys\n"
        "from prefopt.data import load_records, tokenize_preference\n"
        "from tests.test_reliability import _world_tokenizer\n"
        "tok = _world_tokenizer()\n"
        # a hard limit: the address space of the imports plus 1.5 GB, no more
        "size = [l for l in open('/proc/self/status') if l.startswith('VmSize')][0]\n"
        "limit = int(size.split()[1]) * 1024 + 1536 * 2**20\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        "def mb(key):\n"
        "    line = [l for l in open('/proc/self/status') if l.startswith(key)][0]\n"
        "    return int(line.split()[1]) / 1024\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"  # the peak from here on
        "before = mb('VmRSS')\n"
        "records, bad = load_records(sys.argv[1], tokenizer=tok)\n"
        "examples = tokenize_preference(records, tok, max_length=96, max_prompt_length=48)\n"
        "print(len(examples), bad.as_dict()['by_reason'], round(mb('VmHWM') - before))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]
    head, _, peak = result.stdout.strip().rpartition(" ")
    kept, _, reasons = head.partition(" ")
    growth_mb = int(peak)
    assert kept == "1" and reasons == "{'field_too_long:chosen': 1}", result.stdout
    assert growth_mb < 1536, f"the peak grew by {growth_mb} MB"


def test_max_field_chars_is_a_setting_and_counts_messages_too(tmp_path):
    from prefopt.data import load_records

    rows = [
        GOOD_ROW,
        {"prompt": "p", "chosen": "x" * 101, "rejected": "no"},
        {"prompt": [{"role": "user", "content": "y" * 60}, {"role": "user", "content": "y" * 60}],
         "chosen": "ok", "rejected": "no"},
    ]  # fmt: skip
    source = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    records, bad = load_records(source, max_field_chars=100)
    assert [r["index"] for r in records] == [0]
    assert bad.as_dict()["by_reason"] == {"field_too_long:chosen": 1, "field_too_long:prompt": 1}
    records, bad = load_records(source, max_field_chars=200)
    assert len(records) == 3 and bad.total == 0


def test_every_row_truncated_is_counted_and_reported(tmp_path):
    from prefopt.data import BadRows, load_records, tokenize_preference

    tok = _world_tokenizer()
    long_words = " ".join(["answer"] * 200)
    rows = [{"prompt": "question", "chosen": long_words, "rejected": "no"}] * 3
    records, bad = load_records(_write_jsonl(tmp_path / "long.jsonl", rows), tokenizer=tok)
    examples = tokenize_preference(records, tok, max_length=16, max_prompt_length=8, bad_rows=bad)
    assert len(examples) == 3 and bad.total == 0
    assert (bad.truncated, bad.kept) == (3, 3) and bad.as_dict()["truncated"] == 3
    assert "truncated 3 of 3 kept row(s)" in bad.report() and "every row" in bad.report()
    # a row that fits is not counted
    fresh = BadRows()
    tokenize_preference(records[:1], tok, max_length=400, max_prompt_length=8, bad_rows=fresh)
    assert (fresh.truncated, fresh.kept, fresh.noteworthy) == (0, 1, False)


def test_empty_prompts_are_bad_rows_unless_allowed(tmp_path):
    from prefopt.data import load_records

    rows = [GOOD_ROW, {**GOOD_ROW, "prompt": ""}, {**GOOD_ROW, "prompt": "  \n"}]
    source = _write_jsonl(tmp_path / "pairs.jsonl", rows)
    records, bad = load_records(source)
    assert len(records) == 1 and bad.as_dict()["examples"] == {"empty_prompt": [1, 2]}
    records, bad = load_records(source, allow_empty_prompt=True)
    assert len(records) == 3 and bad.total == 0


def test_a_file_with_no_usable_row_stops_the_run_with_the_reasons(tmp_path):
    rows = [{**GOOD_ROW, "prompt": ""}] * 20
    source = _write_jsonl(tmp_path / "empty-prompts.jsonl", rows)
    from tests.conftest import cli_train_dpo

    result = subprocess.run(
        cli_train_dpo(tmp_path / "run", f"data.source={source}", "data.eval_split=null"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"no usable training row in data.source={source}" in result.stderr
    assert "empty_prompt: 20" in result.stderr and "Traceback" not in result.stderr


def test_unknown_chat_roles_and_template_refusals_are_counted_bad_rows(tmp_path):
    from prefopt.data import DataError, load_records

    tok = _world_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('this template takes no system turn') }}{% endif %}"
        "{{ m['content'] }} {% endfor %}"
    )

    def chat(role: str, prompt: str = "question") -> dict:
        return {
            "prompt": [{"role": role, "content": prompt}],
            "chosen": [{"role": "assistant", "content": "answer"}],
            "rejected": [{"role": "assistant", "content": "other"}],
        }

    source = _write_jsonl(
        tmp_path / "chat.jsonl", [chat("user"), chat("robot"), chat("system"), chat("user")]
    )
    records, bad = load_records(source, tokenizer=tok)
    assert [r["index"] for r in records] == [0, 3]
    assert bad.as_dict()["examples"] == {"chat_template_error": [2], "unknown_role:prompt": [1]}
    records, bad = load_records(source)  # without a tokenizer: roles still checked
    assert bad.as_dict()["examples"] == {"unknown_role:prompt": [1]}
    with pytest.raises(DataError, match=r"row 1: bad row \(unknown_role:prompt\)"):
        load_records(source, tokenizer=tok, on_bad_row="error")
    source = _write_jsonl(tmp_path / "system.jsonl", [chat("user"), chat("system")])
    with pytest.raises(DataError, match=r"row 1: bad row \(chat_template_error: .*no system turn"):
        load_records(source, tokenizer=tok, on_bad_row="error")


# --------------------------------------------------------------------------- model mistakes


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda d: d.mkdir(), "the folder is empty"),
        (
            lambda d: (d.mkdir(), (d / "config.json").write_text("{}")),
            "not a model folder, no weights (*.safetensors), tokenizer files",
        ),
        (lambda d: None, "no such folder (a local path"),
    ],
    ids=["empty", "config-only", "missing"],
)
def test_a_model_folder_that_cannot_load_is_one_line_before_anything_loads(tmp_path, make, needle):
    folder = tmp_path / "model"
    make(folder)
    with pytest.raises(ConfigError) as info:
        train(tiny_recipe("dpo", tmp_path / "run", f"model.name_or_path={folder}"))
    (problem,) = info.value.problems
    assert problem.startswith(f"model.name_or_path={folder}: ") and needle in problem
    assert "\n" not in problem and not (tmp_path / "run").exists()


def test_a_missing_relative_path_is_a_path_not_a_hub_name(tmp_path, monkeypatch):
    from prefopt.models.loading import model_source_problem

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert "no such folder" in model_source_problem("models/my-sft", "model.name_or_path")
    assert "no such folder" in model_source_problem("./my-sft", "model.name_or_path")
    assert "no such folder" in model_source_problem("~/nowhere/at/all", "model.name_or_path")
    assert model_source_problem("EleutherAI/pythia-160m", "model.name_or_path") is None  # hub
    assert model_source_problem("gpt2", "model.name_or_path") is None


def test_lora_target_modules_are_checked_against_the_models_layers(tmp_path):
    recipe = tiny_recipe(
        "dpo", tmp_path / "run", *DPO, "model.lora.r=4", "model.lora.target_modules=[c_attn,q_proj]"
    )
    with pytest.raises(ConfigError) as info:
        train(recipe)
    (problem,) = info.value.problems
    assert problem.startswith("model.lora.target_modules: 'q_proj' names no module of GPT2")
    assert "c_attn, c_fc, c_proj" in problem and "'c_attn'" not in problem.split(";")[0]


def test_zero_launch_without_deepspeed_names_the_install_command():
    pytest.importorskip("prefopt")  # the project's venv runs make
    try:
        import deepspeed  # noqa: F401

        pytest.skip("DeepSpeed is installed here: the launch would start")
    except ImportError:
        pass
    result = subprocess.run(
        ["make", "--no-print-directory", "train", "LAUNCH=zero2", f"PY={sys.executable}",
         "STAMP=Makefile"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "LAUNCH=zero2 needs DeepSpeed" in result.stdout and "[deepspeed]" in result.stdout


# --------------------------------------------------------------------------- long silences


def test_log_lines_carry_elapsed_time_and_time_left_and_the_gold_evaluation_reports(tmp_path):
    from tests.conftest import cli_train_dpo

    result = subprocess.run(
        cli_train_dpo(
            tmp_path / "run", "trainer.max_steps=4", "trainer.log_every=2",
            "trainer.progress_bar=true", "eval.enabled=true", "eval.n_prompts=4",
            "eval.samples_per_prompt=1",
        ),
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    train = [line for line in lines if line.startswith("train: step")]
    assert [line.split(" (")[0] for line in train] == ["train: step 2/4", "train: step 4/4"]
    assert all(", elapsed " in line and " left" in line for line in train), train
    gold = [line for line in lines if line.startswith("gold evaluation")]
    assert [line.split(": ", 1)[1].split(" (")[0] for line in gold] == ["1/4", "2/4", "3/4", "4/4"]
    assert "test: policy sampled" in gold[0] and "ood: reference sampled" in gold[3]
    assert all("elapsed" in line for line in gold) and "left" in gold[0]


def test_a_world_model_build_is_announced_and_ctrl_c_prints_a_command_that_works(
    tmp_path, monkeypatch, capsys
):
    """Ctrl-C while ``world:sft`` is being built (before the run folder exists): the hint is
    the same command (the build resumes from its checkpoint), not a resume of a folder that
    was never created; running it finishes the build and the run."""
    from prefopt.cli import main
    from prefopt.trainers.base import Trainer

    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path / "cache"))
    original = Trainer.training_step

    def interrupt_the_sft_build(self, window):
        if self.recipe.name == "sft" and self.step == 3:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return original(self, window)

    monkeypatch.setattr(Trainer, "training_step", interrupt_the_sft_build)
    command = ["train", "dpo", *TINY, "trainer.max_steps=2", f"output_dir={tmp_path / 'run'}"]
    assert main(command) == 130
    out, err = capsys.readouterr()
    assert "building world:sft for model.name_or_path=world:sft: the world's SFT policy" in out
    assert "300 steps" in out and "roughly" in out and "cached in" in out
    hint = err.split("Resume with:\n", 1)[1].splitlines()[0]
    assert hint.strip().startswith("prefopt train dpo ") and "resume=auto" not in hint
    assert "not created" in out and not (tmp_path / "run").exists()
    monkeypatch.setattr(Trainer, "training_step", original)
    assert main(hint.split("   (")[0].split()[1:]) == 0  # the printed command, as typed
    out, _ = capsys.readouterr()
    assert "(resuming its checkpoint)" in out and "resumed from" in out
    assert (tmp_path / "run" / "summary.json").exists()


# --------------------------------------------------------------------------- fuzzing
# Hypothesis over recipes edited in Python and over data rows through loading and tokenization:
# every case ends in a valid result or a clear error, never a traceback. With the fuzz tests of
# tests/test_bad_input.py, CI runs more than 1,000 generated cases (FUZZ_CASES below).

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ_CASES = 300
FUZZ = settings(
    max_examples=FUZZ_CASES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
    st.text(max_size=6), st.lists(st.integers(0, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip


def _section_fields():
    import dataclasses

    recipe = load_recipe("dpo")
    out = []
    for f in dataclasses.fields(recipe):
        value = getattr(recipe, f.name)
        if dataclasses.is_dataclass(value):
            out += [(f.name, g.name) for g in dataclasses.fields(value)] + [(f.name, "betta")]
    return out


SECTION_FIELDS = _section_fields()
DPO_RECIPE = load_recipe("dpo")


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(SECTION_FIELDS), VALUE), min_size=1, max_size=3))
def test_random_python_edits_of_a_recipe_validate_or_name_the_key(edits):
    import copy

    recipe = copy.deepcopy(DPO_RECIPE)
    for (section, name), value in edits:
        setattr(getattr(recipe, section), name, value)
    try:
        validate_recipe(recipe)
    except ConfigError as exc:
        assert exc.problems and all("\n" not in p for p in exc.problems)
        named = {f"{section}.{name}" for (section, name), _ in edits}
        named |= {section for (section, _), _ in edits}
        text = " ".join(exc.problems)
        assert any(key in text for key in named) or "model.dtype" in text, (edits, text)


ROLE = st.sampled_from(["user", "assistant", "system", "robot", "", "tool"])
MESSAGE = st.fixed_dictionaries({"role": ROLE, "content": st.text(max_size=12)})
FIELD = st.one_of(st.text(max_size=40), st.lists(MESSAGE, max_size=3), VALUE)
ROW = st.fixed_dictionaries({"prompt": FIELD, "chosen": FIELD, "rejected": FIELD})


def _fuzz_tokenizer():
    tok = _world_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('no system turn') }}{% endif %}"
        "{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return tok


FUZZ_TOKENIZER = _fuzz_tokenizer()


@settings(FUZZ, max_examples=3 * FUZZ_CASES)
@given(
    rows=st.lists(ROW, min_size=1, max_size=6),
    max_field_chars=st.integers(1, 50),
    max_length=st.integers(2, 24),
)
def test_random_rows_load_and_tokenize_or_are_counted_never_a_crash(
    rows, max_field_chars, max_length
):
    from prefopt.data import BadRows, DataError, normalize_rows, tokenize_preference

    try:
        records, bad = normalize_rows(
            rows, tokenizer=FUZZ_TOKENIZER, max_field_chars=max_field_chars, format="preference"
        )
    except DataError as exc:  # the template cannot split prompt from completion: one line
        assert str(exc).startswith("<rows>: row ")
        return
    assert len(records) + bad.total == len(rows)
    for record in records:
        assert all(isinstance(record[k], str) for k in ("prompt", "chosen", "rejected"))
        assert record["prompt"].strip() and len(record["chosen"]) <= 10**6
    counted = BadRows()
    examples = tokenize_preference(
        records, FUZZ_TOKENIZER, max_length=max_length, max_prompt_length=max_length // 2 or 1,
        bad_rows=counted,
    )  # fmt: skip
    assert len(examples) + counted.total == len(records) and counted.kept == len(examples)
    for example in examples:
        assert len(example["prompt_ids"]) + len(example["chosen_ids"]) <= max_length
