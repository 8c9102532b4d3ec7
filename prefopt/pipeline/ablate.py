"""Ablations: one base recipe (or staged recipe), a sweep of overrides, seeds; one command.

An ablation file (``recipes/ablations/<name>.yaml``)::

    description: "DPO: beta"
    base: dpo                     # a recipe or a staged recipe (pipeline), name or path
    overrides: {eval.n_prompts: 256}       # for every run
    grid: {loss.beta: [0.03, 0.1, 0.3]}    # the cartesian product of these values
    variants:                     # and/or named runs (crossed with the grid), each with its
      - {name: dpo}               # own overrides and optionally its own base recipe
      - {name: ipo, base: ipo, overrides: {loss.beta: 0.5}}
    seeds: [0, 1, 2]
    metrics: [eval.gold_reward, eval.kl]   # summary keys tabulated and plotted
    against: dpo                  # optional: after the runs, every variant head to head
                                  # against this one per seed (pipeline/head_to_head.py)
    courses: [eval.loss]          # optional: held-out metrics over training steps, from
                                  # trainer.eval_every (pipeline/courses.py)
    x: loss.beta                  # the plots' x axis: a swept key or a summary key
    sizes:                        # what `SIZE=tiny` / `SIZE=full` change
      tiny: {seeds: [0, 1], overrides: {trainer.max_steps: 20}, note: "about 3 min"}
      full: {note: "about 40 min"}

Every run is validated before the first one starts (an unknown key anywhere is reported with
the key's full name and the runs it affects). Runs then execute one after another:

* a single recipe runs as a stage of the cache (:mod:`prefopt.pipeline.cache`, keyed by its
  resolved settings), so a run already made by another ablation (or the same one at another
  size) is reused, the world's SFT policy and reward model train once per seed, and an
  interrupted run resumes from its checkpoint; ``<out>/runs/<id>`` links the stage's folder;
* a staged recipe runs with :func:`prefopt.pipeline.stages.run_pipeline` in ``<out>/runs/<id>``,
  whose stages are cached the same way.

A run is finished when ``<out>/runs/<id>/summary.json`` exists; a second invocation of the same
ablation and size skips finished runs. A failed run is recorded (``<out>/runs/<id>.failed``)
and the sweep goes on; the command then exits non-zero. After the last run the results are
aggregated (:mod:`prefopt.pipeline.results`).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from omegaconf import OmegaConf

from prefopt.config import ConfigError, load_recipe, recipe_path
from prefopt.paths import clock

ABLATIONS_DIR = "ablations"
TOP_LEVEL = ("description", "base", "overrides", "grid", "variants", "seeds", "metrics", "x",
             "against", "courses", "sizes")  # fmt: skip
SIZE_KEYS = ("overrides", "seeds", "grid", "variants", "note")
DEFAULT_METRICS = ["eval.gold_reward", "eval.kl"]
SIZES = ("tiny", "full")


@dataclass
class Run:
    """One run of a sweep: the swept values that name it, its overrides and its seed."""

    id: str
    params: dict[str, Any]  # swept key (or "variant") -> value
    seed: int
    overrides: list[str]  # key=value, as on the command line
    base: str  # the recipe or staged recipe it runs (a variant may name its own)
    staged: bool


@dataclass
class Ablation:
    """A validated ablation at one size."""

    name: str
    size: str
    description: str
    base: str
    runs: list[Run]
    swept: list[str]  # the params' keys, in order ("variant" first when there are variants)
    metrics: list[str]
    x: str | None
    note: str = ""
    seeds: list[int] = field(default_factory=list)
    cli_overrides: list[str] = field(default_factory=list)  # given on the command line
    against: str | None = None  # the variant every run is compared with, head to head
    courses: list[str] = field(default_factory=list)  # summary keys followed over training

    def describe(self) -> dict[str, Any]:
        """What ``ablation.json`` keeps: enough to aggregate and plot from the files alone."""
        return {
            "name": self.name, "size": self.size, "description": self.description,
            "base": self.base, "swept": self.swept,
            "metrics": self.metrics, "x": self.x, "note": self.note, "seeds": self.seeds,
            "cli_overrides": self.cli_overrides, "against": self.against,
            "courses": self.courses, "runs": [asdict(r) for r in self.runs],
        }  # fmt: skip


# ------------------------------------------------------------------------------ loading


def ablation_path(name_or_path: str | Path) -> Path:
    """``accuracy_paradox`` (a shipped ablation) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ConfigError([f"no ablation file {str(path)!r}"])
        return path
    try:
        return recipe_path(f"{ABLATIONS_DIR}/{name_or_path}")
    except ConfigError:
        shipped = ", ".join(list_ablations()) or "none"
        raise ConfigError([f"no ablation {str(name_or_path)!r} (shipped: {shipped})"]) from None


