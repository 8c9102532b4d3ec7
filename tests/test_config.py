"""Recipes: every shipped recipe validates; errors name the key and suggest the fix."""

import subprocess
import sys
from pathlib import Path

import pytest

from prefopt.config import ConfigError, list_recipes, load_recipe, save_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_loads(name):
    from prefopt.pipeline.stages import is_staged, load_pipeline

    recipe = load_pipeline(name) if is_staged(name) else load_recipe(name)
    assert recipe.description, f"recipes/{name}.yaml needs a one-line description"
    assert recipe.name == name


def test_a_staged_recipe_is_not_a_plain_recipe():
    with pytest.raises(ConfigError, match="a staged recipe"):
        load_recipe("mpo")


def test_shipped_recipes_exist():
    names = set(list_recipes())
    assert {"sft", "dpo", "cdpo", "robust_dpo", "ipo", "hinge", "simpo", "rpo"} <= names


def test_variant_extends_dpo_and_switching_loss_drops_foreign_keys():
    simpo = load_recipe("simpo")
    assert simpo.trainer.lr == load_recipe("dpo").trainer.lr  # inherited
    assert (simpo.loss.beta, simpo.loss.gamma) == (2.0, 1.0)
    # label_smoothing belongs to cdpo; switching to ipo on the command line starts from IPO's
    # own defaults rather than failing on (or silently keeping) the foreign key
    ipo = load_recipe("cdpo", ["loss.name=ipo"])
    assert ipo.loss.name == "ipo" and not hasattr(ipo.loss, "label_smoothing")


def problems(name, overrides):
    with pytest.raises(ConfigError) as info:
        load_recipe(name, overrides)
    return info.value.problems


def test_typo_names_full_key_and_suggests():
    (p,) = problems("dpo", ["loss.betta=0.1"])
    assert "'loss.betta'" in p and "did you mean 'loss.beta'" in p


def test_unknown_loss_lists_registered():
    (p,) = problems("dpo", ["loss.name=dpoo"])
    for name in ("sigmoid", "ipo", "simpo", "cdpo", "hinge", "robust", "sft"):
        assert name in p


def test_wrong_type_names_key_type_and_value():
    (p,) = problems("dpo", ["trainer.lr=abc"])
    assert p == "trainer.lr: expected float, got 'abc' (str)"


def test_all_problems_reported_together():
    found = problems("dpo", ["trainer.lr=abc", "loss.betta=1", "modle.tiny.layers=2"])
    assert len(found) == 3
    assert any("did you mean 'model'" in p for p in found)


def test_range_and_choice_errors():
    found = problems("dpo", ["trainer.batch_size=0", "trainer.precision=fp8", "loss.beta=-1"])
    assert any(p.startswith("trainer.batch_size") for p in found)
    assert any("trainer.precision" in p and "bf16" in p for p in found)
    assert any(p.startswith("loss.beta") for p in found)


def test_armorm_stage1_options_are_checked():
    found = problems(
        "armorm",
        ["loss.regression=linear", "loss.regression_epochs=0", "loss.regression_hidden=[64,0]"],
    )
    assert len(found) == 3
    assert any("loss.regression: 'linear'" in p and "ridge, mlp" in p for p in found)
    assert any(p.startswith("loss.regression_epochs") for p in found)
    assert any(p.startswith("loss.regression_hidden") for p in found)


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe("ipo", ["loss.beta=0.3", "trainer.max_steps=7"])
    save_recipe(recipe, tmp_path / "recipe.yaml")
    again = load_recipe(tmp_path / "recipe.yaml")
    assert again == recipe


