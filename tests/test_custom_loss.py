"""The custom-loss example registers through `imports:` and trains."""

import math

import torch

from prefopt.losses.base import PairLogps
from prefopt.pipeline.run import train
from tests.conftest import REPO, tiny_recipe


def test_example_is_short():
    code = [
        line
        for line in (REPO / "examples" / "custom_loss.py").read_text().splitlines()
        if line.strip() and not line.startswith(("#", '"""', "    loss =", "Train it", "(the"))
    ]
    assert len(code) <= 30


def test_custom_loss_trains_from_its_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = tiny_recipe(
        str(REPO / "examples" / "custom_loss.yaml"),
        tmp_path / "run",
        "model.name_or_path=null",
        "trainer.max_steps=3",
    )
    assert recipe.loss.name == "exponential"
    summary, run_dir = train(recipe)
    assert summary["steps"] == 3
    # first step: the policy equals its reference, z = 0, exp(0) = 1
    first = (run_dir / "metrics.jsonl").read_text().splitlines()[0]
    assert '"loss": 1.0,' in first

    from prefopt.registry import get_loss

    loss = get_loss("exponential").build(recipe.loss)
    pol = PairLogps(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.ones(1), torch.ones(1))
    ref = PairLogps(torch.tensor([-2.0]), torch.tensor([-2.0]), torch.ones(1), torch.ones(1))
    assert math.isclose(loss(pol, ref).loss.item(), math.exp(-0.2), rel_tol=1e-6)


def test_prefopt_train_stays_the_function_after_the_submodule_is_imported():
    import importlib

    import prefopt

    first = prefopt.train
    importlib.import_module("prefopt.train")  # what any `from prefopt.train import ...` does
    import prefopt.train  # noqa: F401

    assert callable(prefopt.train) and prefopt.train is first
    assert prefopt.train.__name__ == "train" and prefopt.load_recipe("dpo").loss.name == "sigmoid"


def test_the_python_api_example_of_the_docs_runs_as_written(tmp_path, monkeypatch):
    """docs/python.md builds a recipe and a loss without YAML: its first code block runs."""
    import re

    from tests.conftest import REPO

    text = (REPO / "docs" / "python.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # its output_dir is relative: runs/exp-margin
    namespace: dict = {"__name__": "docs_python_example"}
    exec(compile(code, "docs/python.md", "exec"), namespace)
    summary, run_dir = namespace["summary"], namespace["run_dir"]
    assert str(run_dir) == "runs/exp-margin" and (tmp_path / run_dir / "model").is_dir()
    assert summary["steps"] == 20 and summary["recipe"] == "exp-margin"
    assert isinstance(summary["eval"]["gold_reward"], float)
    from prefopt.config import load_recipe

    saved = load_recipe(tmp_path / run_dir / "recipe.yaml")  # the loss is registered here
    assert saved.loss.name == "exp_margin" and saved.loss.beta == 0.2