def list_ablations() -> list[str]:
    from prefopt.config import RECIPES_DIR

    return sorted(p.stem for p in (RECIPES_DIR / ABLATIONS_DIR).glob("*.yaml"))


def load_ablation(
    name_or_path: str | Path,
    size: str = "tiny",
    overrides: list[str] | None = None,
    validate: bool = True,
) -> Ablation:
    """Read an ablation file at ``size`` and validate every run's recipe (nothing runs;
    ``validate=False`` checks the file alone). ``overrides`` (key=value) apply to every run,
    after the file's. Raises ConfigError listing every problem."""
    path = ablation_path(name_or_path)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as exc:
        raise ConfigError([f"{path}: cannot parse YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: an ablation must be a mapping of keys"])
    problems = [
        f"unknown key {k!r} in an ablation (valid: {', '.join(TOP_LEVEL)})"
        for k in raw
        if k not in TOP_LEVEL
    ]
    if not raw.get("base"):
        problems.append("base: required (a recipe or staged recipe, e.g. base: dpo)")
    sizes = raw.get("sizes") or {}
    if not isinstance(sizes, dict):
        raise ConfigError([*problems, "sizes: expected a mapping of size -> settings"])
    if size not in sizes and size not in SIZES:
        problems.append(f"size {size!r}: not defined (sizes: {', '.join(sizes) or 'none'})")
    for name, settings in sizes.items():
        if not isinstance(settings, dict):
            problems.append(f"sizes.{name}: expected a mapping ({', '.join(SIZE_KEYS)})")
            continue
        problems += [
            f"sizes.{name}: unknown key {k!r} (valid: {', '.join(SIZE_KEYS)})"
            for k in settings
            if k not in SIZE_KEYS
        ]
    chosen = sizes.get(size) or {}
    if problems:
        raise ConfigError(problems)
    spec = _with_size(cast(dict[str, Any], raw), chosen if isinstance(chosen, dict) else {})
    return _expand(path.stem, size, spec, list(overrides or []), validate)


def _with_size(raw: dict[str, Any], size: dict[str, Any]) -> dict[str, Any]:
    """The file's settings with a size's: its overrides added after the file's, its seeds,
    grid and variants replacing the file's."""
    spec = dict(raw)
    spec["overrides"] = {**(raw.get("overrides") or {}), **(size.get("overrides") or {})}
    for key in ("seeds", "grid", "variants"):
        if size.get(key) is not None:
            spec[key] = size[key]
    spec["note"] = size.get("note", "")
    return spec


