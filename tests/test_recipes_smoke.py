"""Every shipped recipe trains for two steps at tiny size, from a local pretrained folder."""

import pytest

from prefopt.config import list_recipes
from prefopt.pipeline.run import train
from prefopt.pipeline.stages import is_staged
from tests.conftest import tiny_recipe

EXTRA = {
    "armorm": ["loss.gate_hidden=[16]", "trainer.batch_size=16"],
    # two steps never reach an epoch's end: IDS would be refused without a step schedule
    "rm_ids": ["smoothing.update_every=1"],
}
# online recipes score with the gold reward here: world:rm would train a reward model first
ONLINE_EXTRA = ["reward.scorer=world", "value.init=policy", "trainer.batch_size=4"]
for _name in (
    "ppo",
    "ppo_pm",
    "ppo_cpm",
    "ppo_pm_authors",
    "ppo_cpm_authors",
    "ppo_gold",
    "rloo",
    "grpo",
    "reinforce_pp",
):
    EXTRA[_name] = ONLINE_EXTRA
for _name in ("dr_grpo", "dapo", "gspo", "cispo", "sapo", "gmpo", "online_dpo"):
    EXTRA[_name] = ONLINE_EXTRA
EXTRA["gdpo"] = ["trainer.batch_size=4"]  # its rewards are the world's gold objectives


# staged recipes (pipelines) run end to end in tests/test_pipeline.py
@pytest.mark.parametrize("name", [n for n in list_recipes() if not is_staged(n)])
def test_recipe_runs_at_tiny_size(name, tmp_path, tiny_pretrained):
    recipe = tiny_recipe(
        name,
        tmp_path / name,
        f"model.name_or_path={tiny_pretrained}",
        "trainer.max_steps=2",
        *EXTRA.get(name, []),
    )
    summary, run_dir = train(recipe)
    assert summary["steps"] == 2
    assert (run_dir / "summary.json").exists() and (run_dir / "model").is_dir()
