"""Staged recipes: a recipe whose ``stages:`` run in order, each in the stage cache.

A staged recipe::

    description: ...
    seed: 0
    stages:
      sft:   {base: sft, eval: {enabled: false}}
      rm:    {base: rm, model: {name_or_path: "${stages.sft.model}"}}
      split: {kind: split, scorer: "${stages.rm.model}", tau: 1.0}
      dpo:   {base: dpo, data: {train_file: "${stages.split.easy}"}}
    report: {policies: [sft, dpo], reference: sft}

A **train** stage (the default kind) is a recipe: ``base: <recipe>`` plus overrides, or inline.
A **split** stage is MPO's easy/hard split (:mod:`prefopt.pipeline.split`), an **expo** stage
ExPO's alpha search (:mod:`prefopt.pipeline.expo`). ``${stages.<name>.<output>}`` names an
earlier stage's output (:data:`OUTPUTS`); everything is checked before anything runs: an
unknown key (the recipe schema of each stage), a reference to a stage that does not exist or
comes later, an output the stage does not produce. Overrides on the command line address one
stage (``stages.dpo.loss.beta=0.2``) or every train stage (``trainer.device=cpu``).

Each stage's identity is the hash of its resolved settings, in which an earlier stage appears by
its identity, so a changed stage changes everything downstream; it runs in
``<cache>/stages/<name>-<identity>/`` (:mod:`prefopt.pipeline.cache`): finished stages are
skipped, an interrupted one resumes from its checkpoint. The pipeline's run directory links
each stage's folder under ``stages/`` and holds ``summary.json`` (every stage's summary under
``stages.<name>``), ``pipeline.yaml`` (every stage resolved) and the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prefopt.config import (
    ENGINE_RUNTIME_ONLY_FIELDS,
    ConfigError,
    EngineSettings,
    Recipe,
    merge_recipe_nodes,
    parse_overrides,
    read_recipe_node,
    recipe_from_node,
    recipe_path,
    to_yaml,
)
from prefopt.paths import cache_dir, run_dir_for, run_folder_lock
from prefopt.pipeline.cache import run_in_folder, run_once, stages_dir
from prefopt.world.config import WORLD_FORMAT_VERSION, WorldConfig, coerce_config

#: What each kind of stage produces, for ``${stages.<name>.<output>}``.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "train": ("model", "run", "summary"),
    "split": ("easy", "hard", "report"),
    "expo": ("model", "curve", "report"),
}
TOP_LEVEL = ("name", "description", "seed", "output_dir", "stages", "report")

# ``${stages.<name>.<output>}`` is OmegaConf's own interpolation: each value is resolved against a
# root whose ``stages.<name>.<output>`` calls this resolver, which asks the stage being built
# (:func:`_resolve_references`) for that output, so OmegaConf parses and substitutes and prefopt
# only looks the output up (and records which stages a stage depends on)
STAGE_RESOLVER = "prefopt.stage_output"
_LOOKUP: ContextVar[Callable[[str, str], str]] = ContextVar("stage_output_lookup")
ALL_OUTPUTS = sorted({output for outputs in OUTPUTS.values() for output in outputs})


def _stage_output(name: str, output: str) -> str:
    return _LOOKUP.get()(str(name), str(output))


OmegaConf.register_resolver(STAGE_RESOLVER, _stage_output, replace=True)


class StageReferenceError(ValueError):
    """A ``${stages.<name>.<output>}`` that names a stage or output it cannot use."""


@dataclass
class SplitSettings:
    """MPO's split (Gou & Nguyen 2024, arXiv 2403.19443, section 3): a pair is easy when the
    reward model's gap ``|r(x, y1) - r(x, y2)| >= tau``; easy pairs are relabelled by it."""

    scorer: str = "world:rm"  # a reward-model folder, world:rm, or world (the gold reward)
    tau: float = 1.0  # the authors' HH-RLHF setting (absolute, on their RM's scale)
    mode: str = "absolute"  # or "quantile": tau in [0, 1] is a quantile of |delta|
    world: WorldConfig = field(default_factory=WorldConfig)  # whose train pairs are split
    batch_size: int = 256