def _expand(
    name: str, size: str, spec: dict[str, Any], cli: list[str], validate: bool = True
) -> Ablation:
    from prefopt.pipeline.stages import is_staged

    problems: list[str] = []
    grid = spec.get("grid") or {}
    variants = spec.get("variants") or []
    seeds = spec.get("seeds", [0])
    common = spec.get("overrides") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        problems.append("grid: expected a mapping of key -> non-empty list of values")
        grid = {}
    if not isinstance(variants, list) or any(
        not isinstance(v, dict) or "name" not in v or set(v) - {"name", "base", "overrides"}
        for v in variants
    ):
        problems.append(
            "variants: expected a list of {name: ..., base: <recipe> (optional), "
            "overrides: {key: value}}"
        )
        variants = []
    if not isinstance(common, dict):
        problems.append("overrides: expected a mapping of key -> value")
        common = {}
    if not isinstance(seeds, list) or not seeds or any(type(s) is not int for s in seeds):
        problems.append(f"seeds: expected a non-empty list of integers, got {seeds!r}")
        seeds = [0]
    names = [str(v["name"]) for v in variants]
    if len(set(names)) != len(names):
        problems.append(f"variants: names must be distinct, got {names}")
    metrics = spec.get("metrics") or DEFAULT_METRICS
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        problems.append("metrics: expected a list of summary keys (e.g. eval.gold_reward)")
        metrics = DEFAULT_METRICS
    swept = (["variant"] if variants else []) + [str(k) for k in grid]
    candidates: list[str | None] = [str(k) for k in grid] or list(swept) or [None]
    x = spec.get("x") or candidates[0]
    against = spec.get("against")
    if against is not None and str(against) not in names:
        problems.append(
            f"against: {against!r} is not a variant of this size (variants: "
            f"{', '.join(names) or 'none'})"
        )
    courses = spec.get("courses") or []
    if not isinstance(courses, list) or any(
        not isinstance(c, str) or "." not in c for c in courses
    ):
        problems.append(
            f"courses: expected a list of summary keys evaluated during training (e.g. "
            f"eval.loss, with trainer.eval_every set), got {courses!r}"
        )
        courses = []
    if problems:
        raise ConfigError(problems)

    base = str(spec["base"])
    if against is not None and any(is_staged(str(v.get("base") or base)) for v in variants):
        raise ConfigError(["against: head to head needs single-recipe runs, not pipelines"])
    runs: list[Run] = []
    for variant in variants or [None]:
        run_base = str((variant or {}).get("base") or base)
        staged = is_staged(run_base)
        for values in itertools.product(*grid.values()):
            for seed in seeds:
                params: dict[str, Any] = {}
                overrides = _as_overrides(common)
                if variant is not None:
                    params["variant"] = str(variant["name"])
                    overrides += _as_overrides(variant.get("overrides") or {})
                for key, value in zip(grid, values, strict=True):
                    params[str(key)] = value
                    overrides.append(_override(str(key), value))
                overrides += [*cli, f"seed={seed}"]
                runs.append(Run(run_id(params, seed), params, seed, overrides, run_base, staged))
    if len({r.id for r in runs}) != len(runs):
        raise ConfigError(["grid/variants/seeds: two runs have the same settings"])
    ablation = Ablation(
        name=name, size=size, description=str(spec.get("description") or ""), base=base,
        runs=runs, swept=swept, metrics=[str(m) for m in metrics],
        x=str(x) if x else None, note=str(spec.get("note") or ""), seeds=list(seeds),
        cli_overrides=list(cli), against=None if against is None else str(against),
        courses=[str(c) for c in courses],
    )  # fmt: skip
    if validate:
        validate_runs(ablation)
    return ablation


def _override(key: str, value: Any) -> str:
    """``key=value`` that :func:`prefopt.config.parse_overrides` reads back as ``value``."""
    text = value if isinstance(value, str) else json.dumps(value)
    return f"{key}={text}"


def _as_overrides(mapping: dict[str, Any]) -> list[str]:
    return [_override(str(k), v) for k, v in mapping.items()]


def run_id(params: dict[str, Any], seed: int) -> str:
    """A folder name for a run: ``loss.beta=0.1,seed=0`` with unsafe characters replaced."""
    parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()]
    text = ",".join([*parts, f"seed={seed}"])
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)


def load_run(run: Run) -> Any:
    """The run's resolved Recipe (or Pipeline for a staged base). Raises ConfigError."""
    from prefopt.pipeline.stages import load_pipeline

    if run.staged:
        return load_pipeline(run.base, run.overrides)
    return load_recipe(run.base, run.overrides)


def validate_runs(ablation: Ablation) -> None:
    """Load every run's recipe; one ConfigError naming each problem once, with the runs it
    affects (``every run`` when it is all of them). Runs that differ only in their seed (an
    integer, checked with the file) are loaded once."""
    seen: dict[str, list[str]] = {}
    checked: dict[tuple[str, ...], list[str]] = {}
    for run in ablation.runs:
        key = (run.base, *run.overrides[:-1])  # the last override is the seed
        if key in checked:
            for problem in checked[key]:
                seen[problem].append(run.id)
            continue
        try:
            load_run(run)
            checked[key] = []
        except ConfigError as exc:
            checked[key] = list(exc.problems)
            for problem in exc.problems:
                seen.setdefault(problem, []).append(run.id)
    if seen:
        total = len(ablation.runs)
        where = {p: "every run" if len(ids) == total > 1 else "run " + ", ".join(ids)
                 for p, ids in seen.items()}  # fmt: skip
        raise ConfigError([f"{p} ({w})" for p, w in where.items()])


# ------------------------------------------------------------------------------ running


def default_out_dir(ablation: Ablation) -> Path:
    """``runs/ablations/<name>-<size>``: the same folder every time, so a rerun resumes."""
    from prefopt.paths import RUNS_DIR

    return RUNS_DIR / "ablations" / f"{ablation.name}-{ablation.size}"


