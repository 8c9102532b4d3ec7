"""The online trainer (PPO-RLHF, RLOO, GRPO, REINFORCE++) at tiny size."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from prefopt.pipeline.run import train
from prefopt.trainers.online import OnlineTrainer
from tests.conftest import read_metrics, tiny_recipe, train_until_interrupted

ONLINE = [
    "reward.scorer=world",  # the gold reward: no reward model to train in a test
    "value.init=policy",
    "trainer.batch_size=8",
    "loss.minibatch_size=4",
    "loss.epochs=2",
    "rollout.max_new_tokens=12",
    "trainer.lr=1e-3",
]


def online_trainer(tmp_path, tiny_pretrained, *overrides, recipe="ppo"):
    r = tiny_recipe(
        recipe, tmp_path / "run", f"model.name_or_path={tiny_pretrained}", *ONLINE, *overrides
    )
    return OnlineTrainer(r, tmp_path / "run")


class FixedScorer:
    """Scores every completion 1.0 + its row number / 10, so each row's score is known."""

    def __init__(self):
        self.calls = 0

    def score(self, prompts, completions):
        self.calls += 1
        return torch.arange(len(completions), dtype=torch.float32) / 10 + 1.0


def test_the_score_sits_on_the_last_real_completion_token(tmp_path, tiny_pretrained):
    trainer = online_trainer(tmp_path, tiny_pretrained, "reward.missing_eos_penalty=null")
    trainer.scorer = FixedScorer()
    rollout, samples, _ = trainer.make_rollout([e["prompt"] for e in trainer.train_examples[:8]])
    mask = rollout.mask
    coef = trainer.kl_ctl.value
    expected = -coef * rollout.penalty
    eos = trainer.tokenizer.eos_token_id
    for row in range(mask.shape[0]):
        valid = mask[row].nonzero().flatten()
        last = int(valid[-1])  # column predicting the last completion token
        assert int(rollout.last_column[row]) == last
        seq_col = last + 1  # that token's own column in the sequence
        token = int(samples.sequences[row, seq_col])
        ended = bool(samples.ended_with_eos(eos)[row])
        if ended:
            assert token == eos  # the EOS itself, not the first pad after it
        assert int(samples.completion_mask[row, seq_col + 1 :].sum()) == 0
        if seq_col + 1 < samples.sequences.shape[1]:
            assert int(samples.sequences[row, seq_col + 1]) == trainer.tokenizer.pad_token_id
        row_expected = expected[row].clone()
        row_expected[last] += 1.0 + row / 10
        assert_close(rollout.token_rewards[row], row_expected)
    assert trainer.tokenizer.pad_token_id != eos


def test_the_missing_eos_penalty_fires_only_on_completions_that_never_stopped(
    tmp_path, tiny_pretrained
):
    # 2 new tokens: most completions of an SFT-less tiny model run out before an EOS
    trainer = online_trainer(
        tmp_path, tiny_pretrained, "rollout.max_new_tokens=2", "reward.missing_eos_penalty=-3.0"
    )
    trainer.scorer = FixedScorer()
    samples = trainer.sample(
        trainer.unwrapped(), [e["prompt"] for e in trainer.train_examples[:8]], seed=0
    )
    scores = trainer.scores(samples)
    ended = samples.ended_with_eos(trainer.tokenizer.eos_token_id)
    assert (~ended).any(), "no completion ran out: the test would not exercise the penalty"
    base = torch.arange(len(scores), dtype=torch.float32) / 10 + 1.0
    assert_close(scores, base - 3.0 * (~ended).float())


@pytest.mark.parametrize("from_generation", [False, True])
def test_before_the_first_update_the_ratio_is_one(tmp_path, tiny_pretrained, from_generation):
    trainer = online_trainer(
        tmp_path, tiny_pretrained, f"rollout.logps_from_generation={from_generation}"
    )
    rollout, samples, _ = trainer.make_rollout([e["prompt"] for e in trainer.train_examples[:8]])
    assert (samples.logps is not None) == from_generation
    metrics = trainer.update(rollout, torch.arange(4))
    assert metrics["policy/clipfrac"] == 0.0
    # the old log-probs of generate's own logits: equal to the full forward's up to rounding
    assert metrics["policy/approxkl"] == pytest.approx(
        0.0, abs=1e-10 if not from_generation else 1e-8
    )
    assert metrics["policy/ratio_mean"] == pytest.approx(
        1.0, abs=1e-6 if not from_generation else 1e-5
    )
    # and the update moved the policy: the next minibatch's ratio is no longer 1
    again = trainer.update(rollout, torch.arange(4))
    assert again["policy/approxkl"] > 1e-10


