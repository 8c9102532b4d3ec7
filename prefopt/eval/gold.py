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
* mean completion length in words;
* diversity (Kirk et al. 2023, arXiv 2310.06452): per-input (over the K samples of one prompt)
  and across-input (one sample per prompt) distinct-n and EAD.

Keys of the returned dict are stable (other tools read them from summary.json):
``gold_reward``, ``reference_gold_reward``, ``kl``, ``win_rate``, ``ead``, ``ood_gold_reward``,
``mean_length``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from prefopt.data import PromptCollator, tokenize_prompts
from prefopt.eval.diversity import across_input_diversity, per_input_diversity


@dataclass
class Samples:
    prompts: list[str]  # [P]
    completions: list[list[str]]  # [P][K] decoded text
    sequences: Tensor  # [P*K, T] prompt + completion ids (left-padded prompt)
    attention_mask: Tensor
    completion_mask: Tensor


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    cfg: Any,
    device: torch.device,
    seed: int,
    max_prompt_length: int = 64,
) -> Samples:
    """Sample cfg.samples_per_prompt completions per prompt (left padding, stop at EOS)."""
    examples = tokenize_prompts(
        [{"prompt": p} for p in prompts], tokenizer, max_prompt_length=max_prompt_length
    )
    collate = PromptCollator(pad_token_id=tokenizer.pad_token_id)
    k = cfg.samples_per_prompt
    pieces: list[tuple[Tensor, Tensor, int]] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(examples), max(1, cfg.batch_size // k)):
        batch = collate(examples[start : start + max(1, cfg.batch_size // k)])
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        torch.manual_seed(seed + start)
        # a transformers model or a PeftModel: both have generate(), which nn.Module lacks
        out = cast(Any, model).generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=cfg.temperature,
            top_k=cfg.top_k or None,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            num_return_sequences=k,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        pieces.append((out, mask.repeat_interleave(k, dim=0), ids.shape[1]))
    model.train(was_training)
    return _assemble(prompts, pieces, tokenizer, k)


def _assemble(prompts: list[str], pieces, tokenizer: Any, k: int) -> Samples:
    width = max(out.shape[1] for out, _, _ in pieces)
    pad = tokenizer.pad_token_id
    sequences, attention, completion, texts = [], [], [], []
    for out, prompt_mask, prompt_len in pieces:
        gen = out[:, prompt_len:]
        # Completion tokens: everything up to and including the first EOS.
        is_eos = gen == tokenizer.eos_token_id
        after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
        gen_mask = (~after_eos).long()
        full_mask = torch.cat([prompt_mask.cpu(), gen_mask.cpu()], dim=1)
        comp_mask = torch.cat([torch.zeros_like(prompt_mask).cpu(), gen_mask.cpu()], dim=1)
        extra = width - out.shape[1]
        sequences.append(torch.nn.functional.pad(out.cpu(), (0, extra), value=pad))
        attention.append(torch.nn.functional.pad(full_mask, (0, extra)))
        completion.append(torch.nn.functional.pad(comp_mask, (0, extra)))
        for row, row_mask in zip(gen.cpu(), gen_mask, strict=True):
            kept = row[row_mask.bool()].tolist()
            texts.append(tokenizer.decode(kept, skip_special_tokens=True).strip())
    grouped = [texts[i * k : (i + 1) * k] for i in range(len(prompts))]
    return Samples(
        prompts, grouped, torch.cat(sequences), torch.cat(attention), torch.cat(completion)
    )


@torch.no_grad()
def completion_logps(
    model: nn.Module, samples: Samples, device: torch.device, batch_size: int = 64
) -> Tensor:
    out = []
    for start in range(0, samples.sequences.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        ids = samples.sequences[sl].to(device)
        mask = samples.attention_mask[sl].to(device)
        # Left-padded prompts: positions must count from the first real token.
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False
        ).logits
        from prefopt.models.logps import token_logps

        per_token = token_logps(logits[:, :-1], ids[:, 1:])
        comp = samples.completion_mask[sl].to(device)[:, 1:].to(per_token.dtype)
        out.append((per_token * comp).sum(-1).cpu())
    return torch.cat(out)


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
) -> dict[str, Any]:
    """Evaluate `policy` against `reference` on the world. See the module docstring."""
    import contextlib

    ref_ctx = reference_context or contextlib.nullcontext
    vocab = len(world.tokenizer())
    results: dict[str, Any] = {}
    table: dict[str, dict[str, float]] = {}
    for split in ("test", "ood"):
        prompts = world.eval_prompts(split)[: cfg.n_prompts]
        pol = generate(policy, tokenizer, prompts, cfg, device, seed, max_prompt_length)
        with ref_ctx():
            ref = generate(
                reference, tokenizer, prompts, cfg, device, seed + 7919, max_prompt_length
            )
            ref_logp_of_pol = completion_logps(reference, pol, device)
        pol_logp = completion_logps(policy, pol, device)
        stats = _split_stats(world, pol, ref, vocab)
        stats["kl"] = float((pol_logp - ref_logp_of_pol).mean())
        table[split] = stats
    test, ood = table["test"], table["ood"]
    results.update(
        gold_reward=test["gold"],
        reference_gold_reward=test["ref_gold"],
        kl=test["kl"],
        win_rate=test["win_rate"],
        ead=test["ead"],
        ead_across_input=test["ead_across"],
        mean_length=test["length"],
        reference_mean_length=test["ref_length"],
        reference_ead=test["ref_ead"],
        ood_gold_reward=ood["gold"],
        ood_reference_gold_reward=ood["ref_gold"],
        ood_kl=ood["kl"],
        ood_win_rate=ood["win_rate"],
        generalisation_gap=test["gold"] - ood["gold"],
        objectives=test["objectives"],
        ood_objectives=ood["objectives"],
        diversity={"per_input": test["per_input"], "across_input": test["across_input"]},
        samples_per_prompt=cfg.samples_per_prompt,
        n_prompts=len(world.eval_prompts("test")[: cfg.n_prompts]),
    )
    if cfg.temperature != 1.0 or cfg.top_k or cfg.top_p < 1.0:
        results["kl_note"] = "samples not drawn at temperature 1 without truncation: kl is biased"
    if report_path is not None:
        report_path.write_text(render_report(results, table, world.objective_names))
    return results


def _split_stats(world: Any, pol: Samples, ref: Samples, vocab: int) -> dict[str, Any]:
    k = len(pol.completions[0])
    flat_prompts = [p for p in pol.prompts for _ in range(k)]
    pol_flat = [c for group in pol.completions for c in group]
    ref_flat = [c for group in ref.completions for c in group]
    pol_gold = world.gold_reward(flat_prompts, pol_flat)
    ref_gold = world.gold_reward(flat_prompts, ref_flat)
    wins = (pol_gold > ref_gold).float() + 0.5 * (pol_gold == ref_gold).float()
    objectives = world.objective_scores(flat_prompts, pol_flat).mean(0)
    per_input = per_input_diversity(pol.completions, vocab)
    across_input = across_input_diversity(pol.completions, vocab)
    return {
        "gold": float(pol_gold.mean()),
        "ref_gold": float(ref_gold.mean()),
        "win_rate": float(wins.mean()),
        "length": _mean_words(pol_flat),
        "ref_length": _mean_words(ref_flat),
        "ead": float(per_input["ead"]),
        "ref_ead": float(per_input_diversity(ref.completions, vocab)["ead"]),
        "ead_across": float(across_input["ead"]),
        "per_input": per_input,
        "across_input": across_input,
        "objectives": dict(zip(world.objective_names, objectives.tolist(), strict=True)),
        "example": (pol.prompts[0], pol.completions[0][0]),
    }


def _mean_words(texts: list[str]) -> float:
    return sum(len(t.split()) for t in texts) / max(1, len(texts))


def render_report(
    results: dict[str, Any], table: dict[str, dict[str, Any]], names: list[str]
) -> str:
    lines = [
        "# Gold evaluation on the synthetic world",
        "",
        f"{results['n_prompts']} prompts per split, {results['samples_per_prompt']} samples each.",
        "",
        "| split | gold reward | reference | win rate | KL | EAD (per input) | ref. EAD | length |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split, s in table.items():
        lines.append(
            f"| {split} | {s['gold']:.3f} | {s['ref_gold']:.3f} | {s['win_rate']:.3f} | "
            f"{s['kl']:.3f} | {s['ead']:.3f} | {s['ref_ead']:.3f} | {s['length']:.1f} |"
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
