"""The online zoo's pieces by hand: policy-loss forms (clip-higher, two-sided clipping, GSPO,
CISPO, SAPO, GMPO), aggregations, GDPO, DAPO's overlong shaping and dynamic sampling, truncated
completions, several rewards, and the estimator registry."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch.testing import assert_close

import prefopt.losses  # noqa: F401  (registers the losses)
from prefopt.config import ConfigError, load_recipe
from prefopt.registry import ADVANTAGES, get_advantage, get_loss, register_advantage
from prefopt.rl.estimators.base import AdvantageConfig, broadcast
from prefopt.rl.estimators.gdpo import gdpo_advantages
from prefopt.rl.length import length_by_correctness, overlong_penalty
from prefopt.rl.ppo import importance_ratio, token_aggregate


def loss(name, logp, old, adv, mask, tokens=None, **cfg):
    entry = get_loss(name)
    return entry.build(entry.config_cls(**cfg))(logp, old, adv, mask, tokens=tokens)


def ratios(*values):
    """log-probs whose ratio to old log-probs of 0 are ``values``, as one row."""
    return torch.log(torch.tensor([values])).requires_grad_(True), torch.zeros(1, len(values))


def test_clip_higher_by_hand():
    """A = +1, ratios 0.5, 1, 1.25, 1.5: the terms are -min(r, clip(r)). With (0.2, 0.28):
    -(0.5 + 1 + 1.25 + 1.28) / 4 = -1.0075; symmetric 0.2: -(0.5 + 1 + 1.2 + 1.2) / 4 = -0.975."""
    logp, old = ratios(0.5, 1.0, 1.25, 1.5)
    adv, mask = torch.ones(1), torch.ones(1, 4)
    out = loss("ppo", logp, old, adv, mask, clip_high=0.28)
    assert_close(out.loss, torch.tensor(-1.0075))
    assert_close(loss("ppo", logp, old, adv, mask).loss, torch.tensor(-0.975))
    out.loss.backward()  # the gradient: -r / 4 where r is unclipped (0.5, 1, 1.25), 0 at 1.5
    assert_close(logp.grad, torch.tensor([[-0.125, -0.25, -0.3125, 0.0]]))


def test_two_sided_clipping_by_hand():
    """A = -1, ratios 0.5, 1, 2, 4, delta 3: terms max(min(r, 3), clip(r, 0.8, 1.2)) = 0.8, 1,
    2, 3 -> 1.7 (no delta: 4 for the last -> 1.95); the capped token has no gradient."""
    logp, old = ratios(0.5, 1.0, 2.0, 4.0)
    adv, mask = -torch.ones(1), torch.ones(1, 4)
    out = loss("ppo", logp, old, adv, mask, delta=3.0)
    assert_close(out.loss, torch.tensor(1.7))
    assert_close(loss("ppo", logp, old, adv, mask).loss, torch.tensor(1.95))
    out.loss.backward()
    assert_close(logp.grad, torch.tensor([[0.0, 0.25, 0.5, 0.0]]))


def test_gspo_ratio_is_one_number_per_sequence():
    """Row 0: log-ratios (log 2, 0) and a masked 5.0 -> s = exp(log 2 / 2) = sqrt 2; row 1:
    (-0.1, -0.3, 0.1) -> exp(-0.1). With clip (0.5, 0.5) neither binds: terms -sqrt 2 (A = 1)
    and +exp(-0.1) (A = -1), mean -0.2546879. At GSPO's (3e-4, 4e-4) both bind: -1.0004 and
    0.9997 -> -0.00035."""
    logp = torch.tensor([[math.log(2), 0.0, 5.0], [-0.1, -0.3, 0.1]], requires_grad=True)
    old = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    s = importance_ratio(logp, old, mask, "sequence")
    assert s.shape == (2, 1)
    assert_close(s.detach(), torch.tensor([[math.sqrt(2)], [math.exp(-0.1)]]))
    adv = torch.tensor([1.0, -1.0])
    wide = loss("gspo", logp, old, adv, mask, clip=0.5, clip_high=0.5)
    assert_close(wide.loss, torch.tensor((-math.sqrt(2) + math.exp(-0.1)) / 2))
    wide.loss.backward()  # ds/dlogp_t = s / |y| on every valid token of the row, 0 off it
    row0, row1 = -math.sqrt(2) / 2 / 2, math.exp(-0.1) / 3 / 2
    assert_close(logp.grad, torch.tensor([[row0, row0, 0.0], [row1, row1, row1]]))
    assert_close(loss("gspo", logp, old, adv, mask).loss, torch.tensor(-0.00035))


def test_cispo_by_hand():
    """logp (-1, -2, -0.5) at ratios 0.5, 1, 2, A = 2, cap 1.5: weights (0.5, 1, 1.5),
    loss mean(-w A logp) = -(2/3)(-0.5 - 2 - 0.75) = 2.1666667; the weight is not
    differentiated, so the gradient is -w A / 3 = (-1/3, -2/3, -1): a clipped token keeps one."""
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    old = logp.detach() - torch.log(torch.tensor([[0.5, 1.0, 2.0]]))
    mask = torch.ones(1, 3)
    out = loss("cispo", logp, old, torch.tensor([2.0]), mask, ratio_max=1.5)
    assert_close(out.loss, torch.tensor(13 / 6))
    out.loss.backward()
    assert_close(logp.grad, torch.tensor([[-1 / 3, -2 / 3, -1.0]]))
    # global_token_mean: the divisor is the tokens of the step over processes (here 6)
    halved = loss("cispo", logp, old, torch.tensor([2.0]), mask, tokens=6.0, ratio_max=1.5)
    assert_close(halved.loss, torch.tensor(13 / 12))


def test_sapo_by_hand():
    """At ratio 1 the gate is sigmoid(0) 4 / tau = 2 / tau: A = +1 (tau 1) -> -2, A = -1
    (tau 1.05) -> +1.9047619; mean over the two sequences -0.0476190. The gradient on policy is
    -A (the gate's slope 4 sigmoid'(0) = 1), halved by the mean. At ratio 2, A = 1: gate
    4 sigmoid(1) = 2.9242344, gradient -slope * r = -4 sigmoid(1) sigmoid(-1) * 2 = -1.5728955."""
    logp = torch.zeros(2, 1, requires_grad=True)
    out = loss("sapo", logp, torch.zeros(2, 1), torch.tensor([1.0, -1.0]), torch.ones(2, 1))
    assert_close(out.loss, torch.tensor((-2 + 2 / 1.05) / 2))
    out.loss.backward()
    assert_close(logp.grad, torch.tensor([[-0.5], [0.5]]))
    logp, old = ratios(2.0)
    out = loss("sapo", logp, old, torch.ones(1), torch.ones(1, 1))
    assert_close(out.loss, torch.tensor(-4 * torch.sigmoid(torch.tensor(1.0)).item()))
    out.loss.backward()
    sig = torch.sigmoid(torch.tensor(1.0)).item()
    assert_close(logp.grad, torch.tensor([[-4 * sig * (1 - sig) * 2]]))


def test_gmpo_by_hand():
    """Row 0, A = +1, log-ratios (0.1, 0.8, -0.2), clip 0.4 in log space: min with the clamped
    (0.1, 0.4, -0.2) -> mean 0.1, s = e^0.1, term -1.1051709. Row 1, A = -1, (0.1, -0.8, 0.2):
    the pessimistic side is the larger ratio, (0.1, -0.4, 0.2) -> mean -1/30, s = e^(-1/30),
    term +0.9672161. Mean over sequences -0.0689774."""
    logp = torch.tensor([[0.1, 0.8, -0.2], [0.1, -0.8, 0.2]], requires_grad=True)
    out = loss("gmpo", logp, torch.zeros(2, 3), torch.tensor([1.0, -1.0]), torch.ones(2, 3))
    expected = (-math.exp(0.1) + math.exp(-1 / 30)) / 2
    assert_close(out.loss, torch.tensor(expected))
    out.loss.backward()  # the clipped token (0.8, then -0.8) has no gradient
    g0, g1 = -math.exp(0.1) / 3 / 2, math.exp(-1 / 30) / 3 / 2
    assert_close(logp.grad, torch.tensor([[g0, 0.0, g0], [g1, 0.0, g1]]))


def test_global_token_mean_divides_by_the_steps_tokens():
    """Terms (1, 2 | 3, masked 4): the sum 6 over 3 local tokens is 2 (token_mean); over 6
    tokens of the step (two processes of 3 each: 6 / 2 = 3 per process) it is 2 as well, and
    over a global 12 (6 per process) it is 1."""
    terms, mask = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert_close(token_aggregate(terms, mask, "global_token_mean"), torch.tensor(2.0))
    assert_close(token_aggregate(terms, mask, "global_token_mean", tokens=3.0), torch.tensor(2.0))
    assert_close(token_aggregate(terms, mask, "global_token_mean", tokens=6.0), torch.tensor(1.0))


def test_gdpo_normalises_each_reward_in_its_group():
    """k = 3, two rewards: r1 (1, 2, 3) -> (-1, 0, 1); r2 (10, 10, 40), mean 20, std sqrt 300
    -> (-1, -1, 2) / sqrt 3. Sum (-1.5773503, -0.5773503, 2.1547005), mean 0, std
    sqrt(3.7320508) -> whitened (-0.8164966, -0.2988585, 1.1153551). GRPO on the sum
    (11, 12, 43) gives (-0.5972, -0.5534, 1.1507) instead: r2's spread drowns r1."""
    rewards = torch.tensor([[[1.0, 10.0], [2.0, 10.0], [3.0, 40.0]]])
    out = gdpo_advantages(rewards, torch.ones(2), eps=0.0)
    assert_close(out, torch.tensor([[-0.8164966, -0.2988585, 1.1153551]]))


