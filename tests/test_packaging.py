"""`pip install .` (not editable) ships the recipes: `prefopt` works from any folder."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

from tests.conftest import REPO


def test_a_built_wheel_holds_every_shipped_recipe(tmp_path):
    from prefopt.config import RECIPES_DIR, list_recipes
    from prefopt.pipeline.ablate import list_ablations

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("prefopt-*.whl")
    names = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("prefopt/recipes/")}
    shipped = {f"prefopt/recipes/{r}.yaml" for r in list_recipes()}
    shipped |= {f"prefopt/recipes/ablations/{a}.yaml" for a in list_ablations()}
    shipped |= {
        f"prefopt/recipes/ablations/stages/{p.name}"
        for p in (RECIPES_DIR / "ablations" / "stages").glob("*.yaml")
    }
    shipped |= {
        f"prefopt/recipes/accelerate/{p.name}" for p in (RECIPES_DIR / "accelerate").glob("*.yaml")
    }
    assert "prefopt/recipes/accelerate/fsdp.yaml" in shipped
    assert shipped == names
    assert "prefopt/recipes/ablations/kl_coef.yaml" in names
    assert "dpo" in list_recipes() and "ppo" in list_recipes()

    # installed (not editable) into a fresh environment that borrows the dependencies, and run
    # from another folder: the recipes come from the package, not from a checkout
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # the dependencies come from this environment's site-packages, listed after the new one's
    # own (a .pth line adds a folder without running that folder's own .pth files, so the
    # editable prefopt of this checkout stays out)
    (Path(purelib) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run(
        [
            str(python),
            "-c",
            "import prefopt.config as c; print(c.RECIPES_DIR); "
            "print(c.load_recipe('dpo').loss.name)",
        ],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        check=True,
    ).stdout.split()
    assert str(env_dir) in out[0] and out[1] == "sigmoid"


def test_the_package_description_names_only_what_has_a_recipe():
    import tomllib

    from prefopt.config import list_recipes

    description = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["description"]
    built = {
        "DPO": "dpo",
        "Bradley-Terry": "rm",
        "iterative data smoothing": "rm_ids",
        "ArmoRM": "armorm",
        "PPO-RLHF": "ppo",
        "preference-matching": "ppo_pm",
        "RLOO": "rloo",
        "GRPO": "grpo",
        "REINFORCE++": "reinforce_pp",
        "MPO": "mpo",
        "ExPO": "expo",
    }
    named = [term for term in built if term in description]
    assert named == list(built)  # each is named ...
    assert {built[t] for t in named} <= set(list_recipes())  # ... and each has a recipe
    acronyms = {w.strip(",()") for w in description.split() if w.strip(",()").isupper()}
    assert acronyms <= {*built, "KL"}  # no algorithm named beyond them


def test_recipes_cite_docs_that_exist():
    import re

    cited = {
        (recipe.name, doc)
        for recipe in sorted((REPO / "prefopt" / "recipes").glob("*.yaml"))
        for doc in re.findall(r"docs/[\w/]*\.md|[\w/]*ALGORITHMS\.md", recipe.read_text())
    }
    assert {doc for _, doc in cited if "ALGORITHMS" in doc} == set()  # not in the repository
    assert len(cited) >= 10 and all((REPO / doc).exists() for _, doc in cited), cited
