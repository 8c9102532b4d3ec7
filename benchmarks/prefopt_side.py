"""One prefopt run in its own process: ``python -m benchmarks.prefopt_side <job.json> <out.json>``.

Builds the trainer through prefopt's Python API (the recipe plus overrides, as ``prefopt train``
does), times optimiser steps 2..N with the trainer's ``on_step_end`` hook (step 1 is the
warm-up), adds any one-time precomputation those steps use (the cached reference log-probs),
and, for the fp32 agreement check, computes the first batch's loss and per-sequence numbers
before training.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import settings as S
from benchmarks.measure import counted_params, job_main, peak_rss_mb

RECIPES = {"dpo": "dpo", "rm": "rm", "ppo": "ppo", "grpo": "grpo", "rloo": "rloo"}


class WordReward:
    """The Python reward of the GRPO/RLOO comparison (the same function TRL is given)."""

    def score(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        from benchmarks.rewards import distinct_words

        return torch.tensor(distinct_words(completions), dtype=torch.float32)


def overrides(job: dict[str, Any]) -> list[str]:
    algo, a = job["algo"], job["assets"]
    common = [
        f"seed={S.SEED}",
        f"output_dir={job['run_dir']}",
        f"model.name_or_path={a['policy'] if algo != 'rm' else a['reward_model']}",
        "data.eval_split=null",
        f"data.max_length={S.MAX_LENGTH}",
        f"trainer.lr={S.LR}",
        "trainer.warmup_steps=0",
        "trainer.log_every=1",
        "trainer.progress_bar=false",
        f"trainer.device={S.DEVICE}",
        "eval.enabled=false",
    ]
    if algo in ("dpo", "rm"):
        common += [
            f"data.source={a['pairs_file']}",
            "data.format=preference",
            f"data.max_prompt_length={S.MAX_LENGTH - 1}",
            f"trainer.batch_size={S.BATCH}",
            f"trainer.max_steps={S.OFFLINE_STEPS}",
            "trainer.scheduler=linear",
        ]
    if algo == "dpo":
        common += [
            f"loss.beta={S.DPO_BETA}",
            f"reference.name_or_path={a['reference']}",
            "reference.mode=copy",
            f"reference.cache_dir={job['run_dir']}/ref_cache",
        ]
    if algo == "rm":
        common += [f"loss.center_coef={S.RM_CENTER}"]
    if algo in ("ppo", "grpo", "rloo"):
        group = 1 if algo == "ppo" else S.GROUP
        common += [
            f"data.source={a['prompts_file']}",
            "data.format=preference",
            f"data.max_prompt_length={S.MAX_PROMPT_LENGTH}",
            f"trainer.batch_size={S.BATCH // group}",
            f"trainer.max_steps={S.ONLINE_STEPS}",
            "trainer.scheduler=constant",
            f"rollout.samples_per_prompt={group}",
            f"rollout.max_new_tokens={S.MAX_NEW_TOKENS}",
            f"rollout.batch_size={S.BATCH}",
            "rollout.temperature=1.0",
            "loss.epochs=1",
            f"loss.minibatch_size={S.BATCH}",
            "reward.clip=null",
            "reward.missing_eos_penalty=null",
            "trainer.adam_eps=1e-8",
        ]
        if algo == "ppo":
            common += [
                f"reward.scorer={a['reward_model']}",
                "regulariser.coef=0.05",
                "regulariser.estimator=k1",
                "value.mode=separate",
                "value.init=reward_model",
            ]
        else:  # the scorer is replaced by the Python reward (WordReward) after loading
            common += [f"reward.scorer={a['reward_model']}", "regulariser.coef=0.0"]
    if job["setting"] == "fastest":
        common += S.PREFOPT_FAST[algo]
    if job["setting"] == "vllm":
        common += S.PREFOPT_VLLM[algo]
    return common


def build(job: dict[str, Any]) -> Any:
    from prefopt.config import load_recipe
    from prefopt.train import trainer_class

    recipe = load_recipe(RECIPES[job["algo"]], overrides(job))
    cls = trainer_class(recipe)
    if job["algo"] in ("grpo", "rloo"):

        class PythonRewardTrainer(cls):  # type: ignore[misc,valid-type]
            def build_scorer(self) -> Any:
                return WordReward()

        cls = PythonRewardTrainer
    return cls(recipe, Path(job["run_dir"]))


def first_batch(trainer: Any, algo: str) -> dict[str, Any]:
    """The first training batch's numbers in the trainer's own code paths (no gradient)."""
    from prefopt.models.logps import pair_logps
    from prefopt.trainers.reward import pair_rewards

    _, batch = trainer.micro_batch(0)  # in the run's own layout (data.layout: packed or not)
    # the sequences' ids from the examples, whatever the layout: prompt+chosen rows, then
    # prompt+rejected rows (TRL's order)
    examples = [trainer.train_examples[i] for i in trainer.epoch_permutation(0)[: S.BATCH]]
    ids = [e["prompt_ids"] + e["chosen_ids"] for e in examples] + [
        e["prompt_ids"] + e["rejected_ids"] for e in examples
    ]
    model = trainer.model
    with torch.no_grad():
        if algo == "dpo":
            policy = pair_logps(model, batch)
            ref = trainer.reference_logps(batch)
            loss = trainer.loss_fn(policy, ref, batch).loss.mean()
            return {
                "ids": ids,
                "loss": loss.item(),
                "chosen_logps": policy.chosen.tolist(),
                "rejected_logps": policy.rejected.tolist(),
                "ref_chosen_logps": ref.chosen.tolist(),
                "ref_rejected_logps": ref.rejected.tolist(),
            }
        chosen, rejected = pair_rewards(model, batch)
        loss = trainer.compute_loss(batch).loss.mean()
        return {
            "ids": ids,
            "loss": loss.item(),
            "chosen_rewards": chosen.tolist(),
            "rejected_rewards": rejected.tolist(),
        }


def run(job: dict[str, Any]) -> dict[str, Any]:
    import prefopt.models.ref_cache as ref_cache

    precompute = [0.0]
    original = ref_cache.cached_reference_logps

    def timed_cache(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            precompute[0] += time.perf_counter() - start

    ref_cache.cached_reference_logps = timed_cache
    trainer = build(job)
    algo = job["algo"]
    out: dict[str, Any] = {"side": "prefopt", "algo": algo, "setting": job["setting"]}
    out["overrides"] = overrides(job)
    if algo in ("dpo", "rm"):
        order = trainer.epoch_permutation(0)
        if order != job["order"]:
            raise RuntimeError(f"prefopt's data order {order} is not the harness's {job['order']}")
        if job.get("check"):
            out["check"] = first_batch(trainer, algo)
    stamps: list[float] = []
    step_end = trainer.on_step_end

    def on_step_end(step: int) -> None:
        step_end(step)
        stamps.append(time.perf_counter())

    trainer.on_step_end = on_step_end
    episodes = _count_online(trainer) if algo in ("ppo", "grpo", "rloo") else None
    trainer.train()
    out["step_seconds"] = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    out["timed_s"] = stamps[-1] - stamps[0] + precompute[0]
    out["precompute_s"] = precompute[0]
    out["params"] = counted_params(trainer.unwrapped())
    if episodes is not None:
        out["episodes"] = episodes  # per step: completions and their useful tokens
    out["peak_mb"] = peak_rss_mb()
    return out


def _count_online(trainer: Any) -> list[dict[str, int]]:
    """Record each rollout's completions and useful (prompt + completion) tokens."""
    seen: list[dict[str, int]] = []
    make = trainer.make_rollout

    def counted(prompts: list[str], **kwargs: Any) -> Any:
        rollout, samples, metrics = make(prompts, **kwargs)
        attention = samples.attention_mask if hasattr(samples, "attention_mask") else None
        completion = getattr(samples, "completion_mask", None)
        seen.append(
            {
                "episodes": int(len(samples.flat_completions)),
                "tokens": int(attention.sum()) if attention is not None else -1,
                "new_tokens": int(completion.sum()) if completion is not None else -1,
            }
        )
        return rollout, samples, metrics

    trainer.make_rollout = counted
    return seen


if __name__ == "__main__":
    job_main(run)
