"""The docs' commands are tests: every fenced shell block of README.md and docs/*.md runs, or
says in the markdown why it cannot run here, so the docs cannot drift from the code.

A shell block is a fenced block marked ``bash``/``sh``/``shell``/``console``, or an unmarked
one whose lines start with a command (``prefopt``, ``make``, ``python``, ``accelerate``) or a
``$`` prompt. The line before its fence may hold an annotation the tests read::

    <!-- docs-test: skip: REASON -->          the whole block is not run here, and why
    <!-- docs-test: skip 3-4: REASON -->      its command lines 3 and 4 are not (1-based)
    <!-- docs-test: transcript -->            ``$ command`` lines followed by their output:
                                              the command runs, and each output line must
                                              appear in what it prints ("..." and "(...)"
                                              stand for any text)

Every other command must be one the runner can make tiny (:func:`tiny_command`): ``prefopt
recipes | train | eval | plot | ablate`` and ``make train | ablate`` on shipped recipes, with
``runs/<recipe>-<stamp>`` standing for the run an earlier command of the same block made.
``test_every_shell_block_is_run_or_explicitly_skipped`` (in ``make test``) checks the
classification; the transcripts run in ``make test`` too (each fails before a model loads);
the runnable blocks run at tiny size in ``make test`` too (CI), all sharing one cache (one tiny
world), in a temporary working directory.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.M | re.S)
NOTE = re.compile(r"<!-- docs-test: (skip|transcript)(?: ([\d,-]+))?(?:: (.+?))? -->\s*$")
SHELL = ("bash", "sh", "shell", "console")
COMMANDS = ("prefopt", "make", "python", "accelerate", "torchrun", "$")
STAMPED = re.compile(r"runs/([a-z0-9_]+)-(\d{8}-\d{6}|\.\.\.)")
# what makes a command tiny: the test world and model, two steps, a small gold evaluation
SMALL = [*TINY, "trainer.max_steps=2", "eval.enabled=true", "eval.n_prompts=4",
         "eval.samples_per_prompt=1", "eval.max_new_tokens=6"]  # fmt: skip
# and no world model to train first: the policy starts from a tiny saved model (the
# `tiny_pretrained` fixture), online runs are scored by the gold reward (the world's SFT policy
# and reward model take minutes to train)
NO_WORLD_MODELS = ["model.name_or_path={model}", "reward.scorer=world", "value.init=policy"]


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence
    commands: list[str]  # continuation lines joined, comments and blanks left out
    note: str | None = None  # skip | transcript
    skipped: set[int] = field(default_factory=set)  # 1-based command numbers
    reason: str = ""
    text: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def shell_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            lang, body = match.group(1), match.group(2)
            lines = body.splitlines()
            starts = [ln.strip().split(" ", 1)[0] for ln in lines if ln.strip()]
            if lang not in SHELL and not (lang == "" and starts and starts[0] in COMMANDS):
                continue
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            block = Block(path, text[: match.start()].count("\n") + 1, _commands(body), text=body)
            note = NOTE.match(before.strip())
            if note:
                block.note, block.reason = note.group(1), (note.group(3) or "").strip()
                if note.group(2):
                    block.skipped = _numbers(note.group(2))
                elif block.note == "skip":
                    block.skipped = set(range(1, len(block.commands) + 1))
            blocks.append(block)
    return blocks


def _commands(body: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(re.sub(r"\s+#.*$", "", line))
    return out


def _numbers(spec: str) -> set[int]:
    found: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        found |= set(range(int(first), int(last or first) + 1))
    return found


def tiny_command(command: str, model: str = "null") -> list[str] | None:
    """The command as the runner runs it (``python -m prefopt.cli ...`` with tiny overrides,
    the policy starting from ``model``), or None when it is not a form the runner knows."""
    from prefopt.config import list_recipes

    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if any(w.startswith(("<", "/")) or "my_" in w or "..." in STAMPED.sub("", w) for w in words):
        return None  # a placeholder, a file of the reader's, or a folder that is not here
    if words[:2] == ["make", "train"]:
        args = dict(w.split("=", 1) for w in words[2:] if "=" in w)
        if set(args) - {"RECIPE", "ARGS"}:
            return None  # LAUNCH=...: several processes, GPUs for DeepSpeed
        words = ["prefopt", "train", args.get("RECIPE", "dpo"), *shlex.split(args.get("ARGS", ""))]
    if words[:2] == ["make", "ablate"]:
        args = dict(w.split("=", 1) for w in words[2:] if "=" in w)
        words = ["prefopt", "ablate", args["ABLATION"], f"SIZE={args.get('SIZE', 'tiny')}"]
    if not words or words[0] != "prefopt" or len(words) < 2:
        return None
    sub, rest = words[1], words[2:]
    cli = [sys.executable, "-m", "prefopt.cli", sub]
    if sub == "recipes":
        return cli
    if sub in ("plot", "eval") and rest:
        return [*cli, *rest]
    if sub == "train" and rest:
        recipe = rest[0]
        made_here = recipe.startswith("runs/") and recipe.endswith("/recipe.yaml")
        if recipe not in list_recipes() and not STAMPED.match(recipe) and not made_here:
            return None
        if any("/" in w and not w.startswith("output_dir=runs/") for w in rest[1:]):
            return None  # a hub model or dataset, a file of the reader's
        from_scratch = (
            [] if any(w.startswith("model.") for w in rest) else ["model.name_or_path=null"]
        )
        return [*cli, *rest, *SMALL, *from_scratch]
    if sub == "ablate" and rest:
        if "SIZE=full" in rest or "--size" in rest:
            return None
        return [*cli, *rest, *SMALL, *_no_world_models(model)]
    return None


def _no_world_models(model: str) -> list[str]:
    return [o.format(model=model) for o in NO_WORLD_MODELS]


def test_every_shell_block_is_run_or_explicitly_skipped():
    """Each command of each shell block either runs at tiny size or sits under a skip
    annotation with a reason; a transcript has ``$`` commands. Lists every offender."""
    problems = []
    blocks = shell_blocks()
    assert len(blocks) >= 20  # the parser found the docs' blocks
    for block in blocks:
        if block.note == "transcript":
            if not any(c.startswith("$ ") for c in block.commands):
                problems.append(f"{block.where}: a transcript without a '$ command' line")
            continue
        if block.note == "skip" and not block.reason:
            problems.append(f"{block.where}: a skip annotation needs a reason")
        for number, command in enumerate(block.commands, 1):
            if number not in block.skipped and tiny_command(command) is None:
                problems.append(f"{block.where}: command {number} cannot run here: {command}")
        problems += [
            f"{block.where}: skip names command {n}, the block has {len(block.commands)}"
            for n in block.skipped
            if n > len(block.commands)
        ]
    assert not problems, "\n".join(problems)


def transcripts() -> list[tuple[str, str, list[str]]]:
    out = []
    for block in shell_blocks():
        if block.note != "transcript":
            continue
        command, expected = None, []
        for line in [*block.text.splitlines(), "$ "]:
            if line.startswith("$ "):
                if command:
                    out.append((block.where, command, expected))
                command, expected = line[2:].strip(), []
            elif line.strip():
                expected.append(line.strip())
    return out


@pytest.mark.parametrize(("where", "command", "expected"), transcripts(), ids=lambda v: str(v)[:40])
def test_a_transcripts_command_prints_what_the_docs_show(
    where, command, expected, tmp_path, capsys, monkeypatch
):
    from prefopt.cli import main

    words = shlex.split(command)
    assert words[0] == "prefopt", where
    monkeypatch.chdir(tmp_path)
    main(words[1:])
    done = capsys.readouterr()
    printed = done.out + done.err
    for line in expected:
        position = 0
        for piece in re.split(r"\(\.\.\.\)|\.\.\.", line):
            found = printed.find(piece.strip(), position)
            assert found >= 0, f"{where}: {command!r} did not print {piece.strip()!r}:\n{printed}"
            position = found + len(piece.strip())


# every runnable block at tiny size, in CI's `make test`: about 4 CPU-minutes on 2 free cores
@pytest.mark.parametrize(
    "block", [b for b in shell_blocks() if b.note != "transcript"], ids=lambda b: b.where
)
def test_a_docs_block_runs_at_tiny_size(block, tmp_path, tiny_pretrained):
    made: dict[str, Path] = {}  # recipe -> the run an earlier command made

    def run(command: str) -> None:
        args = tiny_command(command, str(tiny_pretrained))
        assert args is not None
        for recipe in {m.group(1) for a in args for m in STAMPED.finditer(a)} - set(made):
            run(f"prefopt train {recipe}")  # runs/<recipe>-...: a run the reader made before
        args = [STAMPED.sub(lambda m: str(made[m.group(1)]), a) for a in args]
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=600, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert done.returncode == 0, f"{block.where}: {command}\n{done.stderr[-3000:]}"
        last = (done.stdout.strip().splitlines() or [""])[-1]
        if last.startswith("run directory: ") and args[3] == "train":
            run_dir = Path(last.removeprefix("run directory: "))
            made[Path(args[4]).name if "/" not in args[4] else args[4]] = tmp_path / run_dir

    for number, command in enumerate(block.commands, 1):
        if number not in block.skipped:
            run(command)
