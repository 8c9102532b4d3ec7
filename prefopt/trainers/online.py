"""The online trainer: PPO-RLHF and the critic-free estimators on the common trainer base.

A step of the base loop (`Trainer.training_step`) is here: make a rollout batch, then optimise
on it for `loss.epochs` passes of minibatches (Ziegler et al. 2019; Ouyang et al. 2022; the
details of Huang et al., arXiv 2403.17031; ALGORITHMS.md sections 3, 5 and 12):

1. rollout: ``trainer.batch_size`` prompts (drawn in the base's deterministic data order) x
   ``rollout.samples_per_prompt`` completions from the current policy, drawn by the rollout
   engine ``rollout.engine`` (``models.engines``, docs/engines.md; ``hf``: ``models.generation``,
   batched ``generate`` with the KV cache, left padding, stop at EOS, everything after the first
   EOS masked, EOS kept), built once and given the policy's new weights before each rollout;
   when it returns its sampled tokens' log-probs their distance to the trainer's is logged
   (``rollout/logp_diff_*``, ``prefopt.rl.mismatch``); the sampling seed is a function of the
   seed and the step, so a resumed run samples exactly what an uninterrupted one would; with
   ``rollout.dynamic_sampling`` (DAPO) groups whose scores are all equal are replaced by groups
   of fresh prompts;
2. scores: any Scorer on the decoded text (``reward.scorer``, or the weighted rewards of
   ``reward.components``), plus ``reward.missing_eos_penalty`` for completions that never
   stopped and DAPO's overlong shaping, clipped to ``reward.clip``, optionally normalised to the
   reference policy's samples (gain / bias: mean 0, std 1); on the world the gold reward of the
   same rollouts is logged as ``objective/gold`` whatever the scorer is;
3. per-token rewards: ``-coef * penalty_t`` (``regulariser.name``: kl, pm, conditional_pm) plus
   the score at the last real completion token (its EOS when it has one; never the first pad);
4. advantages: the estimator ``advantage.name`` (``prefopt.registry.ADVANTAGES``: GAE over a
   critic's values, RLOO, GRPO, REINFORCE++, GDPO...) reads the typed rollout record
   (``prefopt.rl.rollout.Rollout``) the steps above filled;
5. ``loss.epochs`` x minibatches of ``loss.minibatch_size`` rollouts: the policy-loss form
   ``loss.name`` (PPO's clipped surrogate, GSPO, CISPO, SAPO, GMPO, online DPO: the ``online``
   losses of ``prefopt.registry``; docs/algorithms/grpo.md) on log-probs recomputed at
   the sampling temperature (each token's term weighted by truncated importance weights with
   ``rollout.tis_cap``, docs/algorithms/ppo.md), the clipped value loss for the critic
   (``value.mode: separate`` has its own optimiser; ``shared`` is a head on the policy trained
   with ``vf_coef`` in the same loss), one optimiser step per minibatch; the learning-rate
   schedule and the KL controller advance once per rollout batch.

A checkpoint holds the policy, its optimiser and schedule (the base's), the critic or shared
head with its optimiser, the KL controller's coefficient and the RNG states, so that resuming at
step s continues exactly. Every rollout batch logs the metrics of ALGORITHMS.md section 3; the
run ends by drawing ``overoptimisation.png`` (proxy and gold reward against KL).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from prefopt.data import PromptCollator, tokenize_prompts
from prefopt.models.engines import RolloutEngine, build_engine, open_engine
from prefopt.models.generation import (
    Samples,
    check_special_tokens,
    concat_samples,
    pad_columns,
    position_ids,
    rollout_token_logps,
    shared_prompt_logits,
)
from prefopt.models.loading import attention_implementation
from prefopt.models.logps import takes_logits_to_keep, token_logps
from prefopt.models.value import (
    SharedValueHead,
    ValueModel,
    policy_hidden_size,
    same_architecture,
    value_model_from_policy,
    value_model_from_reward_model,
)
from prefopt.registry import get_advantage, get_loss, get_regulariser
from prefopt.rl.advantages import masked_mean
from prefopt.rl.kl import FixedKLController, kl_penalty
from prefopt.rl.length import length_by_correctness, overlong_penalty
from prefopt.rl.mismatch import logp_mismatch, truncated_importance_weights
from prefopt.rl.ppo import entropy_from_logits, explained_variance, token_aggregate
from prefopt.rl.rollout import Rollout
from prefopt.trainers import engines
from prefopt.trainers.base import TrainingError
from prefopt.trainers.policy import PolicyTrainer, unresolved_check


@dataclasses.dataclass
class Scored:
    """A rollout batch's scores. rewards: [R, M] each reward's raw scores; raw: [R] their
    weighted sum (the scorer's own score with one reward); scores: [R] what the policy
    maximises (``OnlineTrainer.scores``)."""

    rewards: Tensor
    raw: Tensor
    scores: Tensor


class OnlineTrainer(PolicyTrainer):
    """PPO-RLHF and the critic-free estimators with any policy-loss form (see the module
    docstring)."""

    data_kind = "preference"  # prompts are taken from preference (or SFT) records

    # ---------------------------------------------------------------- build

    def build(self) -> None:
        loss_cfg = self.recipe.loss
        if loss_cfg.aggregate == "constant" and loss_cfg.constant is None:
            # Dr. GRPO's constant, as TRL's dr_grpo: the maximum number of new tokens
            loss_cfg = dataclasses.replace(loss_cfg, constant=self.recipe.rollout.max_new_tokens)
        self.loss_fn = get_loss(loss_cfg.name).build(loss_cfg)
        self.estimator_entry = get_advantage(self.recipe.advantage.name)
        self.estimator = self.estimator_entry.build(self.recipe.advantage)
        entry = get_regulariser(self.recipe.regulariser.name)
        self.regulariser = entry.build(self.recipe.regulariser)
        controller = getattr(self.regulariser, "controller", None)
        self.kl_ctl = (
            controller()
            if callable(controller)
            else FixedKLController(float(self.recipe.regulariser.coef))
        )
        super().build()
        check_special_tokens(self.tokenizer)
        if self.init_path is None:
            raise TrainingError(
                "online training starts from a trained policy: set model.name_or_path "
                "(world:sft on the world)"
            )
        self.scorer = self.build_scorer()
        # the rollout engine (rollout.engine), built at the first rollout; stale: the policy's
        # weights changed since it last had them (an optimiser step, a resume)
        self._engine: RolloutEngine | None = None
        self._engine_stale = False
        self.critic: ValueModel | None = None
        self.value_head: SharedValueHead | None = None
        if self.estimator_entry.needs_critic and not self.for_eval:
            self.build_value()
        self.reward_gain, self.reward_bias = 1.0, 0.0
        if self.recipe.reward.normalise and not self.for_eval:
            self.reward_gain, self.reward_bias = self.measure_reward_normalisation()
        self.summary["online"] = {
            "scorer": self.recipe.reward.scorer,
            "value": self.value_description(),
            "reward_gain": self.reward_gain,
            "reward_bias": self.reward_bias,
        }

    def load_data(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Distinct prompts of the training records (the world's train pairs by default)."""
        train, _ = super().load_data()
        seen: dict[str, None] = {}
        for record in train:
            seen.setdefault(str(record["prompt"]), None)
        return [{"prompt": p} for p in seen], []

    def tokenize(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        examples = tokenize_prompts(
            records, self.tokenizer, max_prompt_length=self.recipe.data.max_prompt_length
        )
        for example, record in zip(examples, records, strict=True):
            example["prompt"] = record["prompt"]
        return examples

    def make_collator(self) -> PromptCollator:
        return PromptCollator(pad_token_id=self.tokenizer.pad_token_id)

    def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        return {"prompts": [e["prompt"] for e in examples]}

    @property
    def penalised(self) -> bool:
        """Whether the rollouts need the reference: a regulariser with a coefficient that is not
        a fixed 0 (GRPO / RLOO at beta 0, as Dr. GRPO and DAPO run, need none)."""
        return not (isinstance(self.kl_ctl, FixedKLController) and self.kl_ctl.value == 0)

    @property
    def loss_needs_reference(self) -> bool:
        """Whether the policy loss itself reads the reference's log-probs (online DPO)."""
        return bool(getattr(self.loss_fn, "needs_reference", False))

    def build_reference(self) -> None:
        """The policy's start: the adapter-disabled base with LoRA (one copy of the weights),
        else a frozen copy (or `reference.name_or_path`, e.g. MPO's DPO model). At a fixed
        coefficient 0 no copy is kept unless the world's evaluation (its KL to the start) or
        reward normalisation (the reference's samples) needs one."""
        super().build_reference()
        needed = (
            self.penalised
            or self.loss_needs_reference
            or self.recipe.reward.normalise
            or (self.world is not None and self.recipe.eval.enabled)
        )
        if self.recipe.model.lora is not None and not self.recipe.reference.name_or_path:
            self.reference_uses_adapter = True
        elif needed:
            self.reference = self.load_reference_weights()
        self.summary["reference"] = {
            "mode": "adapter" if self.reference_uses_adapter else "copy" if needed else "none",
            "name_or_path": self.recipe.reference.name_or_path or self.init_path,
        }

    def build_scorer(self) -> Any:
        """``reward.scorer``, or the weighted sum of ``reward.components`` (each logged)."""
        components = self.recipe.reward.components
        if not components:
            return self._one_scorer("reward.scorer", str(self.recipe.reward.scorer))
        from prefopt.rewards.scorers import WeightedScorer

        return WeightedScorer(
            [
                self._one_scorer(f"reward.components.{i}.scorer", c.scorer)
                for i, c in enumerate(components)
            ],
            [float(c.weight) for c in components],
            [c.name or c.scorer for c in components],
        )

    def _one_scorer(self, key: str, spec: str) -> Any:
        if spec == "world" or spec.startswith("gold:"):
            if self.world is None:
                raise TrainingError(f"{key}: {spec} needs data.source: world")
            if spec == "world":
                return self.world
            from prefopt.rewards.scorers import GoldObjectiveScorer

            try:
                return GoldObjectiveScorer(self.world, spec.removeprefix("gold:"))
            except ValueError as exc:
                raise TrainingError(f"{key}: {exc}") from exc
        from prefopt.rewards.scorers import load_scorer

        path = self._resolve(spec, key)
        try:
            reward = self.recipe.reward  # an ensemble "A,B": reward.ensemble combines them
            return load_scorer(path, device=str(self.device), ensemble_mode=reward.ensemble,
                               ensemble_coef=reward.ensemble_coef)  # fmt: skip
        except (OSError, ValueError) as exc:
            raise TrainingError(f"{key}: cannot load {spec!r}: {exc}") from exc

    def _resolve(self, spec: str, key: str = "reward.scorer") -> str:
        for part in spec.split(","):
            unresolved_check(key, part)
        return spec

    def build_value(self) -> None:
        cfg = self.recipe.value
        if cfg.mode == "shared":
            self.value_head = SharedValueHead(policy_hidden_size(self.unwrapped())).to(self.device)
            return
        rm_path = self._reward_model_path()
        use_rm = cfg.init == "reward_model" or (
            cfg.init == "auto"
            and rm_path is not None
            and same_architecture(rm_path, str(self.init_path))
        )
        if use_rm:
            if rm_path is None:
                raise TrainingError("value.init: reward_model needs a reward-model scorer")
            self.critic = value_model_from_reward_model(rm_path)
            self.critic_init = f"reward model {rm_path}"
        else:
            self.critic = value_model_from_policy(str(self.init_path))
            self.critic_init = f"policy {self.init_path}"
        self.critic.to(self.device)

    def _reward_model_path(self) -> str | None:
        spec = self.recipe.reward.scorer
        if spec is None or spec == "world" or spec.startswith("gold:") or "," in spec:
            return None
        path = Path(self._resolve(spec))
        path = path / "model" if (path / "model" / "config.json").exists() else path
        return str(path) if (path / "config.json").exists() else None

    def value_description(self) -> str:
        if not self.estimator_entry.needs_critic:
            return f"none ({self.recipe.advantage.name} is critic-free)"
        if self.recipe.value.mode == "shared":
            return "shared head on the policy"
        return f"separate, initialised from the {getattr(self, 'critic_init', '?')}"

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = super().trainable_parameters()
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        return params

    def _prepare_optimisation(self) -> None:
        super()._prepare_optimisation()
        self.critic_optimizer: torch.optim.Optimizer | None = None
        if self.critic is not None:
            lr = self.recipe.value.lr or self.cfg.lr
            critic_params = list(self.critic.parameters())
            optimizer = torch.optim.AdamW(
                critic_params,
                lr=lr,
                betas=tuple(self.cfg.adam_betas),  # type: ignore[arg-type]
                eps=self.cfg.adam_eps,
                weight_decay=0.0,
                **engines.adamw_kernel(self.accelerator, critic_params),
            )
            self.critic, self.critic_optimizer = self.accelerator.prepare(self.critic, optimizer)

    @property
    def examples_per_step(self) -> int:
        return self.global_batch * self.recipe.rollout.samples_per_prompt

    # ---------------------------------------------------------------- scores

    @torch.no_grad()
    def measure_reward_normalisation(self) -> tuple[float, float]:
        """Gain and bias so that the scorer's scores of the reference policy's samples have
        mean 0 and std 1 (measured on the scorer's own output, before the EOS penalty and the
        clip, which then apply on the normalised scale)."""
        n = min(self.recipe.reward.normalise_prompts, len(self.train_examples))
        prompts = [e["prompt"] for e in self.train_examples[:n]]
        with self.reference_forward():
            samples = self.sample(self.reference_model(), prompts, seed=self.recipe.seed - 1)
        raw = self.scorer_scores(samples)
        std = float(raw.std())
        if std == 0:
            raise TrainingError("reward.normalise: the reference's samples all score the same")
        return 1.0 / std, -float(raw.mean()) / std

    def sample(
        self, model: nn.Module, prompts: list[str], seed: int, with_logps: bool = False
    ) -> Samples:
        """Samples of ``model`` (e.g. the reference, for reward normalisation) with an engine
        ``rollout.engine`` builds for this one call; the policy's rollouts use the run's own
        engine (:meth:`sample_rollout`)."""
        r = self.recipe.rollout
        with open_engine(model, self.tokenizer, self.device, r.engine) as engine:
            length = self.recipe.data.max_prompt_length
            return engine.sample(prompts, r, seed, max_prompt_length=length, with_logps=with_logps)

    def reward_terms(self, samples: Samples) -> Tensor:
        """[R, M] each reward's own scores of the decoded completions (M = 1: the scorer's); a
        reward model runs at the run's precision, under the same autocast as the policy."""
        prompts, completions = samples.flat_prompts, samples.flat_completions
        with self.accelerator.autocast():
            if hasattr(self.scorer, "score_terms"):
                return self.scorer.score_terms(prompts, completions).float().cpu()
            scores = self.scorer.score(prompts, completions)
        return torch.as_tensor(scores, dtype=torch.float32).reshape(-1, 1).cpu()

    @property
    def reward_weights(self) -> Tensor:
        """[M] the weights of :meth:`reward_terms` in the combined score."""
        weights = getattr(self.scorer, "weights", None)
        return weights if isinstance(weights, Tensor) else torch.ones(1)

    def scorer_scores(self, samples: Samples) -> Tensor:
        """[R] the scorer's scores of the decoded completions (several rewards: their
        weighted sum)."""
        return self.score(samples).raw

    def score(self, samples: Samples) -> Scored:
        rewards = self.reward_terms(samples)
        raw = rewards[:, 0] if rewards.shape[1] == 1 else rewards @ self.reward_weights
        return Scored(rewards, raw, self.scores(samples, raw))

    def scores(self, samples: Samples, raw: Tensor | None = None) -> Tensor:
        """[R] the scores PPO optimises: the scorer's (``raw``, scored here when not given),
        normalised (``reward.normalise``), plus ``reward.missing_eos_penalty`` for completions
        that never stopped and DAPO's overlong shaping (``reward.overlong_buffer``), clipped to
        ``reward.clip`` (the order of OpenAI's original code)."""
        raw = self.scorer_scores(samples) if raw is None else raw.cpu()
        scores = raw * self.reward_gain + self.reward_bias
        cfg = self.recipe.reward
        if cfg.missing_eos_penalty is not None:
            no_eos = ~samples.ended_with_eos(self.tokenizer.eos_token_id)
            scores = scores + cfg.missing_eos_penalty * no_eos.float()
        if cfg.overlong_buffer is not None:
            lengths = samples.completion_mask.sum(-1)
            max_length = self.recipe.rollout.max_new_tokens
            scores = scores + overlong_penalty(
                lengths, max_length, cfg.overlong_buffer, cfg.overlong_penalty
            )
        if cfg.clip is not None:
            scores = scores.clamp(-cfg.clip, cfg.clip)
        return scores

    # ---------------------------------------------------------------- one step

    def training_step(self, window: dict[str, list[float]]) -> int:
        epoch, batch = self.micro_batch(self.step)
        rollout, _, metrics = self.make_rollout(
            cast(list[str], batch["prompts"]), values_in_update=True
        )
        for name, value in metrics.items():
            window[name].append(value)
        models = [self.model, self.critic]
        with attention_implementation(models, self.recipe.model.train_attention):
            optimised = self.optimise(rollout)
        for name, values in optimised.items():
            window[name].extend(values)
        self.scheduler.step()
        self.kl_ctl.update(float(rollout.kl.mean()), n_steps=rollout.size)
        return epoch

    def values_deferred(self, rows: int) -> bool:
        """A separate critic, one epoch, one minibatch of all ``rows``: the critic's values
        before its only update are those its rollout forward would compute, so that forward is
        left out and the update's own forward gives them (:meth:`settle_advantages`); the same
        numbers up to float rounding (tests/test_online.py)."""
        loss = self.recipe.loss
        return self.critic is not None and loss.epochs == 1 and loss.minibatch_size >= rows

    @torch.no_grad()
    def make_rollout(
        self, prompts: list[str], values_in_update: bool = False
    ) -> tuple[Rollout, Samples, dict[str, float]]:
        """Sample, score and turn into advantages one batch of prompts; returns the rollout,
        the samples it came from (text and ids) and its metrics. With ``values_in_update``
        (the training loop, whose next update covers the whole rollout) and
        :meth:`values_deferred`, the critic's values and the advantages are left to that update
        (``advantages`` None). The steps: :meth:`sample_and_score` (with DAPO's dynamic
        sampling), :meth:`build_rollout` (forward passes, token rewards), the estimator, then
        :meth:`rollout_metrics`."""
        samples, scored, metrics = self.sample_and_score(prompts)
        rollout = self.build_rollout(samples, scored)
        if not (values_in_update and self.values_deferred(rollout.size)):
            if self.critic is not None:
                rollout.old_values = self.critic_values(rollout.sequences, rollout.attention_mask)
            rollout.advantages, rollout.returns = self.estimator(rollout)
        metrics.update(self.rollout_metrics(rollout, samples, scored))
        return rollout, samples, metrics

    @property
    def old_logps_from_engine(self) -> bool:
        """The old log-probs are the engine's (``rollout.logps_from_generation``; not with a
        shared value head, whose values need the trainer's forward anyway: there the engine's
        log-probs are only measured against that forward's, ``rollout/logp_diff_*``)."""
        return self.recipe.rollout.logps_from_generation and self.value_head is None

    def sample_rollout(self, prompts: list[str], seed: int) -> Samples:
        """``rollout.samples_per_prompt`` completions of each prompt from the current policy
        with the run's engine (``rollout.engine``, built once): the one place the online
        trainer samples (a sharded policy, FSDP or ZeRO-3, holds its full weights while it
        does, so an engine that copies them gets them whole). The engine returns its sampled
        tokens' log-probs with ``rollout.logps_from_generation`` (the old log-probs; with a
        shared value head, only to measure the mismatch against the trainer's, whose forward
        that head runs anyway), when ``rollout.tis_cap`` weighs them, and always from an engine
        that samples with its own copy of the weights (vLLM) when it samples from logits /
        temperature, so that the mismatch with the trainer's log-probs is logged every
        rollout."""
        cfg = self.recipe.rollout
        policy = self.unwrapped()
        with (
            engines.full_weights_for_generation(policy, cfg.gather_zero3_weights),
            self.accelerator.autocast(),
        ):
            engine = self.rollout_engine(policy)
            # measured only where the engine's log-probs are those of logits / temperature
            # (no top-k / top-p truncation) as the trainer's are; rollouts have no penalties
            plain = not (cfg.top_k or cfg.top_p < 1.0)
            with_logps = (
                cfg.logps_from_generation
                or cfg.tis_cap > 0
                or (engine.samples_from_a_copy and plain)
            )
            length = self.recipe.data.max_prompt_length
            samples = engine.sample(
                prompts, cfg, seed, max_prompt_length=length, with_logps=with_logps
            )
            if cfg.engine.sleep:
                engine.sleep()
            return samples

    def rollout_engine(self, policy: nn.Module) -> RolloutEngine:
        """The run's engine, built at the first rollout and given the policy's weights whenever
        they changed since (after the previous batch's optimiser steps, after a resume):
        syncing before a rollout rather than after each of the batch's optimiser steps gives
        the engine the same weights for every rollout with one copy instead of several."""
        if self._engine is None:
            self._engine = build_engine(
                policy, self.tokenizer, self.device, self.recipe.rollout.engine
            )
        else:
            if self.recipe.rollout.engine.sleep:
                self._engine.wake_up()
            if self._engine_stale:
                self._engine.sync_weights(policy)
        self._engine_stale = False
        return self._engine

    def close_rollout_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def sample_and_score(self, prompts: list[str]) -> tuple[Samples, Scored, dict[str, float]]:
        """Samples of ``prompts`` and their scores. With ``rollout.dynamic_sampling`` (DAPO,
        arXiv 2503.14476, sec. 3.2) the groups whose k scores are all equal are dropped and
        further rounds sample as many fresh training prompts until the batch is full again
        (at most ``rollout.dynamic_sampling_tries`` rounds; then dropped groups top it up)."""
        seed = self.recipe.seed * 1_000_003 + self.step
        samples = self.sample_rollout(prompts, seed)
        scored = self.score(samples)
        if not self.recipe.rollout.dynamic_sampling:
            return samples, scored, {}
        k, wanted = self.recipe.rollout.samples_per_prompt, len(prompts)
        kept: list[tuple[Samples, Scored]] = []
        dropped: list[tuple[Samples, Scored]] = []
        have, first_kept = 0, None
        for round_ in range(self.recipe.rollout.dynamic_sampling_tries):
            if round_ > 0:
                samples = self.sample_rollout(
                    self.refill_prompts(wanted, round_), seed + round_ * 10**9
                )
                scored = self.score(samples)
            informative = scored.scores.reshape(-1, k).std(dim=1) > 0
            first_kept = float(informative.float().mean()) if first_kept is None else first_kept
            groups = informative.nonzero().flatten().tolist()[: wanted - have]
            rest = (~informative).nonzero().flatten().tolist()
            kept.append(_select(samples, scored, groups, k))
            dropped.append(_select(samples, scored, rest, k))
            have += len(groups)
            # every process runs the same rounds (a sharded policy gathers its weights for each
            # generation, a collective): stop when no process is short
            short = torch.tensor(float(wanted - have), device=self.device)
            if float(self.accelerator.reduce(short, reduction="sum")) == 0:
                break
        while have < wanted:  # out of tries: dropped groups (zero advantage) fill the batch
            part = dropped.pop(0)
            take = min(len(part[0].prompts), wanted - have)
            kept.append(_select(part[0], part[1], list(range(take)), k))
            have += take
        parts = [part for part in kept if part[0].prompts]
        samples = concat_samples([p[0] for p in parts], self.tokenizer.pad_token_id)
        scored = Scored(
            *(torch.cat([getattr(p[1], f) for p in parts]) for f in ("rewards", "raw", "scores"))
        )
        metrics = {
            "rollout/informative_groups": first_kept or 0.0,
            "rollout/sampling_rounds": float(round_ + 1),
        }
        return samples, scored, metrics

    def refill_prompts(self, n: int, round_: int) -> list[str]:
        """``n`` training prompts for dynamic sampling's round ``round_`` of this step, drawn
        by a generator seeded by the seed, the step, the round and the process (so a resumed
        run draws the same)."""
        generator = torch.Generator().manual_seed(
            ((self.recipe.seed * 1_000_003 + self.step) * 31 + round_) * 1009
            + self.accelerator.process_index
        )
        order = torch.randperm(len(self.train_examples), generator=generator)[:n]
        return [str(self.train_examples[int(i)]["prompt"]) for i in order]

    def build_rollout(self, samples: Samples, scored: Scored) -> Rollout:
        """The rollout record of scored samples: the sampling policy's and the reference's
        log-probs, the regulariser's penalty and the token rewards (advantages and a separate
        critic's values are left to the caller)."""
        cfg = self.recipe
        device = self.device
        seq = samples.sequences.to(device)
        attn = samples.attention_mask.to(device)
        mask = samples.completion_mask.to(device)[:, 1:].float()  # [R, T-1]: token t+1's mask
        # completions start after the prompt block: no logits at the prompt's positions
        first = max(samples.prompt_width - 1, 0)
        engine_logps = samples.logps.to(device) if samples.logps is not None else None
        from_engine = engine_logps is not None and self.old_logps_from_engine
        old_values: Tensor | None = None
        if engine_logps is not None and from_engine:
            old_logps = engine_logps
        else:  # with a shared value head its values come with the same forward
            old_logps, old_values = self.policy_forward(seq, attn, grad=False, first=first)
        tis_weights = None
        if engine_logps is not None and cfg.rollout.tis_cap > 0:
            tis_weights = truncated_importance_weights(
                old_logps, engine_logps, mask, cfg.rollout.tis_cap
            )
        # the reference and the critic run under the same autocast as the policy: otherwise a
        # bf16 / fp16 run would see a KL that is only rounding at the first step
        if self.penalised or self.loss_needs_reference:
            with self.reference_forward(), self.accelerator.autocast():
                ref_logps = rollout_token_logps(
                    self.reference_model(), seq, attn, cfg.rollout.temperature, first
                )
        else:  # coefficient 0: no reference forward; the penalty is 0 and the KL not measured
            ref_logps = old_logps
        scores = scored.scores.to(device)
        penalty = self.regulariser.penalty(old_logps, ref_logps, mask) * mask
        in_reward = cfg.loss.penalty_in == "reward"
        last = (samples.last_token_index().to(device) - 1).clamp(min=0)  # column of the last token
        rows = torch.arange(seq.shape[0], device=device)
        token_rewards = -self.kl_ctl.value * penalty if in_reward else torch.zeros_like(penalty)
        token_rewards[rows, last] += scores
        truncated = ~samples.ended_with_eos(self.tokenizer.eos_token_id).to(device)
        loss_mask = mask * (~truncated).unsqueeze(-1) if cfg.rollout.mask_truncated else mask
        return Rollout(
            sequences=seq,
            attention_mask=attn,
            mask=mask,
            old_logps=old_logps,
            ref_logps=ref_logps,
            old_values=old_values,
            advantages=None,
            returns=None,
            scores=scores,
            rewards=scored.rewards.to(device),
            reward_weights=self.reward_weights.to(device),
            penalty=penalty,
            token_rewards=token_rewards,
            last_column=last,
            kl=(kl_penalty(old_logps, ref_logps, "k1") * mask).sum(-1),  # [R] sequence k1 KL
            truncated=truncated,
            loss_mask=loss_mask,
            group_size=cfg.rollout.samples_per_prompt,
            first=first,
            engine_logps=engine_logps,
            old_from_engine=from_engine,
            tis_weights=tis_weights,
            mismatch_pending=from_engine,
        )

    def rollout_metrics(
        self, rollout: Rollout, samples: Samples, scored: Scored
    ) -> dict[str, float]:
        """The rollout's metrics (ALGORITHMS.md section 3), each reward's mean with several, and
        on the world the gold reward and the mean length of correct and incorrect completions."""
        coef = self.kl_ctl.value
        penalty_sum = rollout.penalty.sum(-1)
        metrics = {
            "objective/kl_coef": float(coef),
            "objective/penalty": float(penalty_sum.mean()),
            "objective/scores": float(scored.raw.mean()),  # the scorer's own, the proxy reward
            "objective/rlhf_reward": float((rollout.scores - coef * penalty_sum).mean()),
            "val/num_eos_tokens": float((~rollout.truncated).float().sum()),
            "objective/length": float(rollout.lengths.mean()),
        }
        names = getattr(self.scorer, "names", None)
        if names is not None:
            for name, column in zip(names, scored.rewards.T, strict=True):
                metrics[f"objective/rewards/{name}"] = float(column.mean())
        if self.penalised:  # without a reference forward there is no KL to report
            metrics["objective/kl"] = float(rollout.kl.mean())
        if rollout.engine_logps is not None and not rollout.old_from_engine:
            # the trainer's old log-probs against the engine's, every token of the rollout
            mismatch = logp_mismatch(rollout.old_logps, rollout.engine_logps, rollout.mask)
            metrics.update({f"rollout/{k}": float(v) for k, v in mismatch.items()})
        if rollout.tis_weights is not None:
            weights = rollout.tis_weights[rollout.mask.bool()]
            metrics["rollout/tis_weight_mean"] = float(weights.mean()) if weights.numel() else 1.0
            capped = (weights >= self.recipe.rollout.tis_cap).float()
            metrics["rollout/tis_capped"] = float(capped.mean()) if weights.numel() else 0.0
        if self.world is not None:
            gold = self.world.gold_reward(samples.flat_prompts, samples.flat_completions)
            metrics["objective/gold"] = float(gold.mean())
            # "correct": the better half of the batch under the gold reward
            bias = length_by_correctness(rollout.lengths.cpu(), gold, gold.median())
            metrics.update({f"objective/{k}": v for k, v in bias.items()})
        return metrics

    def policy_forward(
        self, seq: Tensor, attn: Tensor, grad: bool = True, first: int = 0
    ) -> tuple[Tensor, Tensor | None]:
        """[R, T-1] log-probs at the sampling temperature (0 before column ``first``, whose
        logits are never computed) and, with a shared head, values. With several samples per
        prompt and ``data.layout: packed`` each prompt is computed once for its group
        (:func:`prefopt.models.generation.shared_prompt_logits`)."""
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        temperature = self.recipe.rollout.temperature
        shared = (
            self.recipe.data.layout == "packed"
            and self.value_head is None
            and self.recipe.rollout.samples_per_prompt > 1
            and first > 0
        )
        with ctx, self.accelerator.autocast():
            values = None
            if shared:
                kept, index, targets = shared_prompt_logits(self.model, seq, attn, first + 1)
                kept = kept.float() / temperature
                flat = index.flatten()
                picked = kept[flat, targets.flatten()] - torch.logsumexp(kept, dim=-1)[flat]
                logps = pad_columns(picked.reshape(index.shape), first)
            else:
                kwargs: dict[str, Any] = {}
                if first > 0 and takes_logits_to_keep(self.model):
                    kwargs["logits_to_keep"] = seq.shape[1] - first
                out = self.model(
                    input_ids=seq,
                    attention_mask=attn,
                    position_ids=position_ids(attn),
                    use_cache=False,
                    output_hidden_states=self.value_head is not None,
                    **kwargs,
                )
                logits = out.logits[:, :-1] if kwargs else out.logits[:, first:-1]
                if temperature != 1.0:
                    logits = logits / temperature
                logps = pad_columns(token_logps(logits, seq[:, first + 1 :]), first)
                if self.value_head is not None:
                    values = self.value_head(out.hidden_states[-1])[:, :-1]
        if grad:  # the policy's entropy at each completion position, for the metrics
            with torch.no_grad():
                if shared:
                    entropy = entropy_from_logits(kept.detach())[index.flatten()]
                    self._last_entropy = pad_columns(entropy.reshape(index.shape), first)
                else:
                    self._last_entropy = pad_columns(entropy_from_logits(logits.detach()), first)
        return logps, values

    def critic_values(self, seq: Tensor, attn: Tensor) -> Tensor:
        """[R, T-1] the separate critic's values (column j: after token j), under the run's
        autocast like the policy."""
        assert self.critic is not None
        with self.accelerator.autocast():
            return self.critic(input_ids=seq, attention_mask=attn)[:, :-1]

    def optimise(self, rollout: Rollout) -> dict[str, list[float]]:
        """``loss.epochs`` passes of minibatches over one rollout batch."""
        cfg = self.recipe.loss
        n = rollout.size
        size = min(cfg.minibatch_size, n)
        metrics: dict[str, list[float]] = {}
        generator = torch.Generator().manual_seed(self.recipe.seed * 7919 + self.step)
        k = rollout.group_size
        for _ in range(cfg.epochs):
            if getattr(self.loss_fn, "pairs", False):  # a prompt's samples stay together
                groups = torch.randperm(n // k, generator=generator)
                order = (groups[:, None] * k + torch.arange(k)).flatten()
            else:
                order = torch.randperm(n, generator=generator)
            for start in range(0, n - size + 1, size):
                idx = order[start : start + size].to(self.device)
                for name, value in self.update(rollout, idx).items():
                    metrics.setdefault(name, []).append(value)
        return metrics

    def update(self, rollout: Rollout, idx: Tensor) -> dict[str, float]:
        """One optimiser step on the minibatch ``idx`` of ``rollout``; returns its metrics."""
        seq, attn, mask = rollout.sequences[idx], rollout.attention_mask[idx], rollout.mask[idx]
        critic_values = self.critic_values(seq, attn) if self.critic is not None else None
        if rollout.advantages is None:  # deferred: this minibatch is the whole rollout
            assert critic_values is not None
            self.settle_advantages(rollout, idx, critic_values.detach())
        assert rollout.advantages is not None
        logps, values = self.policy_forward(seq, attn, grad=True, first=rollout.first)
        loss_mask, tokens = rollout.loss_mask[idx], self.global_tokens(rollout.loss_mask[idx])
        extra: dict[str, Tensor] = {}
        if self.loss_needs_reference:
            extra["ref_logps"] = rollout.ref_logps[idx]
        if rollout.tis_weights is not None:
            extra["token_weights"] = rollout.tis_weights[idx]
        out = self.loss_fn(
            logps, rollout.old_logps[idx], rollout.advantages[idx], loss_mask, tokens, **extra
        )
        loss = out.loss
        metrics = {k: float(v) for k, v in out.metrics.items()}
        if rollout.mismatch_pending:
            # no optimiser step since the rollout: this forward's log-probs are the trainer's
            # own old log-probs of these rows, against the engine's (the old ones here)
            mismatch = logp_mismatch(logps, rollout.old_logps[idx], mask)
            metrics.update({f"rollout/{k}": float(v) for k, v in mismatch.items()})
            rollout.mismatch_pending = False
        metrics["loss/policy"] = float(out.loss.detach())
        if self.recipe.loss.penalty_in == "loss":  # aggregated as the policy loss's terms
            penalty = self.regulariser.penalty(logps, rollout.ref_logps[idx], loss_mask)
            c = self.loss_fn.cfg
            term = self.kl_ctl.value * token_aggregate(
                penalty, loss_mask, c.aggregate, c.constant, tokens
            )
            loss = loss + term
            metrics["loss/penalty"] = float(term.detach())
        if rollout.returns is not None:
            assert rollout.old_values is not None
            returns, old_values = rollout.returns[idx], rollout.old_values[idx]
            values = critic_values if critic_values is not None else values  # else: shared head
            assert values is not None
            vout = self.loss_fn.value_loss(values, old_values, returns, mask)
            metrics["loss/value"] = float(vout.loss.detach())
            metrics.update({k: float(v) for k, v in vout.metrics.items()})
            metrics["val/explained_variance"] = float(
                explained_variance(values.detach(), returns, mask)
            )
            self.check_finite(vout.loss, "the value loss of a PPO minibatch")
            if self.critic is not None:
                self.check_finite(loss, "a PPO minibatch")
                self._critic_step(self.recipe.loss.vf_coef * vout.loss)
            else:
                loss = loss + self.recipe.loss.vf_coef * vout.loss
        self.check_finite(loss, "a PPO minibatch")
        self.accelerator.backward(loss)
        metrics["objective/entropy"] = float(masked_mean(self._last_entropy, mask))
        norm = self._optimizer_step(schedule=False)
        self._engine_stale = True  # the engine samples these weights at the next rollout
        if norm is not None:
            metrics["grad_norm"] = norm
        metrics["loss"] = float(loss.detach())
        return metrics

    def global_tokens(self, mask: Tensor) -> Tensor | None:
        """The divisor of ``loss.aggregate: global_token_mean`` (DAPO's token-level mean over
        the global batch): the minibatch's valid tokens summed over every process, divided by
        the number of processes (whose gradients data parallelism averages); None otherwise."""
        if self.loss_fn.cfg.aggregate != "global_token_mean":
            return None
        total = self.accelerator.reduce(mask.sum().detach(), reduction="sum")
        return total / self.accelerator.num_processes

    def settle_advantages(self, rollout: Rollout, idx: Tensor, values: Tensor) -> None:
        """A deferred rollout's values (the critic's, on the rows ``idx``: all of them, in any
        order) and its advantages and returns, filled in place."""
        if not torch.equal(idx.sort().values.cpu(), torch.arange(rollout.size)):
            raise TrainingError("a rollout with deferred values needs one minibatch of all rows")
        full = torch.empty_like(rollout.mask)
        full[idx] = values.to(full.dtype)
        rollout.old_values = full
        rollout.advantages, rollout.returns = self.estimator(rollout)

    def _critic_step(self, loss: Tensor) -> None:
        assert self.critic is not None and self.critic_optimizer is not None
        self.accelerator.backward(loss)
        if self.cfg.max_grad_norm is not None:
            self.accelerator.clip_grad_norm_(self.critic.parameters(), self.cfg.max_grad_norm)
        self.critic_optimizer.step()
        self.critic_optimizer.zero_grad(set_to_none=True)

    # ---------------------------------------------------------------- checkpoints

    def extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"kl_controller": self.kl_ctl.state_dict()}
        if self.critic is not None and self.critic_optimizer is not None:
            critic = self.accelerator.unwrap_model(self.critic)
            state["critic"] = {k: v.detach().cpu() for k, v in critic.state_dict().items()}
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        if self.value_head is not None:
            state["value_head"] = {
                k: v.detach().cpu() for k, v in self.value_head.state_dict().items()
            }
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._engine_stale = True  # resumed weights: the engine takes them at the next rollout
        if "kl_controller" not in state:
            raise TrainingError("the checkpoint has no KL controller state: not an online run")
        self.kl_ctl.load_state_dict(state["kl_controller"])
        if self.critic is not None:
            if "critic" not in state:
                raise TrainingError("the checkpoint has no critic but this run has one")
            cast(nn.Module, self.accelerator.unwrap_model(self.critic)).load_state_dict(
                state["critic"]
            )
            assert self.critic_optimizer is not None
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        if self.value_head is not None:
            if "value_head" not in state:
                raise TrainingError("the checkpoint has no value head but this run has one")
            self.value_head.load_state_dict(state["value_head"])

    # ---------------------------------------------------------------- outputs

    def train(self) -> dict[str, Any]:
        try:
            return super().train()
        finally:
            self.close_rollout_engine()

    def final_evaluation(self) -> dict[str, Any]:
        self.close_rollout_engine()  # the evaluation samples with eval.engine: free this one
        results = super().final_evaluation()
        if self.world is not None and self.recipe.eval.enabled:
            from prefopt.eval.pm import pm_divergence

            with engines.full_weights_for_generation(self.unwrapped()):
                divergence = pm_divergence(
                    self.unwrapped(),
                    self.tokenizer,
                    self.scorer,
                    self.world.eval_prompts("test")[: self.recipe.eval.n_prompts],
                    self.recipe.eval,
                    self.device,
                    seed=self.recipe.seed + 104729,
                    max_prompt_length=self.recipe.data.max_prompt_length,
                )
            results.update(divergence)
        if self.is_main:
            from prefopt.eval.plots import overoptimisation_plot

            overoptimisation_plot(self.run_dir / "metrics.jsonl", self.run_dir)
        return results


def _select(samples: Samples, scored: Scored, groups: list[int], k: int) -> tuple[Samples, Scored]:
    """The groups ``groups`` of scored samples (k rollouts each)."""
    rows = torch.tensor([g * k + j for g in groups for j in range(k)], dtype=torch.long)
    return samples.select(groups), Scored(
        scored.rewards[rows], scored.raw[rows], scored.scores[rows]
    )