@dataclass
class ExpoSettings:
    """ExPO (Zheng et al. 2024, arXiv 2404.16792): extrapolate ``aligned`` away from ``sft``
    and pick the alpha whose samples score best on held-out prompts."""

    sft: str = "world:sft"
    aligned: str = ""
    alphas: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 0.5, 1.0, 2.0])
    # "world": the gold reward (prefopt's first reading: selection by the final metric);
    # "world:rm": the world's learned reward model, a proxy (the authors': a separate RM)
    scorer: str = "world"
    world: WorldConfig = field(default_factory=WorldConfig)  # whose prompts are used
    # "train": prompts of the training pairs; "heldout": prompts of the world's test pairs that
    # are not evaluation prompts (the authors: held-out prompts, UltraFeedback's test_gen)
    prompts: str = "train"
    n_prompts: int = 256
    samples_per_prompt: int = 2
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # vLLM / OpenAI penalties (prefopt/models/penalties.py); the authors: 0.1 and 0.1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    batch_size: int = 64
    max_prompt_length: int = 48
    # what samples each alpha's model (docs/engines.md): one engine for the grid
    engine: EngineSettings = field(default_factory=EngineSettings)


@dataclass
class ReportSettings:
    """The pipeline's closing comparison: policies on the same prompts and sampling seeds."""

    policies: list[str] = field(default_factory=list)  # train stages (or world:sft)
    reference: str | None = None  # KL and win rate against it; default the first policy
    baselines: list[str] = field(default_factory=list)  # paired differences against these
    n_prompts: int = 640
    samples_per_prompt: int = 4


SETTINGS = {"split": SplitSettings, "expo": ExpoSettings}
EXPO_PROMPTS = ("train", "heldout")


@dataclass
class Stage:
    name: str
    kind: str
    settings: Any  # Recipe, SplitSettings or ExpoSettings, with references resolved
    identity: str = ""
    folder: Path = Path()
    depends: list[str] = field(default_factory=list)

    def outputs(self) -> dict[str, str]:
        f = self.folder
        if self.kind == "train":
            return {"model": str(f / "model"), "run": str(f), "summary": str(f / "summary.json")}
        if self.kind == "split":
            return {"easy": str(f / "easy.jsonl"), "hard": str(f / "hard.jsonl"),
                    "report": str(f / "split.json")}  # fmt: skip
        return {"model": str(f / "model"), "curve": str(f / "expo_curve.csv"),
                "report": str(f / "expo.json")}  # fmt: skip


@dataclass
class Pipeline:
    name: str
    description: str
    seed: int
    stages: list[Stage]
    report: ReportSettings
    output_dir: str | None = None

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def is_staged(name_or_path: str | Path) -> bool:
    """Whether a recipe holds ``stages:`` (False for anything that is not a readable recipe)."""
    try:
        return "stages" in read_recipe_node(name_or_path)
    except ConfigError:
        return False


# ------------------------------------------------------------------------------ loading


