"""The MPO split: easy and hard pairs by reward-model gap (Gou & Nguyen, arXiv 2403.19443).

A trained reward model scores both responses of every training pair, ``delta = r(x, chosen) -
r(x, rejected)``. A pair is *easy* when ``|delta| >= tau`` and *hard* otherwise
(``../shared/ALGORITHMS.md`` section 4). Easy pairs are re-labelled by the sign of delta (the
response the RM prefers becomes ``chosen``) and feed stage 1 (DPO); the prompts of the hard pairs
feed stage 2 (PPO with the stage-1 model as reference).

Deviations from the paper, both additions: tau may be given as a quantile of ``|delta|``
(``mode="quantile"``) because reward scales differ between models; and a bucket report measures
the motivation of the method on the data at hand -- the RM's accuracy against the dataset labels
per ``|delta|`` bucket and, on the synthetic world, against the gold preference.

Typical use::

    report = run_split(scorer, world.preference_records("train"), 1.0, "absolute", "runs/split")
    print(format_split_report(report))
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from prefopt.world.io import dumps_record, write_jsonl

if TYPE_CHECKING:
    from prefopt.rewards.scorers import Scorer

MODES = ("absolute", "quantile")
DEFAULT_EDGES = (0.0, 1.0, 2.0, 3.0)

#: RM accuracy on HH-RLHF test per ``|delta|`` bucket in the authors' motivation table
#: (on their RM's scale; a reference point, not a target for other reward models).
PAPER_HH_ACCURACY = {"[0, 1)": 0.61, "[1, 2)": 0.81, "[2, 3)": 0.90, ">= 3": 0.97}


# ---------------------------------------------------------------------------- the split
def resolve_threshold(deltas: Tensor, tau: float, mode: str = "absolute") -> float:
    """The absolute gap threshold of ``tau``: ``tau`` itself in ``"absolute"`` mode, the
    ``tau``-quantile of ``|deltas|`` (linear interpolation) in ``"quantile"`` mode.

    ``deltas``: ``[N]`` reward gaps ``r(chosen) - r(rejected)``."""
    _check_deltas(deltas)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not math.isfinite(tau):
        raise ValueError(f"tau must be a finite number, got {tau!r}")
    if mode == "absolute":
        if tau < 0:
            raise ValueError(f"tau is an absolute reward gap and must be >= 0, got {tau}")
        return float(tau)
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"in quantile mode tau must lie in [0, 1], got {tau}")
    if deltas.numel() == 0:
        raise ValueError("a quantile threshold needs at least one pair")
    return float(torch.quantile(deltas.detach().double().abs(), float(tau)))


def split_pairs(deltas: Tensor, tau: float, mode: str = "absolute") -> Tensor:
    """``[N]`` bool mask, True where the pair is easy: ``|delta| >= threshold``.

    ``mode="absolute"``: the threshold is ``tau`` (>= 0), on the reward model's scale (the
    authors used 1 on HH-RLHF and 2 on TL;DR). ``mode="quantile"``: ``tau`` in [0, 1] is the
    quantile of ``|delta|`` used as threshold, so about a fraction ``1 - tau`` of the pairs is
    easy (``tau=0.5``: the half with the largest gaps; ``tau=0``: every pair)."""
    threshold = resolve_threshold(deltas, tau, mode)
    return deltas.detach().double().abs() >= threshold


def relabel(
    records: Sequence[dict[str, Any]], deltas: Tensor, easy: Tensor
) -> list[dict[str, Any]]:
    """Copies of ``records`` (same order) with every easy pair labelled by the sign of delta.

    An easy pair with ``delta < 0`` has ``chosen`` and ``rejected`` swapped; every easy pair gets
    ``metadata["relabelled"]`` (True for the swapped ones). Hard pairs are returned unchanged.
    The fields that describe one side of a pair follow the swap, so that the metadata stays
    true of the new labels: metadata keys ``<name>_chosen`` / ``<name>_rejected`` exchange
    values, ``gold_gap`` (``gold(chosen) - gold(rejected)``) changes sign and
    ``label_agrees_with_gold`` becomes ``new gold_gap >= 0`` (the world's definition); a numeric
    ``margin`` changes sign; ``scores`` as a ``[chosen, rejected]`` list is reversed.

    ``deltas``: ``[N]`` RM gaps of the records as given; ``easy``: ``[N]`` bool mask."""
    _check_deltas(deltas)
    if easy.shape != deltas.shape or easy.dtype != torch.bool:
        raise ValueError("easy must be a bool mask of the same shape as deltas")
    if len(records) != deltas.numel():
        raise ValueError(f"{len(records)} records but {deltas.numel()} deltas")
    out = []
    for record, delta, is_easy in zip(records, deltas.tolist(), easy.tolist(), strict=True):
        new = copy.deepcopy(record)
        if is_easy:
            swap = delta < 0
            if swap:
                new = _swapped(new)
            new["metadata"] = {**(new.get("metadata") or {}), "relabelled": swap}
        out.append(new)
    return out


def _swapped(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with chosen and rejected (and the fields tied to each side) exchanged."""
    record["chosen"], record["rejected"] = record["rejected"], record["chosen"]
    margin = record.get("margin")
    if isinstance(margin, int | float) and not isinstance(margin, bool):
        record["margin"] = -margin
    scores = record.get("scores")
    if isinstance(scores, list) and len(scores) == 2:
        record["scores"] = scores[::-1]
    meta = record.get("metadata")
    if isinstance(meta, dict):
        for key in list(meta):
            if key.endswith("_chosen"):
                other = key[: -len("_chosen")] + "_rejected"
                if other in meta:
                    meta[key], meta[other] = meta[other], meta[key]
        if isinstance(meta.get("gold_gap"), int | float):
            meta["gold_gap"] = -meta["gold_gap"] if meta["gold_gap"] else meta["gold_gap"]
            if "label_agrees_with_gold" in meta:
                meta["label_agrees_with_gold"] = bool(meta["gold_gap"] >= 0)
    return record


# ------------------------------------------------------------------------ the reports
def bucket_report(
    deltas: Tensor,
    edges: Sequence[float] = DEFAULT_EDGES,
    gold_gaps: Tensor | None = None,
) -> dict[str, Any]:
    """Reward-model accuracy per ``|delta|`` bucket ``[e0, e1), ..., [e_{k-1}, e_k), >= e_k``.

    Per bucket (and ``"overall"``): ``n`` pairs; ``rm_accuracy`` against the dataset labels,
    the share with ``delta > 0`` where a tie ``delta == 0`` counts one half (``ties`` counts
    them), with ``rm_accuracy_se = sqrt(p (1 - p) / n)``. With ``gold_gaps`` (``[N]``,
    ``gold(chosen) - gold(rejected)``): ``rm_gold_agreement``, the share with ``sign(delta) ==
    sign(gold_gap)`` (an RM tie again one half), and ``label_gold_agreement``, the share of
    dataset labels the gold reward agrees with (``gold_gap > 0``), both over the pairs without
    a gold tie (``gold_ties`` counts those), with their standard errors. Empty figures are None.

    The authors' numbers (HH-RLHF test, their RM): 61% for [0, 1), 81% for [1, 2), 90% for
    [2, 3) and 97% for >= 3 -- the small-gap labels are the noisy ones."""
    _check_deltas(deltas)
    edges = [float(e) for e in edges]
    if not edges or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError(f"edges must start at 0 and increase strictly, got {edges}")
    d = deltas.detach().double().cpu()
    g = None
    if gold_gaps is not None:
        if gold_gaps.shape != deltas.shape:
            raise ValueError("gold_gaps must have the same shape as deltas")
        g = gold_gaps.detach().double().cpu()
    gap = d.abs()
    uppers: list[float | None] = [*edges[1:], None]
    buckets = []
    for lo, hi in zip(edges, uppers, strict=True):
        in_bucket = (gap >= lo) & (gap < hi) if hi is not None else gap >= lo
        label = f"[{lo:g}, {hi:g})" if hi is not None else f">= {lo:g}"
        buckets.append({"bucket": label, "lo": lo, "hi": hi, **_bucket_stats(d, g, in_bucket)})
    overall = {"bucket": "all", **_bucket_stats(d, g, torch.ones_like(d, dtype=torch.bool))}
    return {"edges": edges, "gold": g is not None, "buckets": buckets, "overall": overall}


def _bucket_stats(d: Tensor, g: Tensor | None, mask: Tensor) -> dict[str, Any]:
    delta = d[mask]
    n = int(delta.numel())
    ties = int((delta == 0).sum())
    correct = float((delta > 0).sum()) + 0.5 * ties
    stats: dict[str, Any] = {"n": n, "ties": ties, **_share("rm_accuracy", correct, n)}
    if g is not None:
        gold = g[mask]
        decided = gold != 0
        n_gold = int(decided.sum())
        rm_sign, gold_sign = torch.sign(delta[decided]), torch.sign(gold[decided])
        rm_agree = float((rm_sign == gold_sign).sum()) + 0.5 * float((rm_sign == 0).sum())
        stats["gold_ties"] = n - n_gold
        stats.update(_share("rm_gold_agreement", rm_agree, n_gold))
        stats.update(_share("label_gold_agreement", float((gold_sign > 0).sum()), n_gold))
    return stats


def _share(name: str, hits: float, n: int) -> dict[str, float | None]:
    """``{name: p, name_se: sqrt(p (1 - p) / n)}``, None when ``n == 0``."""
    if n == 0:
        return {name: None, f"{name}_se": None}
    p = hits / n
    return {name: p, f"{name}_se": math.sqrt(p * (1 - p) / n)}


def relabel_effect(deltas: Tensor, easy: Tensor, gold_gaps: Tensor) -> dict[str, Any]:
    """What relabelling did to the easy set's agreement with the gold preference.

    ``relabelled``: easy pairs with ``delta < 0`` (swapped). ``fixed``: swapped pairs whose
    original label disagreed with gold (``gold_gap < 0``), so the new one agrees; ``broke``:
    swapped pairs whose original label agreed (``gold_gap > 0``); ``gold_ties``: swapped pairs
    gold cannot judge. ``easy_label_gold_agreement_before`` / ``_after``: share of the easy
    pairs without a gold tie whose label agrees with gold before / after relabelling.

    All inputs ``[N]``; ``gold_gaps`` is ``gold(chosen) - gold(rejected)`` as labelled."""
    _check_deltas(deltas)
    if easy.shape != deltas.shape or gold_gaps.shape != deltas.shape:
        raise ValueError("deltas, easy and gold_gaps must have the same shape")
    d, g, e = deltas.detach().double().cpu(), gold_gaps.detach().double().cpu(), easy.cpu().bool()
    swapped = e & (d < 0)
    fixed = int((swapped & (g < 0)).sum())
    broke = int((swapped & (g > 0)).sum())
    decided = e & (g != 0)
    n_decided = int(decided.sum())
    agree_before = int((decided & (g > 0)).sum())
    agree_after = agree_before + fixed - broke
    return {
        "n_easy": int(e.sum()),
        "relabelled": int(swapped.sum()),
        "fixed": fixed,
        "broke": broke,
        "net": fixed - broke,
        "gold_ties": int((swapped & (g == 0)).sum()),
        "easy_label_gold_agreement_before": agree_before / n_decided if n_decided else None,
        "easy_label_gold_agreement_after": agree_after / n_decided if n_decided else None,
    }


# -------------------------------------------------------------------------- the stage
def score_pairs(scorer: Scorer, records: Sequence[dict[str, Any]], batch_size: int = 256) -> Tensor:
    """``[N]`` float64 gaps ``r(prompt, chosen) - r(prompt, rejected)``.

    ``scorer.score(prompts, completions) -> [M]`` is called on at most ``batch_size`` texts at a
    time, the chosen and rejected responses of the same pairs together."""
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (one pair), got {batch_size}")
    pairs_per_call = batch_size // 2
    deltas = []
    for start in range(0, len(records), pairs_per_call):
        batch = records[start : start + pairs_per_call]
        prompts = [r["prompt"] for r in batch]
        completions = [r["chosen"] for r in batch] + [r["rejected"] for r in batch]
        rewards = torch.as_tensor(scorer.score(prompts + prompts, completions))
        rewards = rewards.detach().double().cpu().reshape(-1)
        if rewards.numel() != 2 * len(batch):
            raise ValueError(f"scorer returned {rewards.numel()} rewards for {2 * len(batch)}")
        deltas.append(rewards[: len(batch)] - rewards[len(batch) :])
    out = torch.cat(deltas) if deltas else torch.zeros(0, dtype=torch.float64)
    _check_deltas(out)
    return out


def run_split(
    scorer: Scorer,
    records: Sequence[dict[str, Any]],
    tau: float,
    mode: str,
    out_dir: str | Path,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Score, split and relabel ``records``; write ``easy.jsonl`` (relabelled easy pairs),
    ``hard.jsonl`` (hard pairs unchanged) and ``split.json`` (this function's return value).

    The report holds ``tau``, ``mode``, the resolved absolute ``threshold``, ``n_pairs`` /
    ``n_easy`` / ``n_hard`` / ``n_relabelled``, ``frac_easy``, the :func:`bucket_report` of the
    gaps (against gold when every record has ``metadata["gold_gap"]``, as on the synthetic
    world), :func:`relabel_effect` in that case (None otherwise) and ``paths``
    (``{"easy", "hard", "report"}``). The files are deterministic: the same inputs give the
    same bytes, and floats are rounded to 6 decimals in the file and the returned dict alike."""
    if not records:
        raise ValueError("run_split needs at least one record")
    resolve_threshold(torch.zeros(1), tau, mode)  # a bad tau or mode fails before any scoring
    deltas = score_pairs(scorer, records, batch_size)
    threshold = resolve_threshold(deltas, tau, mode)
    easy = split_pairs(deltas, threshold, "absolute")
    gold_gaps = _gold_gaps(records)
    labelled = relabel(records, deltas, easy)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"easy": out / "easy.jsonl", "hard": out / "hard.jsonl", "report": out / "split.json"}
    mask = easy.tolist()
    write_jsonl(paths["easy"], (r for r, e in zip(labelled, mask, strict=True) if e))
    write_jsonl(paths["hard"], (r for r, e in zip(labelled, mask, strict=True) if not e))
    n_easy = int(easy.sum())
    report = {
        "tau": tau,
        "mode": mode,
        "threshold": threshold,
        "n_pairs": len(records),
        "n_easy": n_easy,
        "n_hard": len(records) - n_easy,
        "n_relabelled": int((easy & (deltas < 0)).sum()),
        "frac_easy": n_easy / len(records),
        "bucket_report": bucket_report(deltas, gold_gaps=gold_gaps),
        "relabel_effect": (
            relabel_effect(deltas, easy, gold_gaps) if gold_gaps is not None else None
        ),
        "paths": {name: str(path) for name, path in paths.items()},
    }
    # Rounded as the jsonl files are (dumps_record), so that the returned dict equals the file.
    report = json.loads(dumps_record(report))
    text = json.dumps(report, indent=2, sort_keys=True)
    paths["report"].write_text(text + "\n", encoding="utf-8")
    return report


def _gold_gaps(records: Sequence[dict[str, Any]]) -> Tensor | None:
    """``[N]`` ``metadata["gold_gap"]`` when every record has one, else None."""
    gaps = []
    for record in records:
        gap = (record.get("metadata") or {}).get("gold_gap")
        if not isinstance(gap, int | float) or isinstance(gap, bool):
            return None
        gaps.append(float(gap))
    return torch.tensor(gaps, dtype=torch.float64)


def format_split_report(report: dict[str, Any]) -> str:
    """A plain-text table of a :func:`run_split` report (or of a bare :func:`bucket_report`),
    shaped like the paper's motivation table: RM accuracy per ``|delta|`` bucket.

    For reference, the authors' HH-RLHF figures (their RM's scale): 61% for [0, 1), 81% for
    [1, 2), 90% for [2, 3), 97% for >= 3 (:data:`PAPER_HH_ACCURACY`)."""
    buckets = report.get("bucket_report", report)
    gold = bool(buckets.get("gold"))
    lines = []
    if "threshold" in report:
        lines.append(
            f"MPO split: tau={report['tau']:g} ({report['mode']}), threshold "
            f"{report['threshold']:.4g}: {report['n_easy']} easy / {report['n_hard']} hard "
            f"({100 * report['frac_easy']:.1f}% easy), {report['n_relabelled']} relabelled"
        )
    header = f"{'|delta|':<10}{'pairs':>7}{'ties':>6}  {'RM acc (labels)':<17}"
    if gold:
        header += f"{'gold ties':>9}  {'RM vs gold':<17}{'label vs gold':<17}"
    lines.append(header.rstrip())
    for row in [*buckets["buckets"], buckets["overall"]]:
        line = f"{row['bucket']:<10}{row['n']:>7}{row['ties']:>6}  "
        line += f"{_pct(row, 'rm_accuracy'):<17}"
        if gold:
            line += f"{row['gold_ties']:>9}  {_pct(row, 'rm_gold_agreement'):<17}"
            line += f"{_pct(row, 'label_gold_agreement'):<17}"
        lines.append(line.rstrip())
    effect = report.get("relabel_effect")
    if effect:
        before = effect["easy_label_gold_agreement_before"]
        after = effect["easy_label_gold_agreement_after"]
        line = (
            f"relabelling: {effect['relabelled']} swapped, fixed {effect['fixed']}, broke "
            f"{effect['broke']} (net {effect['net']:+d})"
        )
        if before is not None and after is not None:
            line += f"; easy labels agree with gold {100 * before:.1f}% -> {100 * after:.1f}%"
        lines.append(line)
    return "\n".join(lines)


def _pct(row: dict[str, Any], name: str) -> str:
    value, se = row.get(name), row.get(f"{name}_se")
    if value is None or se is None:
        return "-"
    return f"{100 * value:.1f}% ± {100 * se:.1f}"


def _check_deltas(deltas: Tensor) -> None:
    if deltas.dim() != 1:
        raise ValueError(f"deltas must be a 1-D tensor [N], got shape {tuple(deltas.shape)}")
    if deltas.is_floating_point() and torch.isnan(deltas).any():
        raise ValueError("a delta is NaN: the scorer produced no usable score for some pair")
