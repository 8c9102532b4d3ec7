"""TRL 0.29.1's PPOTrainer (``trl.experimental.ppo``) in its own process, with TRL 0.29.1 first
on ``PYTHONPATH`` (``.bench/trl029``, installed there without dependencies by `make bench`):
``python -m benchmarks.trl029_ppo <job.json> <out.json>``.

The settings mirror prefopt's ppo run (benchmarks/prefopt_side.py): 8 prompts x 1 completion
per update, 1 PPO epoch, 1 minibatch, KL 0.05 with the k1 estimator, gamma 1, lambda 0.95,
separate reward model and critic (both loaded from the reward-model folder), stop at EOS
(``stop_token="eos"``, as prefopt stops at EOS), no missing-EOS penalty, temperature 1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import settings as S
from benchmarks.measure import counted_params, job_main, peak_rss_mb


def run(job: dict[str, Any]) -> dict[str, Any]:
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    if not trl.__version__.startswith("0.29"):
        raise RuntimeError(f"expected TRL 0.29.x first on PYTHONPATH, found {trl.__version__}")
    a = job["assets"]
    tokenizer = AutoTokenizer.from_pretrained(a["policy"])
    tokenizer.padding_side = "left"
    lines = [json.loads(x) for x in Path(a["prompts_file"]).read_text().splitlines() if x]
    prompts = [lines[i]["prompt"] for i in job["order"]]
    data = Dataset.from_list([{"input_ids": tokenizer(p)["input_ids"]} for p in prompts])

    fast = dict(S.TRL_FAST["ppo"]) if job["setting"] == "fastest" else {}
    # the models' attention implementation ("attn_implementation" in TRL_FAST: not a PPOConfig
    # field; TRL 0.29's PPO takes the models it is given)
    attention = {"attn_implementation": fast.pop("attn_implementation")} if (
        "attn_implementation" in fast) else {}  # fmt: skip

    def causal(path: str) -> Any:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **attention)

    def scalar(path: str) -> Any:
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=torch.float32, **attention
        )

    args: dict[str, Any] = dict(
        output_dir=job["run_dir"],
        per_device_train_batch_size=S.BATCH,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=1,
        total_episodes=S.BATCH * S.ONLINE_STEPS,
        local_rollout_forward_batch_size=S.BATCH,
        response_length=S.MAX_NEW_TOKENS,
        temperature=1.0,
        kl_coef=0.05,
        kl_estimator="k1",
        gamma=1.0,
        lam=0.95,
        stop_token="eos",
        missing_eos_penalty=None,
        num_sample_generations=0,
        learning_rate=S.LR,
        lr_scheduler_type="constant",
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        save_strategy="no",
        report_to=[],
        seed=S.SEED,
        use_cpu=S.DEVICE == "cpu",
        bf16=False,
        disable_tqdm=True,
    )
    args.update(fast)
    counts: list[dict[str, int]] = []
    original = ppo_module.get_reward
    reward_model = scalar(a["reward_model"])

    def counted(model: Any, query_responses: Any, pad_token_id: int, context_length: int) -> Any:
        if model is not reward_model:  # the critic's values go through get_reward too
            return original(model, query_responses, pad_token_id, context_length)
        real = query_responses != pad_token_id
        counts.append(
            {
                "episodes": int(query_responses.shape[0]),
                "tokens": int(real.sum()),
                "new_tokens": int(real[:, context_length:].sum()),
            }
        )
        return original(model, query_responses, pad_token_id, context_length)

    ppo_module.get_reward = counted
    trainer = PPOTrainer(
        args=PPOConfig(**args), processing_class=tokenizer, model=causal(a["policy"]),
        ref_model=causal(a["policy"]), reward_model=reward_model,
        value_model=scalar(a["reward_model"]), train_dataset=data,
    )  # fmt: skip
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.train()
    return {
        "side": "trl",
        "algo": "ppo",
        "setting": job["setting"],
        "trl_version": trl.__version__,
        "step_seconds": [b - a for a, b in zip(stamps, stamps[1:], strict=False)],
        "timed_s": stamps[-1] - stamps[0],
        "precompute_s": 0.0,
        "params": counted_params(trainer.accelerator.unwrap_model(trainer.model).policy),
        "episodes": counts,
        "peak_mb": peak_rss_mb(),
    }


if __name__ == "__main__":
    job_main(run)