def test_ppo_resumes_mid_training_on_the_same_trajectory(tmp_path, tiny_pretrained, monkeypatch):
    common = [
        f"model.name_or_path={tiny_pretrained}",
        *ONLINE,
        "trainer.max_steps=20",
        "trainer.save_every=10",
        "trainer.batch_size=4",
        "loss.epochs=1",
    ]
    straight, _ = train(tiny_recipe("ppo", tmp_path / "a", *common))
    train_until_interrupted(tiny_recipe("ppo", tmp_path / "b", *common), 10, monkeypatch)
    train(tiny_recipe("ppo", tmp_path / "b", *common, "resume=auto"))
    keys = ("loss", "loss/value", "objective/scores", "objective/kl", "policy/approxkl")
    a = {m["step"]: m for m in read_metrics(tmp_path / "a") if "loss" in m}
    b = {m["step"]: m for m in read_metrics(tmp_path / "b") if "loss" in m}
    for step in range(11, 21):  # steps 11-20 after a resume at step 10 of 20
        for key in keys:
            assert a[step][key] == b[step][key], (step, key)
    # the critic travelled with the checkpoint
    state = torch.load(tmp_path / "b" / "checkpoint-10" / "state.pt", weights_only=True)
    assert {"critic", "critic_optimizer", "kl_controller"} <= set(state["extra"])


@pytest.mark.parametrize("quantized", [False, True])
def test_a_lora_ppo_run_leaves_the_base_weights_unchanged(
    tmp_path, tiny_pretrained, tiny_pretrained_4bit, quantized
):
    # QLoRA too: the 4-bit base on CPU, the adapter-disabled base as the reference
    extra = ["model.quantization=4bit"] if quantized else []
    trainer = online_trainer(
        tmp_path,
        tiny_pretrained_4bit if quantized else tiny_pretrained,
        "model.lora.r=4",
        "model.lora.alpha=8",
        "trainer.max_steps=2",
        *extra,
    )
    assert trainer.reference is None and trainer.reference_uses_adapter
    base = {
        n: p.detach().clone() for n, p in trainer.unwrapped().named_parameters() if "lora" not in n
    }
    adapters = {
        n: p.detach().clone() for n, p in trainer.unwrapped().named_parameters() if "lora_B" in n
    }
    trainer.train()
    after = dict(trainer.unwrapped().named_parameters())
    assert all(torch.equal(after[n], v) for n, v in base.items())
    assert any(not torch.equal(after[n], v) for n, v in adapters.items())


@pytest.mark.parametrize(
    "recipe,extra",
    [
        ("rloo", []),
        ("grpo", []),
        ("reinforce_pp", []),
        ("reinforce_pp", ["advantage.name=reinforce_pp_baseline", "rollout.samples_per_prompt=2"]),
        ("ppo", ["value.mode=shared"]),
        ("ppo_pm", []),
        ("ppo_cpm", []),
    ],
)
def test_every_estimator_and_regulariser_trains(tmp_path, tiny_pretrained, recipe, extra):
    trainer = online_trainer(
        tmp_path,
        tiny_pretrained,
        "trainer.max_steps=2",
        "trainer.batch_size=4",
        *extra,
        recipe=recipe,
    )
    summary = trainer.train()
    assert summary["steps"] == 2
    assert (tmp_path / "run" / "overoptimisation.png").stat().st_size > 0
    record = read_metrics(tmp_path / "run")[-1]
    assert torch.isfinite(torch.tensor(record["loss"]))
    assert ("loss/value" in record) == (trainer.recipe.advantage.name == "gae")
    if recipe == "grpo":
        assert "loss/penalty" in record  # the KL is a loss term, not in the reward


def test_the_critic_starts_as_the_reward_model(tmp_path, tiny_pretrained):
    from prefopt.models.value import value_model_from_reward_model

    _, rm_dir = train(
        tiny_recipe(
            "rm", tmp_path / "rm", f"model.name_or_path={tiny_pretrained}", "trainer.max_steps=2"
        )
    )
    trainer = online_trainer(
        tmp_path, tiny_pretrained, f"reward.scorer={rm_dir}", "value.init=auto"
    )
    assert "reward model" in trainer.summary["online"]["value"]
    critic = trainer.accelerator.unwrap_model(trainer.critic)
    reference = value_model_from_reward_model(rm_dir / "model")
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        values = critic(input_ids=ids, attention_mask=mask)
        rm_score = trainer.scorer.model(input_ids=ids, attention_mask=mask).logits[0, 0]
    assert_close(values, reference(input_ids=ids, attention_mask=mask))
    assert_close(values[0, -1], rm_score)  # the value at the last token is the RM's score


