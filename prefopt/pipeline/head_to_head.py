"""An ablation's variants head to head against one of them (``against: <variant>``).

Each run's own evaluation compares its policy with its reference (SFT): gold reward, KL, win
rate against SFT. A zoo of methods also needs each method against the usual one, e.g. every
DPO variant against DPO: the same prompts, the same sampling seeds, sample k of every policy
drawn with the same seed, so that differences are paired prompt by prompt
(:func:`prefopt.eval.gold.compare_policies`).

After the last run, for each seed whose ``against`` run finished, every finished run of that
seed samples the ``against`` run's evaluation prompts (its recipe's ``eval`` settings: the same
prompts and sizes as the runs' own evaluation). Written to ``<out>/head_to_head/seed=<s>.json``
and merged into ``results.csv`` as ``h2h.<split>.win_rate``, ``h2h.<split>.gold_diff`` (the
policy's gold minus the ``against`` policy's on the same prompts) and ``h2h.<split>.kl`` (KL to
the ``against`` policy), each with ``_se`` (over prompts). A seed already compared with the same
runs is not compared again; a run trained again (its link points at another folder) is compared
alone with the ``against`` run, whose samples are the same as before.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

H2H_DIR = "head_to_head"
SPLITS = ("test", "ood")


def against_run(description: dict[str, Any], seed: int) -> str | None:
    """The id of the ``against`` variant's run for ``seed`` (None without ``against``)."""
    against = description.get("against")
    for run in description["runs"]:
        if against and run["seed"] == seed and run["params"].get("variant") == against:
            return str(run["id"])
    return None


def run_head_to_head(
    out: Path,
    description: dict[str, Any],
    log: Callable[[str], None] = print,
    seeds: Sequence[int] | None = None,
) -> list[Path]:
    """Compare, per seed (of ``seeds`` only, when given), every finished run with the
    ``against`` run. Returns the files written (none without ``against``)."""
    if not description.get("against"):
        return []
    written = []
    finished: dict[int, list[str]] = {}
    for run in description["runs"]:
        if seeds is not None and int(run["seed"]) not in seeds:
            continue
        if (out / "runs" / run["id"] / "summary.json").exists():
            finished.setdefault(int(run["seed"]), []).append(str(run["id"]))
    for seed, ids in sorted(finished.items()):
        reference = against_run(description, seed)
        path = out / H2H_DIR / f"seed={seed}.json"
        if reference not in ids:
            log(f"head to head, seed {seed}: the {description['against']} run has not finished")
            continue
        # each run's folder (a stage of the cache): a run trained again with other settings
        # under the same name links another folder and is compared again
        folders = {i: str((out / "runs" / i).resolve()) for i in ids}
        saved = json.loads(path.read_text()) if path.exists() else {}
        known = saved.get("folders") or {}
        result: dict[str, Any] = saved.get("result") or {}
        if known.get(reference) != folders[reference]:  # the reference changed: all again
            known, result = {}, {}
        todo = [i for i in ids if known.get(i) != folders[i]]
        if not todo:
            continue
        log(f"head to head, seed {seed}: {len(todo)} policies against {reference}")
        # every policy's samples come from the same seeds whoever else is compared, so the
        # runs already compared keep their rows
        fresh = compare_runs(out, sorted({*todo, reference}, key=ids.index), reference, seed)
        for key, value in fresh.items():
            if key in SPLITS:
                result.setdefault(key, {}).update(value)
            else:
                result[key] = value
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"against": description["against"], "reference": reference, "runs": ids,
                   "folders": folders, "result": result}  # fmt: skip
        path.write_text(json.dumps(payload, indent=1) + "\n")
        written.append(path)
    return written


def compare_runs(out: Path, ids: list[str], reference: str, seed: int) -> dict[str, Any]:
    import torch

    from prefopt.config import load_recipe
    from prefopt.eval.gold import compare_policies
    from prefopt.models.loading import load_pretrained
    from prefopt.paths import cache_dir
    from prefopt.world import build_world

    recipe = load_recipe(out / "runs" / reference / "recipe.yaml")
    world = build_world(recipe.world, cache_dir=cache_dir())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = {i: load_pretrained(str(out / "runs" / i / "model")).to(device).eval() for i in ids}
    return compare_policies(
        models, reference, world.tokenizer(), world, recipe.eval, device,
        baselines=[reference], seed=seed, max_prompt_length=recipe.data.max_prompt_length,
    )  # fmt: skip


@functools.lru_cache(maxsize=8)
def _read_saved(path: str, mtime_ns: int) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def head_to_head_columns(out: Path, run_id: str, seed: int) -> dict[str, float]:
    """The ``h2h.*`` columns of one run (empty when its seed was not compared)."""
    path = out / H2H_DIR / f"seed={seed}.json"
    if not path.exists():
        return {}
    saved = _read_saved(str(path), path.stat().st_mtime_ns)  # once per seed, not per run
    result, reference = saved["result"], saved["reference"]
    columns: dict[str, float] = {}
    for split in SPLITS:
        row = result.get(split, {}).get(run_id)
        if row is None:
            continue
        diff = row["vs"].get(reference, {"diff": 0.0, "se": 0.0})  # the reference itself: 0
        values = {
            "win_rate": row["win_rate"], "win_rate_se": row["win_rate_se"],
            "gold_diff": diff["diff"], "gold_diff_se": diff["se"],
            "kl": row["kl"], "kl_se": row["kl_se"],
        }  # fmt: skip
        columns.update({f"h2h.{split}.{k}": float(v) for k, v in values.items()})
    return columns
