"""Rollout engines (prefopt.models.engines): the hf engine, the registry, bad input, the online
trainer's engine log-probs (mismatch metrics, truncated importance sampling)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from prefopt.config import ConfigError, EngineName, EngineSettings, EvalConfig
from prefopt.models.engines import (
    ENGINES,
    build_engine,
    engine_problem,
    recipe_engine_problems,
    sample_once,
)
from prefopt.models.engines.base import RolloutEngine
from prefopt.models.engines.hf import HFEngine
from prefopt.models.generation import generate
from prefopt.rl.mismatch import logp_mismatch, truncated_importance_weights
from tests.conftest import read_metrics, tiny_recipe
from tests.test_online import ONLINE, online_trainer

# GRPO's groups at tiny size: 4 prompts x 2 samples, one minibatch
GROUP = ("rollout.samples_per_prompt=2", "trainer.batch_size=4", "loss.minibatch_size=8")


def problem(settings, model_cfg):
    """The `problem` hook of the fake engine module (this one) that some tests register."""
    return "refuses everything" if settings.max_model_len == 7 else None


class SpyEngine(HFEngine):
    """The hf engine, counting the weight syncs it is asked for."""

    name = "spy"

    def __init__(self, *args):
        super().__init__(*args)
        self.synced: list[torch.nn.Module] = []
        self.closed = False

    def sync_weights(self, model):
        self.synced.append(model)
        super().sync_weights(model)

    def close(self):
        self.closed = True


class CopyEngine(SpyEngine):
    """As an engine with its own copy of the weights (vLLM): the trainer measures it."""

    name = "copy"
    samples_from_a_copy = True

    def __init__(self, *args):
        super().__init__(*args)
        self.asked: list[bool] = []

    def sample(self, prompts, cfg, seed, **kwargs):
        self.asked.append(kwargs.get("with_logps", False))
        return super().sample(prompts, cfg, seed, **kwargs)


@pytest.fixture
def world_policy():
    from prefopt.world import WorldConfig, build_world
    from tests.test_expo import tiny_gpt2

    world = build_world(WorldConfig())
    tokenizer = world.tokenizer()
    return world, tokenizer, tiny_gpt2(3, len(tokenizer), tokenizer=tokenizer)


# ------------------------------------------------------------------ the registry


def test_the_engine_names_of_the_config_are_the_registrys():
    assert set(ENGINES) == {e.value for e in EngineName}


def test_build_engine_gives_the_hf_engine_by_default(world_policy):
    _, tokenizer, model = world_policy
    for settings in (None, EngineSettings(), EngineSettings(name=EngineName.hf)):
        engine = build_engine(model, tokenizer, torch.device("cpu"), settings)
        assert type(engine) is HFEngine and isinstance(engine, RolloutEngine)
        assert engine.model is model and engine.name == "hf"


def test_an_unknown_engine_name_lists_the_known_ones(world_policy):
    _, tokenizer, model = world_policy
    with pytest.raises(ValueError, match="unknown rollout engine 'sglang'; known: hf, vllm"):
        build_engine(model, tokenizer, torch.device("cpu"), EngineSettings(name="sglang"))
    assert engine_problem(EngineSettings(name="sglang"), None, "rollout.engine") == (
        "rollout.engine.name: unknown rollout engine 'sglang'; known: hf, vllm"
    )


def test_engine_problem_names_a_missing_engine_module_and_asks_the_engines_own_check(
    monkeypatch,
):
    monkeypatch.setitem(ENGINES, "vllm", "prefopt.models.engines.not_there:Engine")
    line = engine_problem(EngineSettings(name=EngineName.vllm), None, "eval.engine")
    with pytest.raises(ValueError, match="engine.name: vllm: the engine module .* not part"):
        build_engine(torch.nn.Linear(1, 1), None, torch.device("cpu"),
                     EngineSettings(name=EngineName.vllm))  # fmt: skip
    assert line == (
        "eval.engine.name: vllm: the engine module prefopt.models.engines.not_there is not part "
        "of this prefopt (not installed or not built yet); use the hf engine"
    )
    # an engine module with a `problem(settings, model_cfg)` function: its line, keyed
    monkeypatch.setitem(ENGINES, "vllm", f"{__name__}:SpyEngine")
    assert engine_problem(EngineSettings(name=EngineName.vllm)) is None
    refused = EngineSettings(name=EngineName.vllm, max_model_len=7)
    assert engine_problem(refused, None, "rollout.engine") == (
        "rollout.engine.name: vllm: refuses everything"
    )
    assert engine_problem(EngineSettings()) is None  # hf: nothing to check


# ------------------------------------------------------------------ the hf engine


def test_the_hf_engine_samples_exactly_what_generate_samples(world_policy):
    """Same seed, prompts and weights: the same tokens, masks, text and log-probs, bit for bit
    (three prompts of different lengths, 3 samples each, in two generate batches)."""
    world, tokenizer, model = world_policy
    prompts = world.eval_prompts("test")[:3]
    cfg = EvalConfig(samples_per_prompt=3, max_new_tokens=8, temperature=0.7, top_k=20,
                     top_p=0.9, batch_size=6)  # fmt: skip
    device = torch.device("cpu")
    direct = generate(model, tokenizer, prompts, cfg, device, 11, 40, with_logps=True)
    engine = build_engine(model, tokenizer, device, cfg.engine)
    through = engine.sample(prompts, cfg, 11, max_prompt_length=40, with_logps=True)
    for field in ("sequences", "attention_mask", "completion_mask", "logps"):
        assert torch.equal(getattr(through, field), getattr(direct, field)), field
    assert through.completions == direct.completions and through.prompts == direct.prompts
    assert through.prompt_width == direct.prompt_width
    once = sample_once(model, tokenizer, prompts, cfg, device, 11, 40)
    assert torch.equal(once.sequences, direct.sequences) and once.logps is None
    # another seed draws other samples (the comparison above could fail)
    other = engine.sample(prompts, cfg, 12, max_prompt_length=40)
    assert not torch.equal(other.sequences, direct.sequences)


def test_the_hf_engine_samples_the_model_it_was_last_given(world_policy):
    """ExPO gives one engine each alpha's model in turn (``sync_weights``)."""
    from tests.test_expo import tiny_gpt2

    world, tokenizer, model = world_policy
    other = tiny_gpt2(4, len(tokenizer), tokenizer=tokenizer)
    prompts = world.eval_prompts("test")[:2]
    cfg = EvalConfig(samples_per_prompt=2, max_new_tokens=6)
    device = torch.device("cpu")
    engine = build_engine(model, tokenizer, device)
    engine.sync_weights(other)
    assert torch.equal(
        engine.sample(prompts, cfg, 0).sequences,
        generate(other, tokenizer, prompts, cfg, device, 0).sequences,
    )


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rollout.engine.name=sglang", "rollout.engine.name"),
        ("eval.engine.name=sglang", "eval.engine.name"),
        ("rollout.engine.gpu_memory_utilization=1.5",
         "rollout.engine.gpu_memory_utilization must be in (0, 1], got 1.5"),
        ("eval.engine.cpu_memory_utilization=0",
         "eval.engine.cpu_memory_utilization must be in (0, 1], got 0"),
        ("rollout.engine.max_model_len=-1", "rollout.engine.max_model_len must be >= 0"),
        ("rollout.tis_cap=0.5", "rollout.tis_cap must be 0 (off) or >= 1, got 0.5"),
    ],
)  # fmt: skip
def test_a_bad_engine_setting_fails_when_the_recipe_loads(override, message):
    with pytest.raises(ConfigError) as err:
        tiny_recipe("ppo", None, override)
    assert any(message in p for p in err.value.problems), err.value.problems