def test_overlong_shaping_and_length_by_correctness_by_hand():
    """L_max 10, L_cache 4: lengths 5, 6 free; 7 -> -0.25, 8 -> -0.5, 10 -> -1, 11 -> -1.
    Gold (1, -1, 0.5, -2) for lengths (2, 4, 6, 8): correct (2 + 6) / 2 = 4, incorrect 6."""
    lengths = torch.tensor([5, 6, 7, 8, 10, 11])
    assert_close(overlong_penalty(lengths, 10, 4), torch.tensor([0, 0, -0.25, -0.5, -1, -1.0]))
    assert_close(overlong_penalty(lengths, 10, 4, 2.0)[3], torch.tensor(-1.0))
    bias = length_by_correctness(torch.tensor([2, 4, 6, 8]), torch.tensor([1.0, -1, 0.5, -2]))
    assert bias == {"correct_fraction": 0.5, "length_correct": 4.0, "length_incorrect": 6.0}
    # one threshold per sample (the reference's gold on the same prompt): only row 2 beats its
    against = torch.tensor([2.0, 0.0, 0.0, -1.0])
    bias = length_by_correctness(
        torch.tensor([2, 4, 6, 8]), torch.tensor([1.0, -1, 0.5, -2]), against
    )
    assert bias == pytest.approx(
        {"correct_fraction": 0.25, "length_correct": 6.0, "length_incorrect": 14 / 3}
    )


