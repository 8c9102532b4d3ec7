"""Gold evaluation on the synthetic world: did the policy really get better?

For K samples per evaluation prompt, in distribution ("test") and out of distribution ("ood"),
from the policy and from the reference policy:

* gold reward (mean, and per objective), and the reference's;
* KL(policy || reference), estimated from the policy's samples as the mean of
  ``log pi(y|x) - log pi_ref(y|x)`` over whole completions (an unbiased estimate when samples
  are drawn at temperature 1 without top-k / top-p; otherwise it is the KL of the sampled
  distribution's log-ratio and is labelled as such in the report);
* win rate against the reference under the gold reward (sample k of the policy against sample k
  of the reference for the same prompt; ties count one half);
* mean completion length in words, and (the length bias DAPO and Dr. GRPO report) the mean
  length of correct and of incorrect samples, "correct" meaning a gold reward above the
  reference's mean gold on the same prompt;
* diversity (Kirk et al. 2023, arXiv 2310.06452): per-input (over the K samples of one prompt)
  and across-input (one sample per prompt) distinct-n and EAD; sentence-embedding and NLI
  diversity when ``eval.embedding_model`` / ``eval.nli_model`` name models
  (:mod:`prefopt.eval.semantic`);
* generalisation (Kirk et al.): the gap between in-distribution and OOD gold with its standard
  error, and under ``eval.shifts`` a graded shift (``prefopt.world.data.SHIFTS``);
* with ``eval.best_of_n`` > 1, the policy is best-of-n of the model (a scorer picks among n
  samples), its KL the model's log-ratio plus ``log n - (n-1)/n``, and ``proxy_reward`` (with
  ``_se``) the chooser's mean score of the chosen samples on the test split (Gao et al.'s
  proxy curve).

Every figure comes with its standard error over prompts (the K samples of a prompt are not
independent draws of the prompt distribution, so the prompt is the unit): the per-prompt means'
sample standard deviation over sqrt(P). ``gold_gain`` is the paired difference of the policy's
and the reference's per-prompt gold (both sampled on the same prompts), whose standard error is
much smaller than either gold's, because most of the variance is between prompts.

Keys of the returned dict are stable (other tools read them from summary.json), each with a
``_se`` twin and an ``ood_`` twin: ``gold_reward``, ``reference_gold_reward``, ``gold_gain``,
``kl``, ``win_rate``, ``ead``, ``reference_ead``; also ``mean_length``, ``ead_ngram_space``,
``correct_fraction``, ``length_correct``, ``length_incorrect`` (None when no sample is on that
side).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from prefopt.eval.compare import standard_error
from prefopt.eval.diversity import (
    NgramSpace,
    across_input_diversity,
    ead_mean,
    per_input_diversity,
)
from prefopt.models.engines import RolloutEngine, engine_settings, open_engine, sample_once
from prefopt.models.generation import Samples, completion_logps
from prefopt.paths import Progress
from prefopt.rl.length import length_by_correctness


@dataclass
class PromptStats:
    """What one policy's samples on P prompts (K samples each) give, per prompt and sample."""

    gold: Tensor  # [P, K] gold reward of every sample
    length: Tensor  # [P, K] words of every sample
    ead: Tensor  # [P] per-input EAD of each prompt's K samples
    objectives: Tensor  # [K_obj] mean objective values over all samples
    log_ratio: Tensor | None = None  # [P, K] log pi(y|x) - log pi_ref(y|x) of every sample

    def per_prompt(self, name: str) -> Tensor:
        """``[P]`` per-prompt value of ``gold``, ``length``, ``kl`` or ``ead``."""
        if name == "kl":
            if self.log_ratio is None:
                raise ValueError("no reference: these samples have no KL")
            return self.log_ratio.double().mean(1)
        value = getattr(self, name).double()
        return value if value.dim() == 1 else value.mean(1)


