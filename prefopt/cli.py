"""The `prefopt` command line.

    prefopt train RECIPE [key=value ...]   train a recipe (a name in recipes/ or a YAML path)
    prefopt recipes                        list the shipped recipes
    prefopt eval RUN_DIR                   evaluate a finished run again
    prefopt eval-rm RM [RM ...]            RETA reliability curves of reward models
    prefopt compare-rm A B                 paired comparison of two reward models' accuracy
    prefopt compare A B                    paired comparison of two policies' gold reward
    prefopt ablate NAME [SIZE=tiny|full] [SEEDS=0,1]
                                          run a sweep (recipes/ablations/NAME.yaml), resumable
    prefopt plot DIR                       redraw an ablation's or a run's plots from its files

A bad recipe exits with status 2 and the list of problems, without a traceback. The last line
of `train` is ``run directory: <path>``; scripts rely on it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from prefopt.config import ConfigError, list_recipes, load_recipe, recipe_path
from prefopt.paths import is_main_process, launched_processes, say

EXIT_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prefopt", description="preference optimisation")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train a recipe")
    p_train.add_argument("recipe", help="a recipe name (see `prefopt recipes`) or a YAML path")
    p_train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. loss.beta=0.2")
    sub.add_parser("recipes", help="list shipped recipes")
    p_eval = sub.add_parser("eval", help="evaluate a finished run")
    p_eval.add_argument("run_dir", type=Path)
    p_eval.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides of the eval section; data.eval_source=FILE (data.eval_split, "
        "data.max_eval_rows): held-out data for a run trained on files",
    )
    p_rm = sub.add_parser("eval-rm", help="RETA reliability curve of reward models")
    p_rm.add_argument(
        "models",
        nargs="+",
        help="reward-model run dirs / folders, 'world', or A,B,C for an ensemble",
    )
    p_rm.add_argument(
        "--oracle",
        default="world",
        help="'world' (the gold oracle) or a jsonl of prompt, response, oracle",
    )
    p_rm.add_argument("--out", type=Path, default=None, help="output folder (default runs/reta-*)")
    p_rm.add_argument("--n-prompts", type=int, default=64)
    p_rm.add_argument("--n-responses", type=int, default=16)
    p_rm.add_argument("--subset-size", type=int, default=None, help="default: half of N")
    p_rm.add_argument("--resamples", type=int, default=100)
    p_rm.add_argument("--ensemble", choices=["mean", "mean_minus_std", "min"], default="mean")
    p_rm.add_argument("--ensemble-coef", type=float, default=1.0)
    p_rm.add_argument("--seed", type=int, default=0)
    p_cmp = sub.add_parser(
        "compare-rm",
        help="two reward models on the same held-out world pairs: accuracy, expected accuracy, "
        "their difference and its paired standard error",
    )
    p_cmp.add_argument(
        "a",
        help="reward-model run dir or model folder, or 'world' (the gold reward); A or B must "
        "be a run trained on the world",
    )
    p_cmp.add_argument("b", help="as A")
    p_cmp.add_argument(
        "--n-pairs", type=int, default=None, help="default: the run's held-out pairs"
    )
    p_cmp.add_argument(
        "--skip",
        type=int,
        default=0,
        help="start after this many test pairs (e.g. pairs no choice was made on)",
    )
    p_cmp.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    p_pol = sub.add_parser(
        "compare",
        help="two policies of one world on the same prompts and sampling seeds: gold reward, "
        "KL, win rate, diversity, their differences and paired standard errors",
    )
    p_pol.add_argument("a", help="policy run directory, model folder or world:sft")
    p_pol.add_argument("b", help="as A (e.g. A's reference: the SFT run, or world:sft)")
    p_pol.add_argument(
        "--reference", default=None, help="the model both KLs are measured to (default: A's)"
    )
    p_pol.add_argument("--n-prompts", type=int, default=None, help="default: the run's eval")
    p_pol.add_argument("--samples", type=int, default=None, help="samples per prompt")
    p_pol.add_argument("--seed", type=int, default=0)
    p_pol.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    p_expo = sub.add_parser(
        "expo",
        help="ExPO (Zheng et al. 2024): extrapolate an aligned model away from its SFT model, "
        "theta = aligned + alpha (aligned - sft); with several alphas, pick the best by reward",
    )
    p_expo.add_argument("--sft", required=True, help="the SFT model: folder, run or world:sft")
    p_expo.add_argument("--aligned", required=True, help="the aligned model: folder or run")
    p_expo.add_argument(
        "--alpha", default="0.3", help="one alpha, or a comma-separated grid to search"
    )
    p_expo.add_argument("--out", type=Path, required=True, help="output folder")
    p_expo.add_argument(
        "--scorer", default="world", help="grid search: 'world' (gold), world:rm or an RM folder"
    )
    p_expo.add_argument("--n-prompts", type=int, default=256, help="grid search: prompts")
    p_expo.add_argument("--samples", type=int, default=2, help="grid search: samples per prompt")
    p_abl = sub.add_parser(
        "ablate",
        help="run an ablation (recipes/ablations/NAME.yaml or a YAML path): every run through "
        "the stage cache, resumable; then results.csv, results.md and plots",
    )
    p_abl.add_argument("ablation", help="a shipped ablation name or a YAML path")
    p_abl.add_argument(
        "overrides",
        nargs="*",
        help="SIZE=tiny|full, SEEDS=0,2 (run only these seeds: split a sweep across "
        "processes into one folder), and key=value overrides for every run",
    )
    p_abl.add_argument("--size", default=None, help="tiny (default) or full; as SIZE=")
    p_abl.add_argument(
        "--out", type=Path, default=None, help="default runs/ablations/<name>-<size>"
    )
    p_plot = sub.add_parser(
        "plot", help="redraw the plots of an ablation folder or a run directory from its files"
    )
    p_plot.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not sys.stderr.isatty():
        # in a log file the libraries' own bars (loading, saving weights) would write carriage
        # returns; prefopt's training loop prints plain progress lines there instead
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        if args.command == "recipes":
            return _recipes()
        if args.command == "train":
            return _train(args.recipe, args.overrides)
        if args.command == "eval":
            return _eval(args.run_dir, args.overrides)
        if args.command == "eval-rm":
            return _eval_rm(args)
        if args.command == "compare-rm":
            return _compare_rm(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "expo":
            return _expo(args)
        if args.command == "ablate":
            return _ablate(args)
        if args.command == "plot":
            return _plot(args.dir)
    except ConfigError as exc:
        if is_main_process():  # every process of a launch reads the same recipe
            print(f"prefopt: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 1


def _recipes() -> int:
    from prefopt.pipeline.stages import is_staged, load_pipeline

    names = list_recipes()
    width = max(len(n) for n in names) if names else 0
    for name in names:
        try:
            loaded = load_pipeline(name) if is_staged(name) else load_recipe(name)
            description = loaded.description
        except ConfigError as exc:
            description = f"(invalid: {exc.problems[0]})"
        print(f"{name:<{width}}  {description}")
    return 0


def _train(recipe_name: str, overrides: list[str]) -> int:
    from prefopt.pipeline.stages import is_staged

    staged = is_staged(recipe_name)
    if staged and launched_processes() > 1:
        raise ConfigError(
            [
                f"{recipe_name} is a staged recipe (a pipeline): its stages run one after the "
                "other in one process; launch it without accelerate launch / torchrun"
            ]
        )
    if staged:  # a pipeline: every stage is validated before anything runs
        from prefopt.pipeline.stages import load_pipeline, pipeline_run_dir, run_pipeline

        pipeline = load_pipeline(recipe_name, overrides)
        run_dir = pipeline_run_dir(pipeline)
        resume_hint = (
            f"  prefopt train {recipe_name} {' '.join(overrides)}".rstrip()
            + "   (finished stages are reused; the interrupted one resumes)"
        )
    else:
        recipe = load_recipe(recipe_name, overrides)  # validates before anything heavy loads
        from prefopt.train import run_directory

        run_dir = _agreed_run_dir(run_directory(recipe), recipe.trainer.device)
        resume_hint = f"  prefopt train {run_dir / 'recipe.yaml'} output_dir={run_dir} resume=auto"
    from prefopt.data import DataError
    from prefopt.pipeline.run import train
    from prefopt.trainers.base import TrainingError, TrainingInterrupted

    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # what schedulers send
    try:
        if staged:
            summary, run_dir = run_pipeline(pipeline, run_dir)
        else:
            summary, run_dir = train(recipe, run_dir)
    except TrainingInterrupted as exc:
        where = f"checkpoint {exc.checkpoint}" if exc.checkpoint else "no checkpoint yet"
        if not staged and not run_dir.exists():  # interrupted while building a world model
            resume_hint = (
                f"  prefopt train {recipe_name} {' '.join(overrides)}".rstrip()
                + "   (the world model being built resumes from its checkpoint)"
            )
        if is_main_process():
            print(
                f"prefopt: interrupted ({exc.reason}) after step {exc.step}; {where}. Resume "
                "with:\n" + resume_hint,
                file=sys.stderr,
            )
        kept = "" if run_dir.exists() else " (not created: interrupted before it started)"
        say(f"run directory: {run_dir}{kept}")
        return 143 if exc.reason == "SIGTERM" else 130
    except KeyboardInterrupt:  # before training started: nothing to keep
        if is_main_process():
            print("prefopt: interrupted before the first step", file=sys.stderr)
        say(f"run directory: {run_dir}")
        return 130
    except (TrainingError, DataError, OSError) as exc:
        # expected failures (bad data, missing files or models, a diverging run): a message,
        # no traceback; the last checkpoint in the run directory is intact. Every process
        # that fails says so (one process's own failure must not be hidden), tagged by rank.
        failure = f"training failed: {type(exc).__name__}: {exc}"
        print(f"prefopt: {_rank_tag()}{failure}", file=sys.stderr)
        kept = "" if run_dir.exists() else " (not kept: it failed before its first step)"
        say(f"run directory: {run_dir}{kept}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    if staged:
        ran, reused = summary["ran"], summary["reused"]
        print(f"stages run: {', '.join(ran) or 'none'}; reused: {', '.join(reused) or 'none'}")
    elif is_main_process():
        _print_summary(summary)
    say(f"run directory: {run_dir}")
    return 0


def _agreed_run_dir(run_dir: Path, device: str) -> Path:
    """The main process's run directory, on every process of a multi-process launch (each
    would otherwise stamp its own ``runs/<recipe>-<time>``): accelerate's process group is
    started here, with the settings the trainer's ``Accelerator`` will use, and rank 0's
    choice is broadcast."""
    if launched_processes() == 1:
        return run_dir
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from prefopt.trainers.engines import use_cpu

    PartialState(cpu=use_cpu(device))
    if not is_main_process():  # the libraries' progress bars and notes: once, from rank 0
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    chosen = [str(run_dir)]
    broadcast_object_list(chosen)
    return Path(chosen[0])


def _rank_tag() -> str:
    return "" if launched_processes() == 1 else f"[rank {os.environ.get('RANK', '0')}] "


def _ablate(args: argparse.Namespace) -> int:
    from prefopt.pipeline.ablate import default_out_dir, load_ablation, run_ablation

    sizes = [o.split("=", 1)[1] for o in args.overrides if o.startswith("SIZE=")]
    given_seeds = [o.split("=", 1)[1] for o in args.overrides if o.startswith("SEEDS=")]
    overrides = [o for o in args.overrides if not o.startswith(("SIZE=", "SEEDS="))]
    if len(sizes) > 1 or (sizes and args.size and sizes[0] != args.size):
        raise ConfigError([f"SIZE given twice: {', '.join(sizes + [args.size or ''])}"])
    size = args.size or (sizes[0] if sizes else "tiny")
    ablation = load_ablation(args.ablation, size, overrides)  # every run validated first
    seeds = _seeds_subset(given_seeds, ablation.seeds)
    out = args.out or default_out_dir(ablation)
    # the size's note describes the file's settings: not the runs when overrides change them
    about = f"; {ablation.note}" if ablation.note and not overrides else ""
    if overrides:
        about = f"; command-line overrides for every run: {' '.join(overrides)}"
    print(
        f"ablation {ablation.name} (size {size}): {len(ablation.runs)} runs of "
        f"{ablation.base}, into {out}{about}",
        flush=True,
    )
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        result = run_ablation(ablation, out, log=lambda line: print(line, flush=True), seeds=seeds)
    except KeyboardInterrupt:
        print(
            f"prefopt: ablation interrupted; finished runs are kept. Resume with:\n"
            f"  prefopt ablate {args.ablation} SIZE={size} {' '.join(overrides)}".rstrip()
            + (f" SEEDS={given_seeds[0]}" if given_seeds else "")
            + (f" --out {out}" if args.out else ""),
            file=sys.stderr,
        )
        print(f"ablation directory: {out}")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(
        f"runs: {len(result['ran'])} run, {len(result['skipped'])} finished earlier, "
        f"{len(result['failed'])} failed"
        + (f", {len(result['left'])} of other seeds left to another process" if seeds else "")
    )
    for path in result["files"]:
        print(f"wrote {path}")
    print(f"ablation directory: {out}")
    return 1 if result["failed"] else 0


def _seeds_subset(given: list[str], seeds: list[int]) -> list[int] | None:
    """``SEEDS=0,2``: the ablation's seeds this process runs (a sweep split across processes
    or machines into one folder), checked against the seeds of the chosen size."""
    if not given:
        return None
    if len(given) > 1:
        raise ConfigError([f"SEEDS given twice: {', '.join(given)}"])
    try:
        chosen = [int(s) for s in given[0].split(",")]
    except ValueError:
        raise ConfigError([f"SEEDS={given[0]}: expected comma-separated integers"]) from None
    unknown = [s for s in chosen if s not in seeds]
    if unknown:
        raise ConfigError(
            [f"SEEDS={given[0]}: seed(s) {unknown} are not this size's seeds {seeds}"]
        )
    return chosen


def _plot(folder: Path) -> int:
    if (folder / "ablation.json").exists() and (folder / "results.csv").exists():
        from prefopt.pipeline.courses import redraw_courses
        from prefopt.pipeline.results import redraw, write_html

        drawn = redraw(folder)
        courses = redraw_courses(folder)
        if courses and (folder / "results.md").exists():  # the report with them too
            write_html(folder, [*drawn, *courses])
        drawn += courses
    elif (folder / "metrics.jsonl").exists() or (folder / "comparison.json").exists():
        import json

        from prefopt.eval.html import run_report
        from prefopt.pipeline.report import plot_report

        if (folder / "comparison.json").exists():
            result = json.loads((folder / "comparison.json").read_text())
            plot_report(result, list(result["test"]), folder / "comparison.png")
        report = run_report(folder)
        names = ("training_curves.png", "overoptimisation.png", "gold_eval.png", "comparison.png")
        drawn = [folder / n for n in names if (folder / n).exists()]
        drawn = [*drawn, report] if drawn else []
    else:
        raise ConfigError(
            [f"{folder}: neither an ablation folder (ablation.json, results.csv) nor a run "
             "directory (metrics.jsonl or comparison.json)"]
        )  # fmt: skip
    if not drawn:
        print(f"prefopt plot: nothing to draw in {folder} (no gold/KL or metric values)")
        return 1
    for path in drawn:
        print(f"wrote {path}")
    return 0


def _expo(args: argparse.Namespace) -> int:
    from prefopt.pipeline.stages import ExpoSettings, run_expo

    try:
        alphas = [float(a) for a in str(args.alpha).split(",") if a.strip()]
    except ValueError:
        raise ConfigError([f"--alpha: not a number or list of numbers: {args.alpha!r}"]) from None
    sft, aligned = _model_arg(args.sft), _model_arg(args.aligned)
    try:
        if len(alphas) == 1:
            from prefopt.models.expo import load_and_extrapolate

            load_and_extrapolate(sft, aligned, alphas[0], args.out)
            print(f"extrapolated model (alpha {alphas[0]}): {args.out}")
            return 0
        cfg = ExpoSettings(
            sft=sft, aligned=aligned, alphas=alphas, scorer=args.scorer,
            n_prompts=args.n_prompts, samples_per_prompt=args.samples,
        )  # fmt: skip
        result = run_expo(cfg, args.out)
    except (ValueError, OSError) as exc:
        print(f"prefopt: expo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"best alpha {result['best_alpha']}: model in {args.out / 'model'}")
    print(f"curve: {args.out / 'expo_curve.csv'}")
    return 0


def _model_arg(spec: str) -> str:
    """A model folder for a CLI argument: a run directory means its ``model/``."""
    if spec.startswith("world:"):
        from prefopt.config import Recipe
        from prefopt.pipeline.world_models import world_model

        return str(world_model(Recipe(), spec))
    path = Path(spec)
    if (path / "recipe.yaml").exists() and (path / "model").exists():
        return str(path / "model")
    return spec


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    # stop at the end of the step in progress, so that its checkpoint can always be written
    from prefopt.trainers.base import request_stop

    request_stop("SIGTERM")


def _eval(run_dir: Path, overrides: list[str]) -> int:
    from prefopt.evaluate import evaluate_run

    if not (run_dir / "recipe.yaml").exists():
        raise ConfigError([f"{run_dir} is not a run directory (no recipe.yaml)"])
    recipe_path(run_dir / "recipe.yaml")
    from prefopt.data import DataError

    try:
        summary = evaluate_run(run_dir, overrides)
    except (DataError, OSError) as exc:
        print(f"prefopt: evaluation failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    _print_summary(summary)
    print(f"evaluation written to {summary['eval_dir']} (the run's own evaluation is unchanged)")
    print(f"run directory: {run_dir}")
    return 0


def _eval_rm(args: argparse.Namespace) -> int:
    import time

    from prefopt.eval.reta_eval import (
        evaluate_reward_models,
        file_oracle,
        format_table,
        world_oracle,
    )
    from prefopt.rewards.scorers import load_scorer

    try:
        loaded = {
            m: load_scorer(m, ensemble_mode=args.ensemble, ensemble_coef=args.ensemble_coef)
            for m in args.models
            if m != "world"
        }
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise ConfigError([f"eval-rm: {exc}"]) from None
    # 'world' is the gold reward of the runs' own world, which is also the default oracle
    world = _world_of(args.models) if "world" in args.models or args.oracle == "world" else None
    scorers = {m: world if m == "world" else loaded[m] for m in args.models}
    if args.oracle == "world":
        assert world is not None
        prompts, responses, oracle = world_oracle(
            world, args.n_prompts, args.n_responses, args.seed
        )
    else:
        try:
            prompts, responses, oracle = file_oracle(Path(args.oracle))
        except (OSError, ValueError) as exc:
            raise ConfigError([f"--oracle: {exc}"]) from None
    out = args.out or Path("runs") / f"reta-{time.strftime('%Y%m%d-%H%M%S')}"
    curves = evaluate_reward_models(
        scorers,
        prompts,
        responses,
        oracle,
        out,
        subset_size=args.subset_size,
        n_resamples=args.resamples,
        seed=args.seed,
    )
    print(format_table(curves))
    print(f"run directory: {out}")
    return 0


def _compare_rm(args: argparse.Namespace) -> int:
    import json
    import time
    from dataclasses import replace

    import torch

    from prefopt.eval.compare import format_comparison, paired_comparison, score_margins
    from prefopt.registry import get_loss
    from prefopt.rewards.scorers import load_scorer
    from prefopt.world import build_world
    from prefopt.world.config import PAIR_ONLY_FIELDS

    def usage(message: str) -> int:
        print(f"prefopt compare-rm: {message}", file=sys.stderr)
        return EXIT_CONFIG

    runs = {
        m: load_recipe(Path(m) / "recipe.yaml")
        for m in (args.a, args.b)
        if (Path(m) / "recipe.yaml").exists()
    }
    if not runs:
        return usage(
            "A or B must be a reward-model run directory trained on the world (its "
            "recipe.yaml names the world whose held-out pairs and gold reward are used)"
        )
    for name, run in runs.items():
        if run.data.source != "world":
            return usage(f"{name} was not trained on the world (data.source={run.data.source})")
        if get_loss(run.loss.name).kind not in ("reward", "armorm"):
            return usage(f"{name} is not a reward model (loss.name={run.loss.name})")
    worlds = {
        name: {k: v for k, v in vars(run.world).items() if k not in PAIR_ONLY_FIELDS}
        for name, run in runs.items()
    }
    if len({json.dumps(w, sort_keys=True) for w in worlds.values()}) > 1:
        return usage("A and B were trained on different worlds: their pairs are not comparable")
    if args.skip < 0 or (args.n_pairs is not None and args.n_pairs < 1):
        return usage("need --skip >= 0 and --n-pairs >= 1")
    recipe = next(iter(runs.values()))
    n = args.n_pairs or recipe.data.max_eval_rows or recipe.world.n_test_pairs
    started = time.time()

    def progress(message: str) -> None:  # on stderr; the result table stays on stdout
        print(f"compare-rm: {message} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)

    progress(f"building the world's held-out pairs {args.skip}..{args.skip + n}")
    # the world's test pairs come from one seeded stream: asking for more keeps the first ones;
    # built in memory (only the test split is generated), not materialised in the cache
    world = build_world(
        replace(recipe.world, n_test_pairs=max(recipe.world.n_test_pairs, args.skip + n))
    )
    progress("loading A and B")
    try:
        scorers = [world if m == "world" else load_scorer(m) for m in (args.a, args.b)]
    except (FileNotFoundError, OSError, ValueError) as exc:
        return usage(str(exc))
    records = world.preference_records("test")[args.skip : args.skip + n]
    gaps = torch.tensor([r["metadata"]["gold_gap"] for r in records])

    def margins(index: int) -> torch.Tensor:
        name = "AB"[index]

        def scored(done: int, total: int) -> None:
            progress(f"{name}: {done}/{total} pairs scored")

        return score_margins(scorers[index], records, scored)

    try:
        result = paired_comparison(margins(0), margins(1), gaps, world.config.label_temperature)
    except (ValueError, OSError) as exc:
        print(f"prefopt compare-rm: scoring failed: {exc}", file=sys.stderr)
        return 1
    result["pairs"] = {"split": "test", "skip": args.skip, "n": len(records)}
    print(format_comparison(result, f"A: {args.a}", f"B: {args.b}"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"a": args.a, "b": args.b, **result}, indent=2))
    return 0


def _compare(args: argparse.Namespace) -> int:
    import json

    from prefopt.evaluate import compare_policies

    try:
        result = compare_policies(
            args.a,
            args.b,
            reference=args.reference,
            n_prompts=args.n_prompts,
            samples_per_prompt=args.samples,
            seed=args.seed,
        )
    except OSError as exc:
        print(f"prefopt compare: loading failed: {exc}", file=sys.stderr)
        return 1
    print(result["table"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


def _world_of(models: list[str]):
    """The world a reward model was trained on (its run's recipe), else the default world."""
    from prefopt.paths import cache_dir
    from prefopt.world import WorldConfig, build_world

    for spec in models:
        for part in spec.split(","):
            recipe_file = Path(part) / "recipe.yaml"
            if recipe_file.exists():
                return build_world(load_recipe(recipe_file).world, cache_dir=cache_dir())
    return build_world(WorldConfig(), cache_dir=cache_dir())


def _print_summary(summary: dict) -> None:
    from prefopt.eval.gold import SPLIT_KEYS

    ev = summary.get("eval", {})
    keys = [
        *(k for k in SPLIT_KEYS if k != "reference_ead"),
        "ood_gold_reward",
        "mean_length",
        "pm_divergence",
        "accuracy",
        "ties",
        "ece",
        "expected_accuracy",
        "bayes_accuracy",
        "rewards/accuracies",
        "loss",
    ]

    def shown_value(k: str) -> str:
        se = ev.get(k + "_se")
        return f"{k}={ev[k]:.4f}" + (f"±{se:.4f}" if isinstance(se, float) else "")

    shown = [shown_value(k) for k in keys if isinstance(ev.get(k), int | float)]
    if shown:
        print("eval: " + " ".join(shown))


if __name__ == "__main__":
    sys.exit(main())