def is_done(out_dir: Path, run: Run) -> bool:
    return (out_dir / "runs" / run.id / "summary.json").exists()


def execute_run(ablation: Ablation, run: Run, run_dir: Path) -> dict[str, Any]:
    """Run one run: a recipe as a cached stage linked at ``run_dir``, a pipeline in
    ``run_dir``. Returns its summary."""
    from prefopt.pipeline.cache import run_in_folder, stage_identity, stages_dir
    from prefopt.pipeline.stages import run_pipeline
    from prefopt.pipeline.world_models import name_folders, resolve_world_models

    loaded = load_run(run)
    if run.staged:
        return run_pipeline(loaded, run_dir)[0]
    folder = stages_dir() / f"{loaded.name}-{stage_identity(name_folders(loaded))}"
    if run_dir.is_symlink() or run_dir.is_file():
        run_dir.unlink()
    elif run_dir.exists():
        raise ConfigError([f"{run_dir} exists and is not a link to a run: remove it"])
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    run_dir.symlink_to(folder.resolve(), target_is_directory=True)
    return run_in_folder(resolve_world_models(loaded), folder, f"run {run.id}")[0]


Executor = Callable[[Ablation, Run, Path], dict[str, Any]]


def run_ablation(
    ablation: Ablation,
    out_dir: Path | None = None,
    execute: Executor = execute_run,
    log: Callable[[str], None] = print,
    seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run every run not finished in ``out_dir`` (default :func:`default_out_dir`), one after
    another, with a progress line each; then aggregate. Returns ``{"out_dir", "ran",
    "skipped", "failed", "left", "files"}``. Expected failures of a run (bad data, a diverging
    run, missing files) are recorded and the next run starts; Ctrl-C stops the sweep (a rerun
    resumes it).

    ``seeds``: run only the runs of these seeds and leave the others (``left``) to another
    process or machine running the same ablation into the same folder with the other seeds;
    the tables then cover every run finished so far, so the last process to end writes the
    whole sweep's. Head-to-head comparisons are made for these seeds only."""
    from prefopt.data import DataError
    from prefopt.pipeline.courses import aggregate_courses
    from prefopt.pipeline.head_to_head import run_head_to_head
    from prefopt.pipeline.results import aggregate, write_html
    from prefopt.trainers.base import TrainingError

    out = Path(out_dir or default_out_dir(ablation))
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(ablation.describe(), indent=2) + "\n")
    total = len(ablation.runs)
    ran: list[str] = []
    skipped: list[str] = []
    failed: dict[str, str] = {}
    left: list[str] = []
    start = time.time()
    for i, run in enumerate(ablation.runs, 1):
        run_dir = out / "runs" / run.id
        failure = out / "runs" / f"{run.id}.failed"
        if seeds is not None and run.seed not in seeds:
            left.append(run.id)
            continue
        if is_done(out, run):
            skipped.append(run.id)
            log(f"[{i}/{total}] {run.id}: finished earlier, skipped")
            continue
        began = time.time()
        log(f"[{i}/{total}] {run.id}: starting")
        try:
            execute(ablation, run, run_dir)
        except (TrainingError, DataError, OSError) as exc:
            failed[run.id] = f"{type(exc).__name__}: {exc}"
            failure.write_text(failed[run.id] + "\n")
        else:
            failure.unlink(missing_ok=True)
            ran.append(run.id)
        now = time.time()
        done_here = len(ran) + len(failed)
        to_go = sum(1 for r in ablation.runs[i:] if seeds is None or r.seed in seeds)
        eta = (now - start) / done_here * to_go
        status = "FAILED: " + failed[run.id] if run.id in failed else "done"
        log(
            f"[{i}/{total}] {run.id}: {status} in {clock(now - began)} "
            f"(elapsed {clock(now - start)}, about {clock(eta)} left)"
        )
    files = run_head_to_head(out, ablation.describe(), log, seeds)
    files += aggregate(out)
    courses = aggregate_courses(out)
    if courses:  # the report again, with the course plots
        files += [*courses, write_html(out, [f for f in files + courses if f.suffix == ".png"])]
    return {
        "out_dir": out, "ran": ran, "skipped": skipped, "failed": failed, "left": left,
        "files": files,
    }  # fmt: skip