def test_the_estimator_registry_declares_critic_and_group():
    assert get_advantage("gae").needs_critic and not get_advantage("gae").needs_group
    for name in ("rloo", "grpo", "reinforce_pp_baseline", "gdpo"):
        assert get_advantage(name).needs_group and not get_advantage(name).needs_critic
    assert not get_advantage("reinforce_pp").needs_group


def test_a_new_estimator_is_one_registration(monkeypatch):
    """An estimator registered from outside (as a user's module would) is chosen, validated
    and gated by the recipe with no change anywhere else."""

    @dataclass
    class SignConfig(AdvantageConfig):
        name: str = "sign"
        scale: float = 1.0

        def validate(self):
            return [] if self.scale > 0 else [f"advantage.scale must be > 0, got {self.scale}"]

    monkeypatch.setitem(ADVANTAGES, "sign", ADVANTAGES.get("sign"))  # removed afterwards
    ADVANTAGES.pop("sign")

    @register_advantage("sign", SignConfig, needs_group=True)
    class Sign:
        def __init__(self, cfg):
            self.cfg = cfg

        def __call__(self, rollout):
            return broadcast(self.cfg.scale * rollout.scores.sign(), rollout.mask), None

    recipe = load_recipe("grpo", ["advantage.name=sign", "advantage.scale=2.0"])
    assert recipe.advantage.scale == 2.0
    with pytest.raises(ConfigError, match="advantage.scale must be > 0"):
        load_recipe("grpo", ["advantage.name=sign", "advantage.scale=-1.0"])
    with pytest.raises(ConfigError, match="samples_per_prompt >= 2"):
        load_recipe("grpo", ["advantage.name=sign", "rollout.samples_per_prompt=1"])