def load_pipeline(name_or_path: str | Path, overrides: list[str] | None = None) -> Pipeline:
    """Read and validate a staged recipe, resolving every stage (nothing runs)."""
    path = recipe_path(name_or_path)
    raw = read_recipe_node(path)
    problems, cli = parse_overrides(overrides)
    per_stage: dict[str, DictConfig] = {}
    shared = OmegaConf.create({})
    if cli is not None:
        cli_stages = cli.pop("stages", None)
        for key in ("seed", "output_dir", "report", "description"):
            if key in cli:
                raw[key] = (
                    cli.pop(key)
                    if key != "report"
                    else OmegaConf.merge(raw.get("report") or {}, cli.pop(key))
                )
        shared = cli
        if cli_stages is not None:
            per_stage = {str(k): v for k, v in cli_stages.items()}
    unknown = [str(k) for k in raw.keys() if k not in TOP_LEVEL]
    problems += [f"unknown key {k!r} at the top of a staged recipe (valid: "
                 f"{', '.join(TOP_LEVEL)})" for k in unknown]  # fmt: skip
    stages_node = raw.get("stages")
    if not isinstance(stages_node, DictConfig) or not len(stages_node):
        raise ConfigError([*problems, "stages: expected a mapping of stage name -> stage"])
    for name in per_stage:
        if name not in stages_node:
            problems.append(f"stages.{name}: no such stage (stages: {', '.join(stages_node)})")
    seed = int(raw.get("seed", 0))
    pipeline = Pipeline(
        name=str(raw.get("name") or path.stem),
        description=str(raw.get("description") or ""),
        seed=seed,
        stages=[],
        report=ReportSettings(),
        output_dir=raw.get("output_dir"),
    )
    known: dict[str, Stage] = {}
    failed: set[str] = set()  # stages with problems: what refers to them is not checked again
    for stage_name, node in stages_node.items():
        stage_name = str(stage_name)
        if not isinstance(node, DictConfig):
            problems.append(f"stages.{stage_name}: expected a mapping, got {node!r}")
            failed.add(stage_name)
            continue
        if _referenced_stages(node, failed) & failed:
            failed.add(stage_name)
            continue
        try:
            stage = _build_stage(stage_name, node, seed, shared, per_stage.get(stage_name), known)
        except ConfigError as exc:
            problems += exc.problems
            failed.add(stage_name)
            continue
        known[stage_name] = stage
        pipeline.stages.append(stage)
    try:
        pipeline.report = _build_report(raw.get("report"), known, failed)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return pipeline