def test_base_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_cli_exits_2_without_traceback():
    for override, needle in [
        ("loss.betta=0.1", "did you mean 'loss.beta'"),
        ("loss.name=dpoo", "registered losses"),
        ("trainer.lr=abc", "trainer.lr: expected float"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "prefopt.cli", "train", "dpo", override],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert proc.returncode == 2, proc.stderr
        assert needle in proc.stderr
        assert "Traceback" not in proc.stderr
        # validation happens before any model library is imported
        assert "run directory" not in proc.stdout


def test_cli_lists_recipes():
    proc = subprocess.run(
        [sys.executable, "-m", "prefopt.cli", "recipes"], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0
    lines = dict(line.split(None, 1) for line in proc.stdout.strip().splitlines())
    assert "DPO" in lines["dpo"] and "SimPO" in lines["simpo"]


def test_range_errors_reported_with_type_errors_together():
    found = problems("dpo", ["trainer.lr=abc", "trainer.log_every=0", "eval.samples_per_prompt=0"])
    assert any(p.startswith("trainer.lr: expected float") for p in found)
    assert any(p.startswith("trainer.log_every must be >= 1") for p in found)
    assert any(p.startswith("eval.samples_per_prompt") for p in found)


def test_ids_only_with_losses_that_read_soft_labels():
    assert load_recipe("rm_ids").smoothing.method == "ids"
    assert load_recipe("dpo", ["smoothing.method=ids"]).loss.name == "sigmoid"
    for loss in ("ipo", "hinge", "simpo", "cdpo", "robust"):
        (p,) = problems("dpo", ["smoothing.method=ids", f"loss.name={loss}"])
        assert p.startswith("smoothing.method: ids needs a loss") and "bradley_terry" in p


def test_unknown_tracker_fails_before_loading():
    (p,) = problems("dpo", ["trainer.report_to=[wandb,neptune]"])
    assert p.startswith("trainer.report_to: unknown ['neptune']") and "mlflow" in p


def test_half_precision_weights_need_lora():
    (p,) = problems("dpo", ["model.dtype=bf16"])
    assert p.startswith("model.dtype bf16 without model.lora")
    assert load_recipe("dpo", ["model.dtype=bf16", "model.lora.r=8"]).model.dtype == "bf16"


def test_a_recipe_changed_in_python_is_validated_like_a_yaml_file():
    from prefopt.config import Recipe
    from prefopt.pipeline.run import train

    recipe = load_recipe("dpo")
    recipe.loss.beta = -1.0
    recipe.trainer.precision = "fp8"
    with pytest.raises(ConfigError) as info:
        train(recipe)
    problems = "\n".join(info.value.problems)
    assert "loss.beta must be > 0, got -1.0" in problems
    assert "trainer.precision: 'fp8' is not one of fp32, bf16, fp16" in problems
    with pytest.raises(ConfigError, match="loss.name is required"):
        train(Recipe())
    with pytest.raises(ConfigError, match="expected a Recipe"):
        train({"loss": {"name": "sigmoid"}})


def test_quantization_without_lora_is_refused_before_anything_loads():
    with pytest.raises(ConfigError, match="model.quantization 4bit without model.lora"):
        load_recipe("dpo", ["model.quantization=4bit"])
    recipe = load_recipe("dpo", ["model.quantization=4bit", "model.lora.r=8"])
    assert recipe.model.lora is not None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.lora.r=0", "model.lora: need r >= 1 and alpha > 0, got r=0"),
        ("loss=[1,2]", "loss: expected a mapping"),
        ("world.seed=-1", "world: seed must be >= 0"),
        ("model.tiny.heads=3", "model.tiny.hidden (128) must be divisible by model.tiny.heads (3)"),
        ("loss.beta=nan", "loss.beta: must be a finite number, got nan"),
        ("trainer.lr=inf", "trainer.lr: must be a finite number, got inf"),
        ("data.max_unknown_fraction=2", "data.max_unknown_fraction must be in [0, 1], got 2.0"),
    ],
)
def test_invalid_values_exit_2_naming_the_key_before_anything_loads(override, message, capsys):
    from prefopt.cli import main

    assert main(["train", "dpo", override, "output_dir=/nonexistent/never-made"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