def test_online_recipe_errors_name_the_key():
    with pytest.raises(
        ConfigError, match=r"advantage.grpo_scale moved: use advantage.scale_rewards"
    ):
        load_recipe("grpo", ["advantage.grpo_scale=none"])
    with pytest.raises(ConfigError, match="unknown advantage estimator 'gpro'"):
        load_recipe("grpo", ["advantage.name=gpro"])
    with pytest.raises(ConfigError, match="reward.components replaces reward.scorer"):
        load_recipe("grpo", ["reward.components=[{scorer: world}]"])
    with pytest.raises(ConfigError, match="dynamic_sampling drops groups"):
        load_recipe("ppo", ["rollout.dynamic_sampling=true"])
    with pytest.raises(ConfigError, match="loss.constant"):
        load_recipe("grpo", ["loss.constant=10"])
    with pytest.raises(ConfigError, match="loss.delta"):
        load_recipe("grpo", ["loss.delta=1.1"])
    with pytest.raises(ConfigError, match="reward.overlong_buffer"):
        load_recipe("grpo", ["reward.overlong_buffer=100"])
    # Dr. GRPO's constant is choosable from a recipe
    assert load_recipe("grpo", ["loss.aggregate=constant", "loss.constant=16"]).loss.constant == 16


# ---------------------------------------------------------------- in the trainer


class FlatOnSomePrompts:
    """Scores every completion of a prompt in ``flat`` 1.0 (a group with no spread: zero
    advantage) and any other completion its row number / 10 (a group with spread, inside the
    reward clip)."""

    def __init__(self, flat):
        self.flat = set(flat)

    def score(self, prompts, completions):
        return torch.tensor([1.0 if p in self.flat else i / 10 for i, p in enumerate(prompts)])


def grpo_trainer(tmp_path, tiny_pretrained, *overrides):
    from tests.test_online import online_trainer

    return online_trainer(
        tmp_path, tiny_pretrained, "rollout.samples_per_prompt=2", *overrides, recipe="grpo"
    )


def test_dynamic_sampling_drops_flat_groups_and_refills_the_batch(tmp_path, tiny_pretrained):
    trainer = grpo_trainer(
        tmp_path, tiny_pretrained, "rollout.dynamic_sampling=true", "trainer.batch_size=4"
    )
    prompts = [e["prompt"] for e in trainer.train_examples[:4]]
    trainer.scorer = FlatOnSomePrompts(prompts[:2])
    refill = trainer.refill_prompts(4, 1)
    assert not set(refill[:2]) & set(prompts[:2]), "the refill would be dropped too"
    rollout, samples, metrics = trainer.make_rollout(prompts)
    # round 1 keeps prompts 2 and 3; round 2 (4 fresh prompts) fills the batch with 2 more
    assert samples.prompts == [prompts[2], prompts[3], *refill[:2]]
    assert rollout.size == 8 and rollout.sequences.shape[0] == 8
    assert metrics["rollout/informative_groups"] == 0.5
    assert metrics["rollout/sampling_rounds"] == 2.0
    assert (rollout.scores.reshape(4, 2).std(dim=1) > 0).all()
    # every row's record is consistent with its own sequence after the join
    assert_close(rollout.mask.sum(-1), samples.completion_mask.sum(-1).float())
    # the scores travelled with their groups: round 1's rows 4-7, then round 2's rows 0-3
    ended = samples.ended_with_eos(trainer.tokenizer.eos_token_id)
    expected = torch.tensor([0.4, 0.5, 0.6, 0.7, 0.0, 0.1, 0.2, 0.3]) - 1.0 * (~ended).float()
    assert_close(rollout.scores, expected)