def test_reward_normalisation_makes_the_references_samples_score_mean_0_std_1(
    tmp_path, tiny_pretrained
):
    trainer = online_trainer(
        tmp_path, tiny_pretrained, "reward.normalise=true", "reward.normalise_prompts=16"
    )
    gain, bias = trainer.reward_gain, trainer.reward_bias
    prompts = [e["prompt"] for e in trainer.train_examples[:16]]
    with trainer.reference_forward():
        samples = trainer.sample(trainer.reference_model(), prompts, seed=trainer.recipe.seed - 1)
    normalised = trainer.scorer_scores(samples) * gain + bias
    assert float(normalised.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(normalised.std()) == pytest.approx(1.0, abs=1e-5)
    assert gain != 1.0 and trainer.summary["online"]["reward_gain"] == gain
    # the EOS penalty and the clip apply on the normalised scale, after the gain and bias
    ended = samples.ended_with_eos(trainer.tokenizer.eos_token_id)
    expected = (normalised - 1.0 * (~ended).float()).clamp(-5.0, 5.0)
    assert_close(trainer.scores(samples), expected)


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one precision per process: start and leave a clean state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_a_bf16_run_sees_no_kl_before_its_first_update(
    tmp_path, tiny_pretrained, fresh_accelerator_state
):
    # policy, reference and critic under one autocast: the first rollout's KL is exactly 0
    trainer = online_trainer(tmp_path, tiny_pretrained, "trainer.precision=bf16")
    rollout, _, metrics = trainer.make_rollout([e["prompt"] for e in trainer.train_examples[:8]])
    assert metrics["objective/kl"] == 0.0
    assert float(rollout.penalty.abs().max()) == 0.0


def test_online_recipes_refuse_inconsistent_settings():
    from prefopt.config import ConfigError, load_recipe

    with pytest.raises(ConfigError, match="rollout.samples_per_prompt >= 2"):
        load_recipe("rloo", ["rollout.samples_per_prompt=1"])
    with pytest.raises(ConfigError, match="grad_accum must be 1"):
        load_recipe("ppo", ["trainer.grad_accum=2"])
    with pytest.raises(ConfigError, match="regulariser.name"):
        load_recipe("ppo", ["regulariser.name=entropy"])
    with pytest.raises(ConfigError, match="regulariser.alpha"):
        load_recipe("ppo_cpm", ["regulariser.alpha=2"])


def test_at_a_fixed_coefficient_0_no_reference_is_kept_or_run_and_training_is_unchanged(
    tmp_path, tiny_pretrained, monkeypatch
):
    common = ["trainer.max_steps=2", "trainer.batch_size=4", "regulariser.coef=0.0"]
    trainer = online_trainer(tmp_path / "none", tiny_pretrained, *common, recipe="grpo")
    assert not trainer.penalised and trainer.reference is None  # tiny recipes: eval disabled
    trainer.train()
    without = read_metrics(tmp_path / "none" / "run")
    assert all("objective/kl" not in r for r in without if "loss" in r)

    # the same run forced through the reference forward: the same losses (the penalty is 0)
    monkeypatch.setattr(OnlineTrainer, "penalised", property(lambda self: True))
    forced = online_trainer(tmp_path / "ref", tiny_pretrained, *common, recipe="grpo")
    assert forced.reference is not None
    forced.train()
    with_ref = read_metrics(tmp_path / "ref" / "run")
    assert [r["loss"] for r in with_ref if "loss" in r] == [
        r["loss"] for r in without if "loss" in r
    ]
    kls = [r["objective/kl"] for r in with_ref if "loss" in r]
    assert abs(kls[0]) < 1e-6 and kls[1] != 0.0  # measured: 0 before the first update only


def test_one_epoch_of_one_minibatch_takes_the_critics_values_from_its_update(
    tmp_path, tiny_pretrained, monkeypatch
):
    # the critic's rollout forward is left out and its update's forward gives the values (and
    # so the advantages): the same trajectory as with the rollout forward
    common = ["trainer.max_steps=3", "loss.epochs=1", "loss.minibatch_size=8"]
    trainer = online_trainer(tmp_path / "deferred", tiny_pretrained, *common)
    assert trainer.values_deferred(8) and not trainer.values_deferred(9)
    calls = []
    forward = trainer.critic.forward
    monkeypatch.setattr(
        trainer.critic, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k)
    )
    trainer.train()
    assert len(calls) == 3  # one critic forward per step: the update's
    deferred = [r for r in read_metrics(tmp_path / "deferred" / "run") if "loss" in r]

    monkeypatch.setattr(OnlineTrainer, "values_deferred", lambda self, rows: False)
    plain_trainer = online_trainer(tmp_path / "plain", tiny_pretrained, *common)
    plain_trainer.train()
    plain = [r for r in read_metrics(tmp_path / "plain" / "run") if "loss" in r]
    keys = ("loss", "loss/value", "val/explained_variance", "objective/scores", "objective/kl")
    assert len(plain) == len(deferred) == 3
    for a, b in zip(plain, deferred, strict=True):
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    assert plain[-1]["loss/value"] != plain[0]["loss/value"]  # the critic trained


def test_deferred_values_need_the_whole_rollout_in_one_minibatch(tmp_path, tiny_pretrained):
    trainer = online_trainer(tmp_path, tiny_pretrained, "loss.epochs=1", "loss.minibatch_size=8")
    prompts = [e["prompt"] for e in trainer.train_examples[:8]]
    rollout, _, _ = trainer.make_rollout(prompts, values_in_update=True)
    assert rollout.advantages is None and rollout.old_values is None
    with pytest.raises(Exception, match="one minibatch of all rows"):
        trainer.update(rollout, torch.arange(4))
