"""Every shipped recipe trains for two steps at tiny size, from a local pretrained folder."""

import pytest

import prefopt.losses  # noqa: F401  (registers the losses)
from prefopt.config import list_recipes, load_recipe
from prefopt.pipeline.run import train
from prefopt.pipeline.stages import is_staged
from prefopt.registry import get_loss
from tests.conftest import tiny_recipe

EXTRA = {
    "armorm": ["loss.gate_hidden=[16]", "trainer.batch_size=16"],
    # two steps never reach an epoch's end: IDS would be refused without a step schedule
    "rm_ids": ["smoothing.update_every=1"],
}
# online recipes score with the gold reward here: world:rm would train a reward model first
# (every recipe whose loss is a policy-loss form, found from the registry, so that a new one
# needs no line here)
ONLINE_EXTRA = ["reward.scorer=world", "value.init=policy", "trainer.batch_size=4"]
EXTRA["gdpo"] = ["trainer.batch_size=4"]  # its rewards are the world's gold objectives


def extra_overrides(name: str) -> list[str]:
    if name in EXTRA:
        return EXTRA[name]
    online = get_loss(load_recipe(name).loss.name).kind == "online"
    return ONLINE_EXTRA if online else []


# staged recipes (pipelines) run end to end in tests/test_pipeline.py
@pytest.mark.parametrize("name", [n for n in list_recipes() if not is_staged(n)])
def test_recipe_runs_at_tiny_size(name, tmp_path, tiny_pretrained):
    recipe = tiny_recipe(
        name,
        tmp_path / name,
        f"model.name_or_path={tiny_pretrained}",
        "trainer.max_steps=2",
        *extra_overrides(name),
    )
    summary, run_dir = train(recipe)
    assert summary["steps"] == 2
    assert (run_dir / "summary.json").exists() and (run_dir / "model").is_dir()