def test_dynamic_sampling_tops_up_with_dropped_groups_when_out_of_tries(tmp_path, tiny_pretrained):
    trainer = grpo_trainer(
        tmp_path,
        tiny_pretrained,
        "rollout.dynamic_sampling=true",
        "rollout.dynamic_sampling_tries=2",
        "trainer.batch_size=4",
    )
    prompts = [e["prompt"] for e in trainer.train_examples]
    trainer.scorer = FlatOnSomePrompts(prompts)  # every group is flat
    rollout, samples, metrics = trainer.make_rollout(prompts[:4])
    assert samples.prompts == prompts[:4]  # the first round's dropped groups, in order
    assert rollout.size == 8 and metrics["rollout/sampling_rounds"] == 2.0
    assert metrics["rollout/informative_groups"] == 0.0
    assert float(rollout.advantages.abs().max()) == 0.0


def test_truncated_completions_are_left_out_of_the_loss(tmp_path, tiny_pretrained):
    trainer = grpo_trainer(tmp_path, tiny_pretrained, "rollout.mask_truncated=true")
    samples, scored, _ = trainer.sample_and_score([e["prompt"] for e in trainer.train_examples[:8]])
    # an untrained policy rarely stops: make rows 0 and 3 end with an EOS at their last token
    eos = trainer.tokenizer.eos_token_id
    last = samples.last_token_index()
    samples.sequences[[0, 3], last[[0, 3]]] = eos
    rollout = trainer.build_rollout(samples, scored)
    expected = torch.ones(rollout.size, dtype=torch.bool)
    expected[[0, 3]] = False
    assert torch.equal(rollout.truncated, expected)
    assert_close(rollout.loss_mask, rollout.mask * (~rollout.truncated)[:, None].float())
    # an advantage changed on a truncated row changes nothing; on a kept row it does
    rollout.advantages, _ = trainer.estimator(rollout)
    logps, _ = trainer.policy_forward(
        rollout.sequences, rollout.attention_mask, first=rollout.first
    )

    def policy_loss():
        out = trainer.loss_fn(logps, rollout.old_logps, rollout.advantages, rollout.loss_mask)
        return out.loss

    before = policy_loss()
    rollout.advantages[1] += 5.0
    assert_close(policy_loss(), before)
    rollout.advantages[0] += 5.0
    assert not torch.allclose(policy_loss(), before)


OBJECTIVES = ("relevance", "length", "fluency", "positivity", "safety")


def test_the_gold_objectives_as_separate_rewards_sum_to_the_gold_reward(tmp_path, tiny_pretrained):
    components = ",".join(f"{{scorer: 'gold:{o}'}}" for o in OBJECTIVES)
    trainer = grpo_trainer(
        tmp_path,
        tiny_pretrained,
        "reward.scorer=null",
        f"reward.components=[{components}]",
        "reward.missing_eos_penalty=null",
        "reward.clip=null",
        "advantage.name=gdpo",
    )
    rollout, samples, metrics = trainer.make_rollout(
        [e["prompt"] for e in trainer.train_examples[:8]]
    )
    gold = trainer.world.gold_reward(samples.flat_prompts, samples.flat_completions)
    assert rollout.rewards.shape == (16, 5)
    assert_close(rollout.rewards.sum(-1), gold)  # weights 1: the five shares sum to gold
    assert_close(rollout.scores, gold)
    for name, column in zip(OBJECTIVES, rollout.rewards.T, strict=True):
        assert metrics[f"objective/rewards/gold:{name}"] == pytest.approx(float(column.mean()))
    # GDPO's advantages: one per completion, whitened over the batch
    per_completion = (rollout.advantages * rollout.mask).sum(-1) / rollout.mask.sum(-1)
    assert float(per_completion.mean()) == pytest.approx(0.0, abs=1e-5)


