"""One TRL 1.16 run in its own process: ``python -m benchmarks.trl_side <job.json> <out.json>``.

DPOTrainer, RewardTrainer, GRPOTrainer, RLOOTrainer on the same model folders and data files as
prefopt. Steps are timed with a TrainerCallback (step 1 is the warm-up; steps 2..N are timed),
plus TRL's one-time reference precomputation (``precompute_ref_log_probs``) when it is used. The
data are handed over in prefopt's order (``job["order"]``) and read sequentially, so that both
sides train on the same batches.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import settings as S
from benchmarks.measure import counted_params, job_main, peak_rss_mb


def rows(path: str, order: list[int]) -> list[dict[str, str]]:
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [lines[i] for i in order]


def common_args(job: dict[str, Any], steps: int) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        output_dir=job["run_dir"],
        per_device_train_batch_size=S.BATCH,
        max_steps=steps,
        learning_rate=S.LR,
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=S.SEED,
        use_cpu=S.DEVICE == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=True,
        bf16=False,
    )
    args.update(trl_settings(job["algo"], job["setting"]))
    return args


def trl_settings(algo: str, setting: str) -> dict[str, object]:
    """TRL's config fields of a setting beyond fp32: its fastest, or its colocated vLLM."""
    return {"fastest": S.TRL_FAST, "vllm": S.TRL_VLLM}.get(setting, {}).get(algo, {})


