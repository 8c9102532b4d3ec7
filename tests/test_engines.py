"""Rollout engines (prefopt.models.engines): the hf engine, the registry, bad input, the online
trainer's engine."""

from __future__ import annotations

import pytest
import torch

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
from tests.conftest import tiny_recipe
from tests.test_online import ONLINE, online_trainer


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
    ],
)  # fmt: skip
def test_a_bad_engine_setting_fails_when_the_recipe_loads(override, message):
    with pytest.raises(ConfigError) as err:
        tiny_recipe("ppo", None, override)
    assert any(message in p for p in err.value.problems), err.value.problems


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
    node = OmegaConf.create({"aligned": "/models/dpo", "engine": {"gpu_memory_utilization": 2.0}})
    with pytest.raises(ConfigError) as err:
        _plain_settings("e", "expo", node)
    assert err.value.problems == [
        "stages.e.engine.gpu_memory_utilization must be in (0, 1], got 2.0"
    ]