def test_online_dpo_by_hand():
    """Pair 0 (A +1, -1): chosen row 0, u_c = -3 - (-4) = 1, u_r = -5 - (-4) = -1, z = 0.1 * 2
    -> log(1 + e^-0.2) = 0.5981389. Pair 1 (A -0.5, +0.5): chosen row 3, u_c = -6 - (-5) = -1,
    u_r = 0, z = -0.1 -> log(1 + e^0.1) = 0.7443967. Pair 2 is a tie: left out (and gets no
    gradient). Mean 0.6712678."""
    logps = torch.tensor([[-3.0], [-5.0], [-2.0], [-6.0], [-1.0], [-1.5]], requires_grad=True)
    ref = torch.tensor([[-4.0], [-4.0], [-2.0], [-5.0], [-1.0], [-1.0]])
    adv = torch.tensor([1.0, -1.0, -0.5, 0.5, 0.0, 0.0])
    loss_fn = get_loss("online_dpo").build(get_loss("online_dpo").config_cls())
    out = loss_fn(logps, logps.detach(), adv, torch.ones(6, 1), ref_logps=ref)
    assert_close(
        out.loss, torch.tensor((math.log1p(math.exp(-0.2)) + math.log1p(math.exp(0.1))) / 2)
    )
    assert out.metrics["online_dpo/ties"] == pytest.approx(1 / 3)
    out.loss.backward()
    assert logps.grad[4:].abs().sum() == 0 and logps.grad[:4].abs().min() > 0


def test_online_dpo_keeps_pairs_together_and_runs_the_reference(
    tmp_path, tiny_pretrained, monkeypatch
):
    from tests.test_online import online_trainer

    trainer = online_trainer(
        tmp_path,
        tiny_pretrained,
        "trainer.batch_size=4",
        "loss.minibatch_size=4",
        "loss.epochs=2",
        recipe="online_dpo",
    )
    assert trainer.reference is not None and not trainer.penalised  # coef 0, yet a reference
    seen = []
    update = trainer.update
    monkeypatch.setattr(
        trainer, "update", lambda r, idx: seen.append(idx.tolist()) or update(r, idx)
    )
    prompts = [e["prompt"] for e in trainer.train_examples[:4]]
    rollout, _, _ = trainer.make_rollout(prompts)
    metrics = trainer.optimise(rollout)
    assert len(seen) == 4  # 2 epochs x 2 minibatches of 2 pairs
    for idx in seen:
        pairs = zip(idx[::2], idx[1::2], strict=True)
        assert all(a % 2 == 0 and b == a + 1 for a, b in pairs)
    assert "online_dpo/rewards/margins" in metrics
    # the policy moved: the reference's log-probs (a forward of its own) now differ
    moved, _, _ = trainer.make_rollout(prompts)
    assert not torch.equal(moved.ref_logps, moved.old_logps)


def test_the_gold_evaluation_splits_lengths_by_beating_the_reference():
    """Policy gold (1, 3 | 0, 0), words (2, 4 | 6, 8); the reference's mean gold per prompt 2 and
    0: only the sample with gold 3 beats it -> correct length 4, incorrect (2 + 6 + 8) / 3."""
    from prefopt.eval.gold import PromptStats, split_summary

    def stats(gold, length):
        return PromptStats(
            torch.tensor(gold, dtype=torch.float64),
            torch.tensor(length, dtype=torch.float64),
            torch.ones(2, dtype=torch.float64),
            torch.zeros(5, dtype=torch.float64),
            torch.zeros(2, 2, dtype=torch.float64),
        )

    out = split_summary(
        stats([[1.0, 3.0], [0.0, 0.0]], [[2, 4], [6, 8]]),
        stats([[2.0, 2.0], [1.0, -1.0]], [[1, 1], [1, 1]]),
        OBJECTIVES,
    )
    assert out["correct_fraction"] == 0.25 and out["length_correct"] == 4.0
    assert out["length_incorrect"] == pytest.approx(16 / 3)