class StepClock:
    """A TrainerCallback recording the time at the end of every optimiser step."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        stamps: list[float] = []
        self.stamps = stamps

        class Callback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                stamps.append(time.perf_counter())

        self.callback = Callback()


def build_dpo(job: dict[str, Any]) -> Any:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    a = job["assets"]
    tokenizer = AutoTokenizer.from_pretrained(a["policy"])
    model = AutoModelForCausalLM.from_pretrained(a["policy"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(a["reference"], dtype=torch.float32)
    args = common_args(job, S.OFFLINE_STEPS)
    args.update(
        beta=S.DPO_BETA,
        max_length=S.MAX_LENGTH,
        lr_scheduler_type="linear",
        train_sampling_strategy="sequential",
    )
    data = Dataset.from_list(rows(a["pairs_file"], job["order"]))
    return DPOTrainer(
        model=model, ref_model=ref, args=DPOConfig(**args), train_dataset=data,
        processing_class=tokenizer,
    )  # fmt: skip


def build_rm(job: dict[str, Any]) -> Any:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    a = job["assets"]
    tokenizer = AutoTokenizer.from_pretrained(a["reward_model"])
    model = AutoModelForSequenceClassification.from_pretrained(
        a["reward_model"], num_labels=1, dtype=torch.float32
    )
    args = common_args(job, S.OFFLINE_STEPS)
    args.update(
        max_length=S.MAX_LENGTH,
        center_rewards_coefficient=S.RM_CENTER,
        lr_scheduler_type="linear",
        train_sampling_strategy="sequential",
    )
    data = Dataset.from_list(rows(a["pairs_file"], job["order"]))
    return RewardTrainer(
        model=model, args=RewardConfig(**args), train_dataset=data, processing_class=tokenizer
    )


class Counter:
    """The GRPO/RLOO reward function: `distinct_words`, counting completions and tokens."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.calls: list[dict[str, int]] = []
        self.__name__ = "distinct_words"

    def __call__(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        from benchmarks.rewards import distinct_words

        ids = kwargs.get("completion_ids")
        new = sum(len(c) for c in ids) if ids is not None else -1
        prompt_tokens = sum(len(self.tokenizer(p)["input_ids"]) for p in prompts)
        self.calls.append(
            {"episodes": len(completions), "tokens": prompt_tokens + new, "new_tokens": new}
        )
        return distinct_words(completions)


def build_online(job: dict[str, Any]) -> tuple[Any, Counter]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    algo, a = job["algo"], job["assets"]
    tokenizer = AutoTokenizer.from_pretrained(a["policy"])
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(a["policy"], dtype=torch.float32)
    prompts = [{"prompt": r["prompt"]} for r in rows(a["prompts_file"], job["order"])]
    reward = Counter(tokenizer)
    reward_funcs: Any = reward  # a callable object; TRL types it as a function
    trainer: Any
    args = common_args(job, S.ONLINE_STEPS)
    args.update(
        num_generations=S.GROUP,
        generation_batch_size=S.BATCH,
        max_completion_length=S.MAX_NEW_TOKENS,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        beta=0.0,
        num_iterations=1,
        shuffle_dataset=False,
        lr_scheduler_type="constant",
        adam_epsilon=1e-8,
    )
    if algo == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        trainer = GRPOTrainer(
            model=model, reward_funcs=reward_funcs, args=GRPOConfig(**args),
            train_dataset=Dataset.from_list(prompts), processing_class=tokenizer,
        )  # fmt: skip
    else:
        from trl import RLOOConfig, RLOOTrainer

        trainer = RLOOTrainer(
            model=model, reward_funcs=reward_funcs, args=RLOOConfig(**args),
            train_dataset=Dataset.from_list(prompts), processing_class=tokenizer,
        )  # fmt: skip
    return trainer, reward


def first_batch(trainer: Any, algo: str) -> dict[str, Any]:
    """The first training batch's numbers through TRL's own code (no gradient)."""
    examples = [trainer.train_dataset[i] for i in range(S.BATCH)]
    batch = trainer.data_collator(examples)
    batch = {k: v.to(trainer.model.device) if hasattr(v, "to") else v for k, v in batch.items()}
    ids = [
        row[mask.bool()].tolist()
        for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
    ]
    model = trainer.model
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        if algo == "rm":
            scores = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.squeeze(-1)
            chosen, rejected = scores.chunk(2)
            return {"ids": ids, "loss": float(loss), "chosen_rewards": chosen.tolist(),
                    "rejected_rewards": rejected.tolist()}  # fmt: skip
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

        def logps(m: Any) -> tuple[list[float], list[float]]:
            out = m(**inputs, labels=labels, fused_lm_head=True, use_cache=False).log_probs
            chosen, rejected = out.sum(dim=1).chunk(2)
            return chosen.tolist(), rejected.tolist()

        policy, ref = logps(model), logps(trainer.ref_model)
    return {"ids": ids, "loss": float(loss), "chosen_logps": policy[0], "rejected_logps": policy[1],
            "ref_chosen_logps": ref[0], "ref_rejected_logps": ref[1]}  # fmt: skip


def run(job: dict[str, Any]) -> dict[str, Any]:
    from trl import DPOTrainer

    precompute = [0.0]
    original = DPOTrainer._precompute_ref_logps

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            precompute[0] += time.perf_counter() - start

    DPOTrainer._precompute_ref_logps = timed  # type: ignore[method-assign]
    algo = job["algo"]
    out: dict[str, Any] = {"side": "trl", "algo": algo, "setting": job["setting"]}
    counter = None
    if algo == "dpo":
        trainer = build_dpo(job)
    elif algo == "rm":
        trainer = build_rm(job)
    else:
        trainer, counter = build_online(job)
    out["args"] = {k: v for k, v in common_args(job, 0).items() if k in ("bf16",)} | (
        trl_settings(algo, job["setting"])
    )
    if algo in ("dpo", "rm") and job.get("check"):
        out["check"] = first_batch(trainer, algo)
    clock = StepClock()
    trainer.add_callback(clock.callback)
    trainer.train()
    stamps = clock.stamps
    out["step_seconds"] = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    out["timed_s"] = stamps[-1] - stamps[0] + precompute[0]
    out["precompute_s"] = precompute[0]
    out["params"] = counted_params(trainer.accelerator.unwrap_model(trainer.model))
    if counter is not None:
        out["episodes"] = counter.calls
    out["peak_mb"] = peak_rss_mb()
    return out


if __name__ == "__main__":
    job_main(run)
