"""The ExPO alpha search (Zheng et al., arXiv 2404.16792; ``../shared/ALGORITHMS.md`` s. 7).

ExPO's one hyperparameter, the extrapolation strength alpha in
``theta_expo = theta_aligned + alpha (theta_aligned - theta_sft)``
(:mod:`prefopt.models.expo`), is chosen as the authors did: build the extrapolated model for
each alpha of a grid, sample completions on held-out prompts, score them with a reward model
(here any scorer: a trained reward model, or the synthetic world's gold reward), and keep the
alpha with the highest mean score. The authors sampled at temperature 0.7, top-k 50, top-p 0.9
with presence and frequency penalties 0.1 (:data:`PAPER_SAMPLING`,
:mod:`prefopt.models.penalties`); the sampling settings here are the caller's ``gen_cfg``.

Additions to the paper, for telling a real gain from noise on a small prompt set: the grid
always contains alpha = 0 (the aligned model itself); every alpha samples with the same seed,
so the completions of two alphas are paired prompt by prompt; and each alpha's mean comes with
its standard error over prompts and its paired difference against alpha = 0 with the paired
standard error (:func:`prefopt.eval.compare.paired`). The best alpha is still the highest mean,
as in the paper; ties go to the alpha closest to 0.

Typical use::

    world = build_world(WorldConfig())
    result = alpha_search(
        "runs/sft/model", "runs/dpo/model", [0.1, 0.3, 0.5, 1.0], world,
        world.eval_prompts("test"), EvalConfig(), "cpu", Path("runs/expo"),
    )
    result["best_alpha"]
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from prefopt.eval.compare import paired, standard_error
from prefopt.models.engines import RolloutEngine, engine_settings, open_engine
from prefopt.models.expo import extrapolate_model, load_pair
from prefopt.models.loading import save_model

if TYPE_CHECKING:
    from prefopt.rewards.scorers import Scorer

#: the sampling settings the authors used to select alpha (ALGORITHMS.md section 7; vLLM's
#: SamplingParams in chujiezheng/LLM-Extrapolation, generate_ultrafeedback.py)
PAPER_SAMPLING = {
    "temperature": 0.7,
    "top_k": 50,
    "top_p": 0.9,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.1,
}

CURVE_COLUMNS = ("alpha", "mean", "se", "diff_vs_0", "diff_se")
GENERATION_FIELDS = (
    "samples_per_prompt",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "batch_size",
)


def alpha_search(
    sft_path: str,
    aligned_path: str,
    alphas: Sequence[float],
    scorer: Scorer,
    prompts: Sequence[str],
    gen_cfg: Any,
    device: torch.device | str,
    out_dir: Path,
    seed: int = 0,
    *,
    dtype: str = "fp32",
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Score the ExPO model of every alpha on ``prompts`` and keep the best one.

    ``gen_cfg`` has the fields of :class:`prefopt.config.EvalConfig` that sampling uses
    (``samples_per_prompt``, ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``,
    ``batch_size``; optionally ``presence_penalty``, ``frequency_penalty``); ``scorer`` is
    anything with ``score(prompts, completions) -> [N]``.

    Writes into ``out_dir``: ``expo_curve.csv`` (one row per alpha: ``alpha, mean, se,
    diff_vs_0, diff_se``), ``expo_curve.png`` (when matplotlib imports), ``expo.json`` (the
    returned dict) and ``model/`` (the best alpha's model in Hugging Face format, with the
    aligned model's tokenizer). ``mean`` is the mean over prompts of each prompt's mean score
    over its samples, ``se`` its standard error over prompts, ``diff_vs_0`` the mean per-prompt
    difference against alpha = 0 and ``diff_se`` its paired standard error. In the returned
    dict (and the JSON) an undefined standard error (a single prompt) is None."""
    grid = alpha_grid(alphas)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("alpha_search needs at least one held-out prompt")
    pair = load_pair(sft_path, aligned_path, dtype=dtype, trust_remote_code=trust_remote_code)
    if pair.tokenizer is None:
        raise ValueError(
            f"alpha_search: neither {aligned_path!r} nor {sft_path!r} holds a tokenizer to "
            "generate with"
        )
    device = torch.device(device)
    pair.sft.to(device)
    pair.aligned.to(device)

    per_prompt: dict[float, Tensor] = {}
    lengths: dict[float, float] = {}
    # one engine (``gen_cfg.engine``) for the whole grid, given each alpha's weights in turn
    with contextlib.ExitStack() as stack:
        engine: RolloutEngine | None = None
        for alpha in grid:
            model = extrapolate_model(pair.sft, pair.aligned, alpha)
            if engine is None:
                settings = engine_settings(gen_cfg)
                engine = stack.enter_context(open_engine(model, pair.tokenizer, device, settings))
            else:
                engine.sync_weights(model)
            # the same seed for every alpha: paired samples, prompt by prompt
            per_prompt[alpha], lengths[alpha] = score_policy(engine, prompts, scorer, gen_cfg, seed)
            del model
    rows = curve_rows(per_prompt)
    for row in rows:
        row["completion_tokens"] = lengths[row["alpha"]]
    best = best_alpha(rows)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = out_dir / "model"
    save_model(extrapolate_model(pair.sft, pair.aligned, best), pair.tokenizer, model_dir)
    write_curve_csv(rows, out_dir / "expo_curve.csv")
    plot = plot_curve(rows, best, out_dir / "expo_curve.png")
    result = {
        "method": "ExPO (Zheng et al., arXiv 2404.16792)",
        "sft": str(sft_path),
        "aligned": str(aligned_path),
        "alphas": grid,
        "best_alpha": best,
        "best": next(row for row in rows if row["alpha"] == best),
        "curve": rows,
        "n_prompts": len(prompts),
        "seed": seed,
        "generation": _generation_settings(gen_cfg),
        "per_prompt_scores": {repr(a): per_prompt[a].tolist() for a in grid},
        "files": {
            "curve_csv": str(out_dir / "expo_curve.csv"),
            "plot": str(plot) if plot is not None else None,
            "model": str(model_dir),
        },
    }
    result = _json_safe(result)
    (out_dir / "expo.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def alpha_grid(alphas: Sequence[float]) -> list[float]:
    """The sorted, de-duplicated grid, always holding alpha = 0 (the aligned model)."""
    grid = {0.0}
    for alpha in alphas:
        if isinstance(alpha, bool) or not isinstance(alpha, int | float):
            raise ValueError(f"ExPO alphas must be numbers, got {alpha!r}")
        if not math.isfinite(alpha):
            raise ValueError(f"ExPO alphas must be finite, got {alpha!r}")
        grid.add(float(alpha) + 0.0)  # + 0.0 turns -0.0 into 0.0
    return sorted(grid)


@torch.no_grad()
def score_policy(
    engine: RolloutEngine,
    prompts: list[str],
    scorer: Scorer,
    gen_cfg: Any,
    seed: int,
) -> tuple[Tensor, float]:
    """Sample ``gen_cfg.samples_per_prompt`` completions per prompt with ``engine`` (holding the
    model to score) and score them.

    Returns ``[P]`` float64 per-prompt mean scores (mean over that prompt's samples) and the
    mean completion length in tokens (EOS included)."""
    samples = engine.sample(prompts, gen_cfg, seed)
    k = gen_cfg.samples_per_prompt
    scores = torch.as_tensor(scorer.score(samples.flat_prompts, samples.flat_completions))
    scores = scores.detach().double().cpu().reshape(-1)
    if scores.numel() != len(prompts) * k:
        raise ValueError(
            f"the scorer returned {scores.numel()} scores for {len(prompts) * k} completions"
        )
    length = float(samples.completion_mask.sum(dim=1).double().mean())
    return scores.view(len(prompts), k).mean(dim=1), length


def curve_rows(per_prompt: dict[float, Tensor]) -> list[dict[str, Any]]:
    """One row per alpha (sorted): ``alpha, mean, se`` over prompts and the paired
    ``diff_vs_0, diff_se`` against alpha = 0. ``per_prompt[alpha]``: ``[P]`` scores, the same
    prompts in the same order for every alpha."""
    if 0.0 not in per_prompt:
        raise ValueError("the ExPO curve needs alpha = 0 (the aligned model) as its baseline")
    baseline = per_prompt[0.0]
    rows = []
    for alpha in sorted(per_prompt):
        scores = per_prompt[alpha]
        comparison = paired(scores, baseline)
        rows.append(
            {
                "alpha": alpha,
                "mean": float(scores.double().mean()),
                "se": standard_error(scores),
                "diff_vs_0": comparison["diff"],
                "diff_se": comparison["se"],
            }
        )
    return rows


def best_alpha(rows: Sequence[dict[str, Any]]) -> float:
    """The alpha with the highest mean score (the paper's rule); exact ties go to the alpha
    closest to 0, then to the smaller one, so the choice never depends on the grid's order."""
    candidates = [r for r in rows if r["mean"] is not None and not math.isnan(r["mean"])]
    if not candidates:
        raise ValueError("no alpha has a finite mean score")
    top = max(r["mean"] for r in candidates)
    return min((r["alpha"] for r in candidates if r["mean"] == top), key=lambda a: (abs(a), a))


def write_curve_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """``alpha, mean, se, diff_vs_0, diff_se``, one row per alpha (an undefined value: nan)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CURVE_COLUMNS)
        for row in rows:
            writer.writerow([_csv_number(row[c]) for c in CURVE_COLUMNS])


def plot_curve(rows: Sequence[dict[str, Any]], best: float, path: Path) -> Path | None:
    """``expo_curve.png``: the mean score against alpha with standard-error bars, and the
    paired difference against alpha = 0 with its paired standard error. None (no file) when
    matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = [r["alpha"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, se_key, title in (
        (left, "mean", "se", "mean score (SE over prompts)"),
        (right, "diff_vs_0", "diff_se", "score - score at alpha 0 (paired SE)"),
    ):
        values = [_nan_if_none(r[key]) for r in rows]
        errors = [_zero_if_undefined(r[se_key]) for r in rows]
        ax.errorbar(alphas, values, yerr=errors, fmt="o-", capsize=3)
        ax.axvline(best, color="tab:green", ls=":", label=f"best alpha = {best:g}")
        ax.set_xlabel("alpha (theta_aligned + alpha (theta_aligned - theta_sft))")
        ax.set_title(title)
    right.axhline(0.0, color="grey", lw=0.8)
    left.legend()
    fig.suptitle("ExPO alpha search")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _generation_settings(gen_cfg: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(gen_cfg) and not isinstance(gen_cfg, type):
        settings = dataclasses.asdict(gen_cfg)
        return {k: settings[k] for k in GENERATION_FIELDS if k in settings}
    return {k: getattr(gen_cfg, k) for k in GENERATION_FIELDS if hasattr(gen_cfg, k)}


def _json_safe(value: Any) -> Any:
    """NaN / infinite floats -> None (JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _csv_number(value: float | None) -> str:
    return "nan" if value is None else repr(float(value))


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def _zero_if_undefined(value: float | None) -> float:
    return 0.0 if value is None or math.isnan(value) else value