def test_tis_needs_trainer_old_logps_and_a_per_token_loss():
    with pytest.raises(ConfigError, match="set one of the two"):
        tiny_recipe("grpo", None, "rollout.tis_cap=2", "rollout.logps_from_generation=true")
    with pytest.raises(ConfigError, match="loss.name online_dpo has none"):
        tiny_recipe("online_dpo", None, "rollout.tis_cap=2")
    assert tiny_recipe("grpo", None, "rollout.tis_cap=2").rollout.tis_cap == 2.0


def test_a_missing_engine_fails_before_any_model_loads(tmp_path, monkeypatch):
    """rollout.engine / eval.engine naming an engine this prefopt lacks: one line, from the run's
    pre-flight, with no model built and no run folder left behind."""
    import sys

    from prefopt.train import train

    train_module = sys.modules["prefopt.train"]  # prefopt.train is also the function's name

    monkeypatch.setitem(ENGINES, "vllm", "prefopt.models.engines.not_there:Engine")
    built = []
    monkeypatch.setattr(train_module, "trainer_class", lambda r: built.append(r))
    for key in ("rollout.engine", "eval.engine"):
        recipe = tiny_recipe(
            "ppo", tmp_path / key, *ONLINE, f"{key}.name=vllm", "eval.enabled=true"
        )
        with pytest.raises(ConfigError) as err:
            train(recipe, tmp_path / key)
        assert err.value.problems == [
            f"{key}.name: vllm: the engine module prefopt.models.engines.not_there is not part "
            "of this prefopt (not installed or not built yet); use the hf engine"
        ]
        assert not (tmp_path / key).exists()
    assert built == []
    # an offline recipe never builds a rollout engine; with its evaluation off, no engine at all
    dpo = tiny_recipe("dpo", None, "rollout.engine.name=vllm", "eval.enabled=false")
    assert recipe_engine_problems(dpo, online=False) == []