def _resolve_references(
    node: DictConfig, prefix: str, names: list[str], lookup: Callable[[str, str], str]
) -> tuple[Any, list[str]]:
    """``node`` as a container with every ``${stages.<name>.<output>}`` resolved by OmegaConf,
    ``stages.<name>.<output>`` (for each of ``names``) answered by ``lookup(name, output)``,
    which raises StageReferenceError for one it refuses; and the problems, one per value, named
    by their full key ("no such stage before it" for a name not in ``names``). Other values (other
    interpolations included) are left as they are."""
    root = {"stages": {n: {o: f"${{{STAGE_RESOLVER}:{n},{o}}}" for o in ALL_OUTPUTS}
                       for n in names}}  # fmt: skip
    problems: list[str] = []
    refused: list[str] = []

    def checked(name: str, output: str) -> str:
        try:
            return lookup(name, output)
        except StageReferenceError as exc:
            refused.append(str(exc))
            raise

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, f"{key}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if not (isinstance(value, str) and "${stages." in value):
            return value
        try:
            return OmegaConf.create({**root, "value": value}).value
        except OmegaConfBaseException:
            why = refused.pop() if refused else "no such stage before it"
            problems.append(f"{key}: {value}: {why}")
            return value

    token = _LOOKUP.set(checked)
    try:
        return walk(OmegaConf.to_container(node, resolve=False), prefix), problems
    finally:
        _LOOKUP.reset(token)


def _referenced_stages(node: DictConfig, names: set[str]) -> set[str]:
    """Which of ``names`` the node's ``${stages.<name>.<output>}`` values name."""
    used: set[str] = set()

    def record(name: str, output: str) -> str:
        used.add(name)
        return ""

    _resolve_references(node, "", sorted(names), record)
    return used


def _build_stage(
    name: str,
    node: DictConfig,
    seed: int,
    shared: DictConfig,
    cli: DictConfig | None,
    known: dict[str, Stage],
) -> Stage:
    node = node.copy()
    kind = str(node.pop("kind", "train"))
    if kind not in OUTPUTS:
        raise ConfigError([f"stages.{name}.kind: {kind!r} is not one of {', '.join(OUTPUTS)}"])
    if cli is not None:
        node = merge_recipe_nodes(node, cli)
    depends: set[str] = set()

    def output_of(ref: str, output: str) -> str:
        if ref not in known:
            why = "it is this stage" if ref == name else "no such stage before it"
            raise StageReferenceError(why)
        if output not in known[ref].outputs():
            kind_of = known[ref].kind
            raise StageReferenceError(
                f"stage {ref!r} ({kind_of}) produces {', '.join(OUTPUTS[kind_of])}; not {output!r}"
            )
        depends.add(ref)
        return known[ref].outputs()[output]

    def resolved(part: DictConfig) -> DictConfig:
        names = [*known, name]
        container, problems = _resolve_references(part, f"stages.{name}", names, output_of)
        if problems:
            earlier = ", ".join(known) or "none"
            raise ConfigError([f"{p} (earlier stages: {earlier})" for p in problems])
        out = OmegaConf.create(container)
        assert isinstance(out, DictConfig)
        return out

    node = resolved(node)
    if kind == "train":
        last = resolved(cli) if cli is not None else None  # beats global overrides
        settings: Any = _train_settings(name, node, seed, shared, last)
    else:
        if "world" in shared:  # the world of every stage, e.g. whose pairs a split splits
            node = merge_recipe_nodes(node, OmegaConf.create({"world": shared.world}))
        settings = _plain_settings(name, kind, node)
    stage = Stage(name, kind, settings, depends=sorted(depends))
    stage.identity = _identity(stage)
    stage.folder = stages_dir() / f"{_folder_name(stage)}-{stage.identity}"
    return stage


def _train_settings(
    name: str, node: DictConfig, seed: int, shared: DictConfig, last: DictConfig | None
) -> Recipe:
    base = node.pop("base", None)
    layer = OmegaConf.create({"seed": seed})
    lower = read_recipe_node(str(base)) if base is not None else OmegaConf.create({})
    merged = merge_recipe_nodes(merge_recipe_nodes(lower, layer), node)
    if len(shared):
        merged = merge_recipe_nodes(merged, shared)
    if last is not None:
        merged = merge_recipe_nodes(merged, last)
    try:
        recipe = recipe_from_node(merged, str(base or name))
    except ConfigError as exc:
        raise ConfigError([f"stages.{name}: {p}" for p in exc.problems]) from None
    recipe.output_dir = None
    recipe.resume = None
    return recipe


def _plain_settings(name: str, kind: str, node: DictConfig) -> Any:
    schema = OmegaConf.structured(SETTINGS[kind])
    problems = [
        f"stages.{name}: unknown key {str(k)!r} for a {kind} stage "
        f"(valid: kind, {', '.join(str(x) for x in schema.keys())})"
        for k in node.keys()
        if k not in schema
    ]
    if problems:
        raise ConfigError(problems)
    try:
        settings: Any = OmegaConf.to_object(OmegaConf.merge(schema, node))
    except Exception as exc:
        raise ConfigError([f"stages.{name}: {exc}"]) from None
    try:
        settings.world = coerce_config(settings.world)
    except ValueError as exc:
        raise ConfigError([f"stages.{name}.world: {exc}"]) from None
    if kind == "split" and settings.mode not in ("absolute", "quantile"):
        raise ConfigError([f"stages.{name}.mode: {settings.mode!r} is not absolute or quantile"])
    if kind == "expo":
        from prefopt.models.engines import engine_problem

        key = f"stages.{name}.engine"
        problem = engine_problem(settings.engine, None, key)
        problems = settings.engine.validate(key) + ([problem] if problem else [])
        if problems:
            raise ConfigError(problems)
    if kind == "expo" and not settings.aligned:
        raise ConfigError([f"stages.{name}.aligned: the aligned model is required"])
    if kind == "expo" and settings.prompts not in EXPO_PROMPTS:
        raise ConfigError(
            [f"stages.{name}.prompts: {settings.prompts!r} is not one of {', '.join(EXPO_PROMPTS)}"]
        )
    return settings


def _folder_name(stage: Stage) -> str:
    return stage.settings.name if stage.kind == "train" else stage.kind


def _identity(stage: Stage) -> str:
    from prefopt.pipeline.cache import portable, stage_identity
    from prefopt.pipeline.world_models import name_folders

    if stage.kind == "train":
        return stage_identity(name_folders(stage.settings))
    settings = dataclasses.asdict(stage.settings)
    if isinstance(settings.get("engine"), dict):
        default = dataclasses.asdict(EngineSettings())
        for name in ENGINE_RUNTIME_ONLY_FIELDS:  # memory and sleep: not what it samples
            settings["engine"].pop(name, None)
            default.pop(name)
        if settings["engine"] == default:
            del settings["engine"]  # added later: at its default, the identity it had before
    payload = json.dumps(
        {"kind": stage.kind, "world_format": WORLD_FORMAT_VERSION, "settings": settings},
        sort_keys=True, default=str,
    )  # fmt: skip
    return hashlib.sha256(portable(payload).encode()).hexdigest()[:12]


def _build_report(node: Any, known: dict[str, Stage], failed: set[str]) -> ReportSettings:
    if node is None:
        return ReportSettings()
    schema = OmegaConf.structured(ReportSettings)
    bad = [str(k) for k in node.keys() if k not in schema]
    if bad:
        raise ConfigError([f"report: unknown key {k!r} (valid: {', '.join(schema)})" for k in bad])
    report = OmegaConf.to_object(OmegaConf.merge(schema, node))
    assert isinstance(report, ReportSettings)
    problems = []
    names = [*report.policies, *report.baselines, *([report.reference] if report.reference else [])]
    for policy in names:
        if policy is None or policy.startswith("world:") or policy in failed:
            continue
        if policy not in known:
            problems.append(f"report: {policy!r} is not a stage ({', '.join(known)})")
        elif known[policy].kind == "split":
            problems.append(f"report: {policy!r} is a split stage, not a policy")
    if problems:
        raise ConfigError(problems)
    return report


# ------------------------------------------------------------------------------ running


def pipeline_run_dir(pipeline: Pipeline) -> Path:
    return run_dir_for(pipeline.name, pipeline.output_dir)


def describe(pipeline: Pipeline) -> str:
    """Every stage resolved, as YAML (``pipeline.yaml`` in the run directory)."""
    parts = [f"# pipeline {pipeline.name}: stages resolved (identity, folder)\n"]
    for stage in pipeline.stages:
        parts.append(f"# --- {stage.name} ({stage.kind}) {stage.identity} {stage.folder}\n")
        body = (
            to_yaml(stage.settings)
            if stage.kind == "train"
            else OmegaConf.to_yaml(OmegaConf.structured(stage.settings))
        )
        parts.append(f"{stage.name}:\n" + "".join(f"  {line}\n" for line in body.splitlines()))
    return "".join(parts)


def run_pipeline(pipeline: Pipeline, run_dir: Path | None = None) -> tuple[dict[str, Any], Path]:
    """Run every stage in order (skipping finished ones), then the report. The pipeline's
    folder belongs to one run at a time (its lock), as a single run's does."""
    run_dir = Path(run_dir or pipeline_run_dir(pipeline))
    with run_folder_lock(run_dir):
        return _run_pipeline(pipeline, run_dir)


def _run_pipeline(pipeline: Pipeline, run_dir: Path) -> tuple[dict[str, Any], Path]:
    (run_dir / "stages").mkdir(parents=True, exist_ok=True)
    (run_dir / "pipeline.yaml").write_text(describe(pipeline))
    summary: dict[str, Any] = {"pipeline": pipeline.name, "stages": {}, "ran": [], "reused": []}
    start = time.time()
    for stage in pipeline.stages:
        link = run_dir / "stages" / stage.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(stage.folder.resolve(), target_is_directory=True)
        began = time.time()
        result, ran = run_stage(stage)
        (summary["ran"] if ran else summary["reused"]).append(stage.name)
        print(
            f"stage {stage.name} ({stage.kind}): "
            f"{'done' if ran else 'finished earlier, reused'} in {time.time() - began:.0f} s",
            flush=True,
        )
        summary["stages"][stage.name] = result
    if pipeline.report.policies:
        summary["comparison"] = _cached_report(pipeline, run_dir)
    summary["runtime_s"] = round(time.time() - start, 2)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    from prefopt.eval.html import run_report

    run_report(run_dir)
    return summary, run_dir


REPORT_FILES = ("comparison.md", "comparison.json", "comparison.png")


def _cached_report(pipeline: Pipeline, run_dir: Path) -> dict[str, Any]:
    """The closing comparison, itself cached by the identities of what it compares."""
    import shutil

    from prefopt.pipeline.report import pipeline_report

    key = json.dumps(
        {"report": dataclasses.asdict(pipeline.report), "seed": pipeline.seed,
         "stages": {s.name: s.identity for s in pipeline.stages}},
        sort_keys=True,
    )  # fmt: skip
    folder = stages_dir() / f"report-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    result, ran = run_once(folder, "the report", lambda: pipeline_report(pipeline, folder))
    if not ran:
        print((folder / "comparison.md").read_text(), flush=True)
    for name in REPORT_FILES:
        if (folder / name).exists():
            shutil.copyfile(folder / name, run_dir / name)
    return result


def run_stage(stage: Stage) -> tuple[dict[str, Any], bool]:
    """Run one stage in its cache folder unless finished there; returns (summary, ran)."""
    label = f"stage {stage.name}"
    if stage.kind == "train":
        from prefopt.pipeline.world_models import resolve_world_models

        return run_in_folder(resolve_world_models(stage.settings), stage.folder, label)
    work = _run_split if stage.kind == "split" else _run_expo
    return run_once(stage.folder, label, lambda: work(stage))


def _scorer(spec: str, world_cfg: WorldConfig) -> Any:
    from prefopt.rewards.scorers import load_scorer
    from prefopt.world import build_world

    if spec == "world":
        return build_world(world_cfg, cache_dir=cache_dir())
    if spec.startswith("world:"):
        from prefopt.pipeline.world_models import world_model

        recipe = Recipe(world=world_cfg)
        return load_scorer(str(world_model(recipe, spec)))
    return load_scorer(spec)


def _run_split(stage: Stage) -> dict[str, Any]:
    from prefopt.pipeline.split import format_split_report, run_split
    from prefopt.world import build_world

    cfg: SplitSettings = stage.settings
    world = build_world(cfg.world, cache_dir=cache_dir())
    records = world.preference_records("train")
    report = run_split(
        _scorer(cfg.scorer, cfg.world), records, cfg.tau, cfg.mode, stage.folder, cfg.batch_size
    )
    print(format_split_report(report), flush=True)
    for side in ("easy", "hard"):
        if not report[f"n_{side}"]:
            from prefopt.trainers.base import TrainingError

            raise TrainingError(
                f"stage {stage.name}: no {side} pairs at tau {cfg.tau} ({cfg.mode}; resolved "
                f"threshold {report['threshold']:.3g} on the reward model's scale, "
                f"{report['n_pairs']} pairs); set stages.{stage.name}.tau, or mode: quantile"
            )
    return report


def _run_expo(stage: Stage) -> dict[str, Any]:
    return run_expo(stage.settings, stage.folder)


def run_expo(cfg: ExpoSettings, folder: Path) -> dict[str, Any]:
    """ExPO's alpha search on the world's held-out test prompts, written into ``folder``."""
    import torch

    from prefopt.pipeline.expo import alpha_search
    from prefopt.world import build_world

    world = build_world(cfg.world, cache_dir=cache_dir())
    prompts = expo_prompts(world, cfg.prompts, cfg.n_prompts)
    sft = _model_path(cfg.sft, cfg.world)
    aligned = _model_path(cfg.aligned, cfg.world)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return alpha_search(
        sft, aligned, cfg.alphas, _scorer(cfg.scorer, cfg.world), prompts, cfg, device, folder,
    )  # fmt: skip


def expo_prompts(world: Any, which: str, n: int) -> list[str]:
    """The first ``n`` distinct prompts ExPO chooses alpha on: of the training pairs
    (``train``) or of the world's test pairs (``heldout``), never an evaluation prompt that a
    report compares the chosen model on (no selection bias in the reported gold)."""
    split = {"train": "train", "heldout": "test"}[which]
    evaluated = set(world.eval_prompts("test")) | set(world.eval_prompts("ood"))
    seen = dict.fromkeys(r["prompt"] for r in world.preference_records(split))
    return [p for p in seen if p not in evaluated][:n]


def _model_path(spec: str, world_cfg: WorldConfig) -> str:
    if spec.startswith("world:"):
        from prefopt.pipeline.world_models import world_model

        return str(world_model(Recipe(world=world_cfg), spec))
    return spec
