"""Shared fixtures: tiny recipes that run in seconds on 2 cores, and an isolated cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Small world and model: these recipes train in seconds.
TINY = [
    "world.n_sft=128",
    "world.n_sft_test=32",
    "world.n_train_pairs=128",
    "world.n_test_pairs=32",
    "world.n_ood_pairs=32",
    "world.n_eval_prompts=8",
    "model.tiny.layers=1",
    "model.tiny.hidden=32",
    "model.tiny.heads=2",
    "trainer.batch_size=8",
    "trainer.log_every=1",
    "trainer.progress_bar=false",
    "eval.enabled=false",
    "data.max_eval_rows=16",
]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ.setdefault("PREFOPT_CACHE", str(tmp_path_factory.mktemp("prefopt-cache")))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cli_train_dpo(output_dir: Path, *overrides: str) -> list[str]:
    """The command line of a tiny from-scratch `prefopt train dpo` into `output_dir`."""
    import sys

    return [
        sys.executable, "-m", "prefopt.cli", "train", "dpo", *TINY,
        "model.name_or_path=null", *overrides, f"output_dir={output_dir}",
    ]  # fmt: skip


def tiny_recipe(name: str, output_dir: Path | None, *overrides: str):
    from prefopt.config import load_recipe

    extra = [f"output_dir={output_dir}"] if output_dir is not None else []
    return load_recipe(name, [*TINY, *extra, *overrides])


def train_until_interrupted(recipe, step: int, monkeypatch) -> None:
    """Train `recipe` and stop it with a KeyboardInterrupt right after checkpoint-`step` is
    written, as a crash would; `Trainer.save_checkpoint` is restored afterwards."""
    import pytest

    from prefopt.pipeline.run import train
    from prefopt.trainers.base import Trainer

    original = Trainer.save_checkpoint

    def crash_after_checkpoint(self):
        path = original(self)
        if self.step == step:
            raise KeyboardInterrupt("simulated interruption")
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", crash_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(recipe)
    monkeypatch.setattr(Trainer, "save_checkpoint", original)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _save_tiny_pretrained(tmp_path_factory, name: str, *overrides: str) -> Path:
    import torch

    from prefopt.config import load_recipe
    from prefopt.models.loading import build_tiny_model, save_model
    from prefopt.world import build_world

    recipe = load_recipe("dpo", [*TINY, *overrides])
    world = build_world(recipe.world)
    tokenizer = world.tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(recipe.model.tiny, tokenizer)
    path = tmp_path_factory.mktemp(name)
    save_model(model, tokenizer, path)
    return path


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory) -> Path:
    """A tiny GPT-2 with the world's tokenizer, saved in Hugging Face format (a local 'hub')."""
    return _save_tiny_pretrained(tmp_path_factory, "tiny-pretrained")


@pytest.fixture(scope="session")
def tiny_pretrained_4bit(tmp_path_factory) -> Path:
    """As `tiny_pretrained`, but every linear layer is at least bitsandbytes' 4-bit block size
    (64) wide, so 4-bit kernels run on every CPU (AVX512-BF16 ones repack per 64-wide block)."""
    return _save_tiny_pretrained(tmp_path_factory, "tiny-pretrained-64", "model.tiny.hidden=64")