# ------------------------------------------------------------------ mismatch and TIS math


def test_truncated_importance_weights_by_hand():
    """trainer - engine = [0, 1, -1.5, 3]: exp -> [1, e, e^-1.5, e^3]; the cap 2 binds on e and
    e^3; the fourth token is off the mask (weight 1)."""
    trainer = torch.tensor([[0.0, -1.0, -2.0, -0.5]])
    engine = torch.tensor([[0.0, -2.0, -0.5, -3.5]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    weights = truncated_importance_weights(trainer, engine, mask, cap=2.0)
    assert_close(weights, torch.tensor([[1.0, 2.0, math.exp(-1.5), 1.0]]))
    # mismatch over the mask: |0|, |1|, |-1.5| -> mean 2.5 / 3, max 1.5 (the 3 off the mask)
    out = logp_mismatch(trainer, engine, mask)
    assert_close(out["logp_diff_mean"], torch.tensor(2.5 / 3))
    assert_close(out["logp_diff_max"], torch.tensor(1.5))
    assert float(logp_mismatch(trainer, engine, torch.zeros_like(mask))["logp_diff_max"]) == 0
    with pytest.raises(ValueError, match="cap must be >= 1"):
        truncated_importance_weights(trainer, engine, mask, cap=0.5)


def test_token_weights_scale_each_tokens_policy_loss_and_its_gradient():
    """PPO at ratio 1 (logps = old): the token term is -A; weights [2, 1.5] and A = [1, 2] over
    2 valid tokens (token_mean): loss (-1*2 - 2*1.5) / 2 = -2.5 (unweighted: -1.5);
    d loss / d logp_t = -A_t w_t / 2 = [-1, -1.5] (the weights are constants)."""
    from prefopt.losses.ppo import PPOConfig, PPOLoss

    loss_fn = PPOLoss(PPOConfig())
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = logps.detach().clone()
    advantages = torch.tensor([[1.0, 2.0]])
    mask = torch.ones(1, 2)
    weights = torch.tensor([[2.0, 1.5]], requires_grad=True)
    out = loss_fn(logps, old, advantages, mask, token_weights=weights)
    assert_close(out.loss, torch.tensor(-2.5))
    out.loss.backward()
    assert_close(logps.grad, torch.tensor([[-1.0, -1.5]]))
    assert weights.grad is None
    assert_close(loss_fn(logps, old, advantages, mask).loss, torch.tensor(-1.5))


# ------------------------------------------------------------------ the online trainer


def test_the_online_trainer_builds_its_engine_once_and_syncs_it_after_updates(
    tmp_path, tiny_pretrained, monkeypatch
):
    monkeypatch.setitem(ENGINES, "spy", f"{__name__}:SpyEngine")
    trainer = online_trainer(tmp_path, tiny_pretrained)
    trainer.recipe.rollout.engine.name = "spy"
    prompts = [e["prompt"] for e in trainer.train_examples[:4]]
    rollout, _, _ = trainer.make_rollout(prompts)
    engine = trainer._engine
    assert isinstance(engine, SpyEngine) and engine.synced == []
    trainer.make_rollout(prompts)  # no optimiser step in between: nothing to sync
    assert trainer._engine is engine and engine.synced == []
    trainer.update(rollout, torch.arange(4))
    trainer.make_rollout(prompts)
    assert engine.synced == [trainer.unwrapped()]
    trainer.close_rollout_engine()
    assert engine.closed and trainer._engine is None


def test_an_engine_with_its_own_weights_is_measured_every_rollout(
    tmp_path, tiny_pretrained, monkeypatch
):
    """rollout/logp_diff_* every rollout from an engine that samples with a copy of the
    weights, old log-probs still the trainer's (logps_from_generation off); not from generate
    on the live model, and not when top-p truncation makes the engine's log-probs another
    distribution's."""
    monkeypatch.setitem(ENGINES, "copy", f"{__name__}:CopyEngine")
    for top_p, measured in ((1.0, True), (0.9, False)):
        trainer = online_trainer(tmp_path / str(top_p), tiny_pretrained,
                                 f"rollout.top_p={top_p}")  # fmt: skip
        trainer.recipe.rollout.engine.name = "copy"
        prompts = [e["prompt"] for e in trainer.train_examples[:4]]
        rollout, samples, metrics = trainer.make_rollout(prompts)
        assert trainer._engine.asked == [measured]
        assert not rollout.old_from_engine and rollout.tis_weights is None
        if measured:  # the trainer's recomputation against the engine's (generate's) own
            expected = logp_mismatch(rollout.old_logps, samples.logps, rollout.mask)
            assert metrics["rollout/logp_diff_max"] == pytest.approx(
                float(expected["logp_diff_max"])
            )
            assert 0 <= metrics["rollout/logp_diff_mean"] <= metrics["rollout/logp_diff_max"]
            assert metrics["rollout/logp_diff_max"] < 1e-4
        else:
            assert "rollout/logp_diff_max" not in metrics
    hf = online_trainer(tmp_path / "hf", tiny_pretrained)
    _, samples, metrics = hf.make_rollout([e["prompt"] for e in hf.train_examples[:4]])
    assert samples.logps is None and "rollout/logp_diff_max" not in metrics


def test_with_logps_from_generation_the_first_update_measures_the_mismatch(
    tmp_path, tiny_pretrained
):
    """Old log-probs from the engine: the first minibatch's forward (no optimiser step since
    the rollout) gives the trainer's own log-probs of its rows; the metrics are their distance
    to the engine's, and only that minibatch reports them."""
    trainer = online_trainer(tmp_path, tiny_pretrained, "rollout.logps_from_generation=true")
    rollout, samples, metrics = trainer.make_rollout(
        [e["prompt"] for e in trainer.train_examples[:8]]
    )
    assert rollout.old_from_engine and rollout.mismatch_pending
    assert "rollout/logp_diff_mean" not in metrics and rollout.tis_weights is None
    idx = torch.arange(4)
    with torch.no_grad():
        own, _ = trainer.policy_forward(
            rollout.sequences[idx], rollout.attention_mask[idx], grad=False, first=rollout.first
        )
    expected = logp_mismatch(own, samples.logps[idx], rollout.mask[idx])
    first = trainer.update(rollout, idx)
    assert first["rollout/logp_diff_mean"] == pytest.approx(float(expected["logp_diff_mean"]))
    assert first["rollout/logp_diff_max"] == pytest.approx(float(expected["logp_diff_max"]))
    # generate's cached forward against the full one: rounding only
    assert 0 <= first["rollout/logp_diff_mean"] <= first["rollout/logp_diff_max"] < 1e-4
    assert "rollout/logp_diff_mean" not in trainer.update(rollout, idx)


def test_with_a_shared_value_head_logps_from_generation_still_measures_the_mismatch(
    tmp_path, tiny_pretrained
):
    """value.mode=shared: the old log-probs stay the trainer's (the head's values come from
    that forward), but the engine still returns its log-probs and the rollout's metrics are
    their distance to that forward's, over every completion token (separate mode measures the
    same on the first minibatch)."""
    trainer = online_trainer(
        tmp_path, tiny_pretrained, "value.mode=shared", "rollout.logps_from_generation=true"
    )
    assert trainer.value_head is not None and not trainer.old_logps_from_engine
    rollout, samples, metrics = trainer.make_rollout(
        [e["prompt"] for e in trainer.train_examples[:8]]
    )
    assert samples.logps is not None and rollout.engine_logps is not None
    assert not rollout.old_from_engine and not rollout.mismatch_pending
    assert rollout.old_values is not None and rollout.tis_weights is None
    with torch.no_grad():
        own, _ = trainer.policy_forward(
            rollout.sequences, rollout.attention_mask, grad=False, first=rollout.first
        )
    assert_close(rollout.old_logps, own)  # the trainer's forward, not the engine's log-probs
    expected = logp_mismatch(own, samples.logps, rollout.mask)
    assert metrics["rollout/logp_diff_mean"] == pytest.approx(float(expected["logp_diff_mean"]))
    assert metrics["rollout/logp_diff_max"] == pytest.approx(float(expected["logp_diff_max"]))
    # generate's cached forward against the full one: rounding only, but measured (not 0)
    assert 0 < metrics["rollout/logp_diff_mean"] <= metrics["rollout/logp_diff_max"] < 1e-4
    assert "rollout/logp_diff_mean" not in trainer.update(rollout, torch.arange(4))


def test_tis_weights_from_the_engines_logps_reach_the_loss(tmp_path, tiny_pretrained):
    """rollout.tis_cap = 2: the engine returns its log-probs, the old log-probs stay the
    trainer's, the weights are min(exp(old - engine), 2) on the mask, and the update's loss is
    the loss function's with those weights."""
    overrides = ("rollout.tis_cap=2", *GROUP)
    trainer = online_trainer(tmp_path, tiny_pretrained, *overrides, recipe="grpo")
    rollout, samples, metrics = trainer.make_rollout(
        [e["prompt"] for e in trainer.train_examples[:4]]
    )
    assert samples.logps is not None and not rollout.old_from_engine
    assert rollout.engine_logps is not None and rollout.tis_weights is not None
    expected = torch.exp(rollout.old_logps - samples.logps).clamp(max=2.0)
    expected = torch.where(rollout.mask.bool(), expected, torch.ones_like(expected))
    assert_close(rollout.tis_weights, expected)
    mismatch = logp_mismatch(rollout.old_logps, samples.logps, rollout.mask)
    assert metrics["rollout/logp_diff_mean"] == pytest.approx(float(mismatch["logp_diff_mean"]))
    assert metrics["rollout/logp_diff_max"] == pytest.approx(float(mismatch["logp_diff_max"]))
    assert metrics["rollout/tis_weight_mean"] == pytest.approx(
        float(expected[rollout.mask.bool()].mean())
    )
    # the weights enter the loss: scaled weights (here x 3, far from 1) scale the policy loss
    idx = torch.arange(rollout.size)
    logps, _ = trainer.policy_forward(
        rollout.sequences, rollout.attention_mask, first=rollout.first
    )
    args = (logps, rollout.old_logps, rollout.advantages, rollout.loss_mask)
    weighted = trainer.loss_fn(*args, token_weights=rollout.tis_weights * 3)
    plain = trainer.loss_fn(*args, token_weights=rollout.tis_weights)
    assert_close(weighted.loss, 3 * plain.loss)
    rollout.tis_weights = rollout.tis_weights * 3
    assert trainer.update(rollout, idx)["loss/policy"] == pytest.approx(
        float(weighted.loss.detach())
    )


def test_a_tiny_online_run_logs_the_engine_metrics_it_should(tmp_path, tiny_pretrained):
    from prefopt.pipeline.run import train

    common = [f"model.name_or_path={tiny_pretrained}", *ONLINE, "trainer.max_steps=2",
              "trainer.batch_size=4", "rollout.engine.name=hf", "eval.enabled=false"]  # fmt: skip
    train(tiny_recipe("ppo", tmp_path / "plain", *common))
    train(tiny_recipe("ppo", tmp_path / "gen", *common, "rollout.logps_from_generation=true"))
    train(tiny_recipe("grpo", tmp_path / "tis", *common, *GROUP[:1], "rollout.tis_cap=3"))
    keys = ("rollout/logp_diff_mean", "rollout/logp_diff_max")
    plain = [m for m in read_metrics(tmp_path / "plain") if "loss" in m]
    gen = [m for m in read_metrics(tmp_path / "gen") if "loss" in m]
    tis = [m for m in read_metrics(tmp_path / "tis") if "loss" in m]
    assert len(plain) == len(gen) == len(tis) == 2
    assert not any(k in m for m in plain for k in (*keys, "rollout/tis_weight_mean"))
    for m in gen + tis:
        assert 0 <= m["rollout/logp_diff_mean"] <= m["rollout/logp_diff_max"] < 1e-4
    for m in tis:  # hf's engine log-probs are the trainer's up to rounding: weights ~ 1
        assert m["rollout/tis_weight_mean"] == pytest.approx(1.0, abs=1e-4)
        assert m["rollout/tis_capped"] == 0.0


# an engine's memory, sleep and context settings at values other than their defaults
ENGINE_RUNTIME = [
    f"{section}.engine.{key}={value}"
    for section in ("rollout", "eval")
    for key, value in (("gpu_memory_utilization", 0.7), ("cpu_memory_utilization", 0.2),
                       ("sleep", "true"), ("max_model_len", 96))
]  # fmt: skip


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_an_engines_memory_and_sleep_settings_keep_the_stage_identity(engine):
    """rollout.engine / eval.engine's gpu_memory_utilization, cpu_memory_utilization, sleep and
    max_model_len (config.ENGINE_RUNTIME_ONLY_FIELDS) do not change what is sampled: a stage
    keeps its identity (its cache folder) when they change, one at a time or all at once, for
    the default engine (whose identity is then still the one without any engine setting) and
    for vLLM; the engine's name still changes it."""
    from prefopt.config import ENGINE_RUNTIME_ONLY_FIELDS, RUNTIME_ONLY_KEYS, load_recipe
    from prefopt.pipeline.cache import stage_identity

    assert {f"{s}.engine.{k}" for s in ("rollout", "eval") for k in ENGINE_RUNTIME_ONLY_FIELDS} <= (
        set(RUNTIME_ONLY_KEYS)
    )
    named = [f"rollout.engine.name={engine}", f"eval.engine.name={engine}"]
    base = stage_identity(load_recipe("grpo", named))
    for override in ENGINE_RUNTIME:
        assert stage_identity(load_recipe("grpo", [*named, override])) == base, override
    assert stage_identity(load_recipe("grpo", [*named, *ENGINE_RUNTIME])) == base
    other = "hf" if engine == "vllm" else "vllm"
    assert stage_identity(load_recipe("grpo", [f"rollout.engine.name={other}"])) != base
    if engine == "hf":  # the default engine: the identity every stage had before
        assert base == stage_identity(load_recipe("grpo"))


def test_a_resume_may_change_an_engines_memory_and_sleep_settings(tmp_path):
    """check_same_run: a run stored with the vLLM engine resumes with other memory shares,
    sleep and max_model_len (rollout.engine and eval.engine), but not with another engine."""
    from prefopt.config import save_recipe
    from prefopt.train import check_same_run
    from prefopt.trainers.base import TrainingError

    run = tmp_path / "run"
    run.mkdir()
    named = ("rollout.engine.name=vllm", *GROUP)
    save_recipe(tiny_recipe("grpo", run, *named), run / "recipe.yaml")
    check_same_run(run, tiny_recipe("grpo", run, *named, *ENGINE_RUNTIME), "auto")
    with pytest.raises(TrainingError, match=r"rollout\.engine\.name: 'vllm' -> 'hf'"):
        check_same_run(run, tiny_recipe("grpo", run, *GROUP, *ENGINE_RUNTIME), "auto")


def test_an_expo_stage_keeps_its_identity_at_the_default_engine():
    """The identity an expo stage had before `engine` existed (its settings without it), kept at
    the default; another engine is another identity. A bad engine fails when the stage is read."""
    import dataclasses
    import hashlib
    import json

    from omegaconf import OmegaConf

    from prefopt.pipeline.stages import ExpoSettings, Stage, _identity, _plain_settings
    from prefopt.world.config import WORLD_FORMAT_VERSION

    settings = ExpoSettings(aligned="/models/dpo")
    before = dataclasses.asdict(settings)
    del before["engine"]
    payload = json.dumps(
        {"kind": "expo", "world_format": WORLD_FORMAT_VERSION, "settings": before},
        sort_keys=True,
        default=str,
    )
    assert (
        _identity(Stage("e", "expo", settings)) == hashlib.sha256(payload.encode()).hexdigest()[:12]
    )
    other = dataclasses.replace(settings, engine=EngineSettings(name=EngineName.vllm))
    assert _identity(Stage("e", "expo", other)) != _identity(Stage("e", "expo", settings))
    # memory, sleep and context length are not part of it (config.ENGINE_RUNTIME_ONLY_FIELDS)
    runtime = dict(gpu_memory_utilization=0.7, cpu_memory_utilization=0.2, sleep=True,
                   max_model_len=96)  # fmt: skip
    for name, base in ((EngineName.hf, settings), (EngineName.vllm, other)):
        sized = dataclasses.replace(settings, engine=EngineSettings(name=name, **runtime))
        assert _identity(Stage("e", "expo", sized)) == _identity(Stage("e", "expo", base))
    node = OmegaConf.create({"aligned": "/models/dpo", "engine": {"gpu_memory_utilization": 2.0}})
    with pytest.raises(ConfigError) as err:
        _plain_settings("e", "expo", node)
    assert err.value.problems == [
        "stages.e.engine.gpu_memory_utilization must be in (0, 1], got 2.0"
    ]