def sample_stats(
    world: Any,
    samples: Samples,
    vocab_size: int,
    ngram_space: str = "power",
    log_ratio: Tensor | None = None,
) -> PromptStats:
    """Gold reward, length and per-input EAD of ``samples`` (and their log-ratio if given)."""
    p, k = len(samples.prompts), len(samples.completions[0])
    flat_prompts = [x for x in samples.prompts for _ in range(k)]
    flat = [c for group in samples.completions for c in group]
    gold = world.gold_reward(flat_prompts, flat).double().reshape(p, k)
    length = torch.tensor([len(t.split()) for t in flat], dtype=torch.float64).reshape(p, k)
    space = cast(NgramSpace, ngram_space)
    ead = torch.tensor(
        [ead_mean(group, vocab_size, 5, space) for group in samples.completions],
        dtype=torch.float64,
    )
    objectives = world.objective_scores(flat_prompts, flat).double().mean(0)
    ratio = None if log_ratio is None else log_ratio.double().reshape(p, k)
    return PromptStats(gold, length, ead, objectives, ratio)


def win_rate_per_prompt(a: PromptStats, b: PromptStats) -> Tensor:
    """``[P]`` fraction of samples k where A's k-th sample beats B's under the gold reward
    (ties count one half)."""
    wins = (a.gold > b.gold).double() + 0.5 * (a.gold == b.gold).double()
    return wins.mean(1)


