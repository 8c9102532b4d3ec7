"""``report.html`` opened in headless Chromium (Debian's ``chromium``; `.ci/run` installs it).

The page is loaded from the disk (``file://``) with a small checker script put in front of it
(a copy; the report itself has no script): it records every error event (a script error, an
image or other resource that failed) and, at ``load``, how many images there are and how many
did not decode. Chromium's own log (``--enable-logging=stderr``) must hold no console error.
A screenshot is written beside the copy, in the test's temporary folder (README.md's
``docs/img/report_dpo.png`` is one, of a 40-step DPO run).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from prefopt.pipeline.run import train
from tests.conftest import tiny_recipe
from tests.test_online import ONLINE

CHECKER = (
    "<script>window.__errors=[];window.addEventListener('error',function(e){"
    "__errors.push(String(e.message||(e.target&&e.target.tagName)||'error'))},true);"
    "window.addEventListener('load',function(){"
    "var imgs=[].slice.call(document.images);document.body.setAttribute('data-check',"
    "JSON.stringify({images:imgs.length,broken:imgs.filter(function(i){"
    "return !i.complete||i.naturalWidth===0}).length,errors:__errors}))});</script>"
)
EVAL = ["eval.enabled=true", "eval.n_prompts=4", "eval.samples_per_prompt=2",
        "eval.max_new_tokens=8"]  # fmt: skip


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("headless Chromium is needed: apt-get install -y chromium (.ci/run does)")
    return path


def open_in_chromium(page: Path, tmp_path: Path, height: int = 2400) -> dict:
    """Load ``page`` (a copy with the checker) in headless Chromium; returns the checker's
    record ``{images, broken, errors}``, with ``console`` (console errors in Chromium's log)
    and ``screenshot`` (the PNG's path) added."""
    copy = tmp_path / f"checked-{page.parent.name}-{page.name}"
    copy.write_text(page.read_text().replace("<head>", "<head>" + CHECKER, 1))
    common = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=5000",
    ]  # fmt: skip
    dom = subprocess.run(
        [*common, "--enable-logging=stderr", "--v=0", "--dump-dom", copy.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-check="([^"]*)"', dom.stdout)
    assert found, "the page never finished loading"
    record = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    record["console"] = [
        line for line in dom.stderr.splitlines()
        if "CONSOLE" in line and ("error" in line.lower() or "uncaught" in line.lower())
    ]  # fmt: skip
    shot = copy.with_suffix(".png")
    subprocess.run(
        [*common, f"--screenshot={shot}", f"--window-size=1200,{height}", copy.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    record["screenshot"] = shot
    return record


def assert_loads_cleanly(page: Path, tmp_path: Path, images: int, *texts: str) -> dict:
    record = open_in_chromium(page, tmp_path)
    assert record["errors"] == [] and record["console"] == [], record
    assert record["broken"] == 0 and record["images"] >= images, record
    assert record["screenshot"].stat().st_size > 20_000  # a page of plots, not a blank one
    source = page.read_text()
    assert "<script" not in source and "http://" not in source and "https://" not in source
    for text in texts:
        assert text in source, text
    return record


def test_the_checker_sees_a_broken_image_and_a_script_error(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head></head><body><img src='data:image/png;base64,AAAA'>"
        "<img src='missing.png'><script>undefinedFunction()</script></body></html>"
    )
    record = open_in_chromium(page, tmp_path)
    assert record["images"] == 2 and record["broken"] == 2
    assert any("undefinedFunction" in e for e in record["errors"]), record


def test_a_dpo_runs_report_shows_curves_gold_evaluation_and_samples(tmp_path):
    _, run_dir = train(
        tiny_recipe("dpo", tmp_path / "dpo", "model.name_or_path=null", "trainer.max_steps=4",
                    *EVAL)
    )  # fmt: skip
    for name in ("training_curves.png", "gold_eval.png", "report.html"):
        assert (run_dir / name).stat().st_size > 0, name
    assert_loads_cleanly(
        run_dir / "report.html", tmp_path, 2,
        "Training curves", "Gold evaluation on the world", "gold_reward", "rewards/accuracies",
        "Sample completions",
    )  # fmt: skip
    samples = json.loads((run_dir / "summary.json").read_text())["eval"]["samples"]
    assert len(samples) == 4 and samples[0]["policy"] in (run_dir / "report.html").read_text()


def test_a_ppo_runs_report_shows_reward_against_kl(tmp_path, tiny_pretrained):
    _, run_dir = train(
        tiny_recipe(
            "ppo", tmp_path / "ppo", f"model.name_or_path={tiny_pretrained}", *ONLINE,
            "trainer.max_steps=3", "trainer.batch_size=4", "loss.epochs=1", *EVAL,
        )
    )  # fmt: skip
    assert_loads_cleanly(
        run_dir / "report.html", tmp_path, 3,
        "Training curves", "Reward against KL over training", "Gold evaluation on the world",
    )  # fmt: skip


def test_prefopt_plot_draws_an_offline_runs_training_curves(tmp_path, capsys):
    from prefopt.cli import main

    _, run_dir = train(
        tiny_recipe("dpo", tmp_path / "dpo", "model.name_or_path=null", "trainer.max_steps=2")
    )
    for name in ("training_curves.png", "report.html"):
        (run_dir / name).unlink()
    assert main(["plot", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run_dir / 'training_curves.png'}" in out
    assert (run_dir / "report.html").exists()


def test_an_ablations_report_has_its_table_plots_and_run_links(tmp_path):
    from prefopt.pipeline.results import aggregate
    from tests.test_ablate import hand_made_ablation

    hand_made_ablation(tmp_path)
    aggregate(tmp_path)
    assert_loads_cleanly(
        tmp_path / "report.html", tmp_path, 3,
        "Ablation <code>handmade</code>", "gold_vs_kl",
        "2.333 (sd 1.528, SE 0.882; SE prompts 0.167)",
    )  # fmt: skip