def gold_evaluation(
    policy: nn.Module,
    reference: nn.Module,
    tokenizer: Any,
    world: Any,
    cfg: Any,
    device: torch.device,
    seed: int = 0,
    reference_context: Callable[[], AbstractContextManager[Any]] | None = None,
    report_path: Path | None = None,
    max_prompt_length: int = 64,
    best_of_scorer: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `policy` against `reference` on the world. See the module docstring.
    ``best_of_scorer`` scores the candidates when ``cfg.best_of_n`` > 1; ``progress`` prints a
    line with the elapsed time and the time left after each half of a split. Both policies
    sample with the engine ``cfg.engine`` names (:mod:`prefopt.models.engines`), each built
    once (the reference's inside ``reference_context``)."""
    import contextlib

    ref_ctx = reference_context or contextlib.nullcontext
    settings = engine_settings(cfg)
    with contextlib.ExitStack() as engines:
        pol_engine = engines.enter_context(open_engine(policy, tokenizer, device, settings))
        with ref_ctx():
            ref_engine = engines.enter_context(open_engine(reference, tokenizer, device, settings))
        return _gold_evaluation(
            pol_engine, ref_engine, policy, reference, ref_ctx, tokenizer, world, cfg, device,
            seed, report_path, max_prompt_length, best_of_scorer, progress,
        )  # fmt: skip


def _gold_evaluation(
    pol_engine: RolloutEngine,
    ref_engine: RolloutEngine,
    policy: nn.Module,
    reference: nn.Module,
    ref_ctx: Callable[[], AbstractContextManager[Any]],
    tokenizer: Any,
    world: Any,
    cfg: Any,
    device: torch.device,
    seed: int,
    report_path: Path | None,
    max_prompt_length: int,
    best_of_scorer: Any,
    progress: bool,
) -> dict[str, Any]:
    vocab = len(world.tokenizer())
    space = cast(NgramSpace, getattr(cfg, "ead_ngram_space", "power"))
    best_of = getattr(cfg, "best_of_n", 1)
    if best_of > 1 and best_of_scorer is None:
        raise ValueError("eval.best_of_n > 1 needs a scorer to choose with")
    shifts = [s for s in getattr(cfg, "shifts", []) if s != "ood"]
    table: dict[str, dict[str, Any]] = {}
    splits = ("test", "ood", *shifts)
    # two steps per split: the policy's samples, then the reference's samples and the log-probs
    shown = Progress(
        f"gold evaluation ({cfg.n_prompts} prompts x {cfg.samples_per_prompt} samples per split)",
        2 * len(splits),
        enabled=progress,
    )
    for number, split in enumerate(splits):
        if split in ("test", "ood"):
            prompts = world.eval_prompts(split)[: cfg.n_prompts]
        else:
            prompts = world.shifted_prompts(split)[: cfg.n_prompts]
        if best_of > 1:
            many = pol_engine.sample(
                prompts, replace(cfg, samples_per_prompt=cfg.samples_per_prompt * best_of), seed,
                max_prompt_length=max_prompt_length,
            )  # fmt: skip
            scores = torch.as_tensor(best_of_scorer.score(many.flat_prompts,
                                                          many.flat_completions))  # fmt: skip
            pol = best_of_n(many, scores, best_of)
            # the proxy reward of the selection (Gao et al.'s proxy curve): per prompt, the mean
            # over its K reported samples of the chooser's best score among n
            chosen = scores.double().reshape(len(prompts), -1, best_of).max(dim=-1).values
            proxy = chosen.mean(dim=1)
        else:
            pol = pol_engine.sample(prompts, cfg, seed, max_prompt_length=max_prompt_length)
        shown.update(2 * number + 1, f"{split}: policy sampled")
        with ref_ctx():
            ref = ref_engine.sample(prompts, cfg, seed + 7919, max_prompt_length=max_prompt_length)
            ref_logp_of_pol = completion_logps(reference, pol, device)
        log_ratio = completion_logps(policy, pol, device) - ref_logp_of_pol
        if best_of > 1:  # the selection's own KL to the policy it filters (analytic)
            log_ratio = log_ratio + best_of_n_kl(best_of)
        pol_stats = sample_stats(world, pol, vocab, space, log_ratio)
        ref_stats = sample_stats(world, ref, vocab, space)
        shown.update(2 * number + 2, f"{split}: reference sampled, scored")
        table[split] = split_summary(pol_stats, ref_stats, world.objective_names)
        if best_of > 1:
            table[split].update(
                proxy_reward=float(proxy.mean()), proxy_reward_se=standard_error(proxy)
            )
        table[split]["example"] = (pol.prompts[0], pol.completions[0][0])
        table[split]["samples"] = sample_pairs(pol, ref, pol_stats, ref_stats)
        if split in ("test", "ood"):
            per_input = per_input_diversity(pol.completions, vocab, ngram_space=space)
            across_input = across_input_diversity(pol.completions, vocab, ngram_space=space)
            table[split].update(
                per_input=per_input, across_input=across_input, ead_across=across_input["ead"]
            )
            if split == "test":
                table[split]["semantic"] = semantic_diversity(pol.completions, cfg)
    test, ood = table["test"], table["ood"]
    results: dict[str, Any] = {}
    for key in SPLIT_KEYS:
        results[key] = test[key]
        results[f"{key}_se"] = test[f"{key}_se"]
        results[f"ood_{key}"] = ood[key]
        results[f"ood_{key}_se"] = ood[f"{key}_se"]
    results.update(
        ead_across_input=test["ead_across"],
        mean_length=test["mean_length"],
        correct_fraction=test["correct_fraction"],
        length_correct=test.get("length_correct"),
        length_incorrect=test.get("length_incorrect"),
        empty_rate=test["empty_rate"],
        reference_mean_length=test["reference_mean_length"],
        generalisation_gap=test["gold_reward"] - ood["gold_reward"],
        # the two splits' prompts are drawn independently: the SEs add in quadrature
        generalisation_gap_se=math.hypot(test["gold_reward_se"], ood["gold_reward_se"]),
        shift=shift_table(table, ["ood", *shifts]),
        objectives=test["objectives"],
        ood_objectives=ood["objectives"],
        diversity={
            "per_input": test["per_input"],
            "across_input": test["across_input"],
            **test["semantic"],
        },  # fmt: skip
        ead_ngram_space=space,
        samples=test["samples"],
        samples_per_prompt=cfg.samples_per_prompt,
        n_prompts=len(world.eval_prompts("test")[: cfg.n_prompts]),
    )
    if cfg.temperature != 1.0 or cfg.top_k or cfg.top_p < 1.0:
        results["kl_note"] = "samples not drawn at temperature 1 without truncation: kl is biased"
    if best_of > 1:
        results["best_of_n"] = best_of
        results["proxy_reward"] = test["proxy_reward"]
        results["proxy_reward_se"] = test["proxy_reward_se"]
        results["kl_note"] = (
            f"best-of-{best_of}: kl adds the analytic KL of the selection to the policy it "
            f"filters, log n - (n-1)/n = {best_of_n_kl(best_of):.3f} (an upper bound, Beirami "
            "et al. 2024), to the policy's own log-ratio to the reference"
        )
    if report_path is not None:
        report_path.write_text(render_report(results, table, world.objective_names))
    return results


def sample_pairs(
    pol: Samples, ref: Samples, pol_stats: PromptStats, ref_stats: PromptStats, n: int = 4
) -> list[dict[str, Any]]:
    """The first sample of the policy and of the reference for each of the first ``n`` prompts
    (the same prompts), with their gold rewards: what ``report.html`` shows."""
    return [
        {
            "prompt": pol.prompts[i],
            "policy": pol.completions[i][0],
            "policy_gold": float(pol_stats.gold[i, 0]),
            "reference": ref.completions[i][0],
            "reference_gold": float(ref_stats.gold[i, 0]),
        }
        for i in range(min(n, len(pol.prompts)))
    ]


def shift_table(table: dict[str, dict[str, Any]], shifts: list[str]) -> dict[str, Any]:
    """Per shift: gold reward, the reference's, the paired gain over it, KL (each with its SE
    over prompts) and the gap ``test gold - shift gold`` with its SE (independent prompt sets:
    ``sqrt(se_test^2 + se_shift^2)``)."""
    test = table["test"]
    out: dict[str, Any] = {}
    for name in shifts:
        row = table[name]
        out[name] = {k: row[k] for k in ("gold_reward", "gold_reward_se",
                     "reference_gold_reward", "reference_gold_reward_se", "gold_gain",
                     "gold_gain_se", "kl", "kl_se")}  # fmt: skip
        out[name]["gap"] = test["gold_reward"] - row["gold_reward"]
        out[name]["gap_se"] = math.hypot(test["gold_reward_se"], row["gold_reward_se"])
    return out


def best_of_n(samples: Samples, scores: Tensor, n: int) -> Samples:
    """Best-of-n selection (Stiennon et al. 2020; Kirk et al. 2024's BoN policy): of each
    consecutive group of ``n`` completions of a prompt, keep the one with the highest score.

    ``samples`` holds ``K * n`` completions per prompt (rows grouped by prompt), ``scores``
    ``[P * K * n]``; returns ``K`` completions per prompt (the first of tied maxima)."""
    p, kn = len(samples.prompts), len(samples.completions[0])
    if kn % n:
        raise ValueError(f"{kn} samples per prompt are not a multiple of n = {n}")
    k = kn // n
    best = torch.as_tensor(scores).reshape(p, k, n).argmax(dim=-1)  # [P, K]
    rows = (torch.arange(p)[:, None] * kn + torch.arange(k)[None, :] * n + best).reshape(-1)
    completions = [
        [samples.completions[i][j * n + int(best[i, j])] for j in range(k)] for i in range(p)
    ]
    return Samples(
        samples.prompts, completions, samples.sequences[rows], samples.attention_mask[rows],
        samples.completion_mask[rows], samples.prompt_width,
    )  # fmt: skip


def best_of_n_kl(n: int) -> float:
    """``log n - (n - 1) / n``: the KL of best-of-n to the policy it samples from, exact for
    continuous scores without ties and an upper bound otherwise (Beirami et al. 2024, arXiv
    2401.01879; Stiennon et al. 2020)."""
    return math.log(n) - (n - 1) / n


def semantic_diversity(completions: list[list[str]], cfg: Any) -> dict[str, Any]:
    """Sentence-embedding and NLI diversity of the completions, per input and across inputs,
    for the models ``cfg`` names (:mod:`prefopt.eval.semantic`); empty when none is named."""
    from prefopt.eval.semantic import semantic_diversity as measure

    return measure(
        completions, getattr(cfg, "embedding_model", None), getattr(cfg, "nli_model", None)
    )


#: Figures reported per split with a standard error over prompts (``<key>_se``), test split
#: under ``<key>``, out of distribution under ``ood_<key>``.
SPLIT_KEYS = (
    "gold_reward",
    "reference_gold_reward",
    "gold_gain",
    "kl",
    "win_rate",
    "ead",
    "reference_ead",
)


def split_summary(pol: PromptStats, ref: PromptStats, names: list[str]) -> dict[str, Any]:
    """Means and standard errors over prompts of one split; ``gold_gain`` is the paired
    difference of the policy's and the reference's per-prompt gold reward."""
    from prefopt.eval.compare import paired, standard_error

    gain = paired(pol.per_prompt("gold"), ref.per_prompt("gold"))
    per_prompt = {
        "gold_reward": pol.per_prompt("gold"),
        "reference_gold_reward": ref.per_prompt("gold"),
        "kl": pol.per_prompt("kl"),
        "win_rate": win_rate_per_prompt(pol, ref),
        "ead": pol.per_prompt("ead"),
        "reference_ead": ref.per_prompt("ead"),
    }
    out: dict[str, Any] = {}
    for key, values in per_prompt.items():
        out[key] = float(values.mean())
        out[f"{key}_se"] = standard_error(values)
    out["gold_gain"], out["gold_gain_se"] = gain["diff"], gain["se"]
    out["mean_length"] = float(pol.length.mean())
    # empty completions add no n-gram, so EAD cannot see a collapse onto them: count them
    out["empty_rate"] = float((pol.length == 0).double().mean())
    out["reference_mean_length"] = float(ref.length.mean())
    # the length bias of DAPO / Dr. GRPO: mean words of the correct samples (gold above the
    # reference's mean gold on the same prompt) and of the incorrect ones
    beats = ref.gold.mean(1, keepdim=True).expand_as(pol.gold)
    out.update(length_by_correctness(pol.length.flatten(), pol.gold.flatten(), beats.flatten()))
    out["objectives"] = dict(zip(names, pol.objectives.tolist(), strict=True))
    return out


def _mean_words(texts: list[str]) -> float:
    return sum(len(t.split()) for t in texts) / max(1, len(texts))


def render_report(
    results: dict[str, Any], table: dict[str, dict[str, Any]], names: list[str]
) -> str:
    def cell(stats: dict[str, Any], key: str) -> str:
        return f"{stats[key]:.3f} ({stats[key + '_se']:.3f})"

    lines = [
        "# Gold evaluation on the synthetic world",
        "",
        f"{results['n_prompts']} prompts per split, {results['samples_per_prompt']} samples each;"
        " in brackets the standard error over prompts (paired for the gain over the reference).",
        f"EAD: mean over n = 1..5, n-gram space `{results['ead_ngram_space']}`.",
        "",
        "| split | gold reward | reference | gain (paired) | win rate | KL | EAD (per input) "
        "| ref. EAD | length |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split, s in table.items():
        lines.append(
            f"| {split} | {cell(s, 'gold_reward')} | {cell(s, 'reference_gold_reward')} | "
            f"{cell(s, 'gold_gain')} | {cell(s, 'win_rate')} | {cell(s, 'kl')} | "
            f"{cell(s, 'ead')} | {cell(s, 'reference_ead')} | {s['mean_length']:.1f} |"
        )
    lines += [
        "",
        "Per objective (in distribution, policy samples):",
        "",
        "| " + " | ".join(names) + " |",
        "|" + "---|" * len(names),
        "| " + " | ".join(f"{results['objectives'][n]:.3f}" for n in names) + " |",
        "",
    ]
    prompt, completion = table["test"]["example"]
    lines += ["Example:", "", f"    prompt:     {prompt}", f"    completion: {completion}", ""]
    if "kl_note" in results:
        lines.append(f"Note: {results['kl_note']}.")
    return "\n".join(lines) + "\n"


#: What ``prefopt compare`` pairs, per prompt: (summary key, PromptStats field).
COMPARED = (("gold_reward", "gold"), ("kl", "kl"), ("ead", "ead"), ("mean_length", "length"))


def _policy_stats(
    policies: dict[str, nn.Module],
    reference: nn.Module | None,
    prompts: list[str],
    tokenizer: Any,
    world: Any,
    cfg: Any,
    device: torch.device,
    seed: int,
    max_prompt_length: int,
) -> dict[str, PromptStats]:
    """Every policy's samples on ``prompts`` with the same sampling seed, with their log-ratio
    to ``reference`` (none without one; zero, without a forward pass, for the reference)."""
    vocab = len(world.tokenizer())
    space = getattr(cfg, "ead_ngram_space", "power")
    stats = {}
    for name, model in policies.items():
        samples = sample_once(model, tokenizer, prompts, cfg, device, seed, max_prompt_length)
        ratio = None
        if reference is model:
            ratio = torch.zeros(len(prompts), cfg.samples_per_prompt, dtype=torch.float64)
        elif reference is not None:
            ratio = completion_logps(model, samples, device) - completion_logps(
                reference, samples, device
            )
        stats[name] = sample_stats(world, samples, vocab, space, ratio)
    return stats


@torch.no_grad()
def paired_policy_comparison(
    policy_a: nn.Module,
    policy_b: nn.Module,
    reference: nn.Module | None,
    tokenizer: Any,
    world: Any,
    cfg: Any,
    device: torch.device,
    seed: int = 0,
    max_prompt_length: int = 64,
) -> dict[str, Any]:
    """Two policies on the same prompts with the same sampling seeds, per split: each figure's
    mean for A and B, the mean per-prompt difference A - B and its paired standard error, and
    A's win rate against B (sample k against sample k; ties one half) with its standard error.
    KL is against the one ``reference`` for both (omitted without one)."""
    from prefopt.eval.compare import paired, standard_error

    out: dict[str, Any] = {
        "n_prompts": 0,
        "samples_per_prompt": cfg.samples_per_prompt,
        "ead_ngram_space": getattr(cfg, "ead_ngram_space", "power"),
    }
    for split in ("test", "ood"):
        prompts = world.eval_prompts(split)[: cfg.n_prompts]
        out["n_prompts"] = max(out["n_prompts"], len(prompts))
        stats = _policy_stats(
            {"a": policy_a, "b": policy_b}, reference, prompts, tokenizer, world, cfg, device,
            seed, max_prompt_length,
        )  # fmt: skip
        split_out: dict[str, Any] = {}
        for key, field_name in COMPARED:
            if field_name == "kl" and reference is None:
                continue
            split_out[key] = paired(
                stats["a"].per_prompt(field_name), stats["b"].per_prompt(field_name)
            )
        wins = win_rate_per_prompt(stats["a"], stats["b"])
        split_out["win_rate"] = {"a": float(wins.mean()), "se": standard_error(wins)}
        out[split] = split_out
    return out


def format_policy_comparison(result: dict[str, Any], name_a: str, name_b: str) -> str:
    """Plain-text table of :func:`paired_policy_comparison`."""
    lines = [
        f"{result['n_prompts']} prompts x {result['samples_per_prompt']} samples, same prompts "
        f"and sampling seeds for both; EAD in the `{result['ead_ngram_space']}` n-gram space",
        f"A = {name_a}",
        f"B = {name_b}",
        "",
        f"{'split':<6}{'figure':<14}{'A (SE)':<20}{'B (SE)':<20}{'A - B (paired SE)':<20}",
    ]
    for split in ("test", "ood"):
        for key, _ in COMPARED:
            if key not in result[split]:
                continue
            r = result[split][key]
            lines.append(
                f"{split:<6}{key:<14}{r['a']:.3f} ({r['a_se']:.3f})".ljust(40)
                + f"{r['b']:.3f} ({r['b_se']:.3f})".ljust(20)
                + f"{r['diff']:+.3f} ({r['se']:.3f})"
            )
        w = result[split]["win_rate"]
        lines.append(f"{split:<6}{'win rate A>B':<14}{w['a']:.3f} ({w['se']:.3f})")
    return "\n".join(lines)


@torch.no_grad()
def compare_policies(
    policies: dict[str, nn.Module],
    reference: str,
    tokenizer: Any,
    world: Any,
    cfg: Any,
    device: torch.device,
    baselines: list[str] | None = None,
    seed: int = 0,
    max_prompt_length: int = 64,
) -> dict[str, Any]:
    """Several policies of one world on the same prompts with the same sampling seeds, per
    split: each policy's gold reward, KL to ``reference`` (one of ``policies``), win rate
    against it, per-input EAD and length, with standard errors over prompts; and the paired
    gold difference of every policy against each of ``baselines`` (paired SE). Sample k of
    every policy uses the same seed, so differences are paired sample by sample."""
    from prefopt.eval.compare import paired, standard_error

    out: dict[str, Any] = {"reference": reference, "samples_per_prompt": cfg.samples_per_prompt}
    for split in ("test", "ood"):
        prompts = world.eval_prompts(split)[: cfg.n_prompts]
        out["n_prompts"] = len(prompts)
        stats = _policy_stats(
            policies, policies[reference], prompts, tokenizer, world, cfg, device, seed,
            max_prompt_length,
        )  # fmt: skip
        rows: dict[str, Any] = {}
        for name, st in stats.items():
            per_prompt = {
                "gold_reward": st.per_prompt("gold"),
                "kl": st.per_prompt("kl"),
                "win_rate": win_rate_per_prompt(st, stats[reference]),
                "ead": st.per_prompt("ead"),
                "mean_length": st.per_prompt("length"),
            }
            row: dict[str, Any] = {}
            for key, values in per_prompt.items():
                row[key], row[f"{key}_se"] = float(values.mean()), standard_error(values)
            row["vs"] = {
                b: paired(st.per_prompt("gold"), stats[b].per_prompt("gold"))
                for b in baselines or []
                if b != name
            }
            rows[name] = row
        out[split] = rows
    return out
