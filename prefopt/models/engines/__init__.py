"""Rollout engines: what samples completions (docs/engines.md).

``ENGINES`` maps an engine's name (``rollout.engine.name``, ``eval.engine.name``) to the
import path of its class, imported only when that engine is built, so that prefopt never
imports an engine's library (vLLM) unless a recipe asks for it. ``engine_problem`` checks a
setting in one line before any model loads; ``build_engine`` builds one; ``open_engine`` and
``sample_once`` are what a caller that samples a model once (an evaluation) uses.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from prefopt.config import EngineSettings
from prefopt.models.engines.base import RolloutEngine
from prefopt.models.generation import Samples

#: name -> "module:Class" (prefopt.config.EngineName lists the same names)
ENGINES: dict[str, str] = {
    "hf": "prefopt.models.engines.hf:HFEngine",
    "vllm": "prefopt.models.engines.vllm:VLLMEngine",
}

__all__ = [
    "ENGINES",
    "EngineSettings",
    "RolloutEngine",
    "build_engine",
    "engine_problem",
    "engine_settings",
    "open_engine",
    "recipe_engine_problems",
    "sample_once",
]


def engine_settings(cfg: Any) -> EngineSettings:
    """The engine a sampling config names (``cfg.engine``: an EvalConfig's or a
    RolloutConfig's), the default ``hf`` for a config without one."""
    settings = getattr(cfg, "engine", None)
    return settings if settings is not None else EngineSettings()


def _module_and_class(name: str) -> tuple[str, str]:
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; known: {', '.join(ENGINES)}")
    module, cls = ENGINES[name].split(":")
    return module, cls


def engine_problem(
    settings: EngineSettings, model_cfg: Any = None, key: str = "engine"
) -> str | None:
    """One line saying why ``settings`` cannot sample a policy of ``model_cfg`` (a
    ModelConfig) here, or None: an unknown name, an engine whose module or library is not
    installed, what the engine's own ``problem(settings, model_cfg)`` refuses. Loads no model
    and imports no engine library."""
    name = str(settings.name)
    if name not in ENGINES:
        return f"{key}.name: unknown rollout engine {name!r}; known: {', '.join(ENGINES)}"
    module, _ = _module_and_class(name)
    if importlib.util.find_spec(module) is None:
        return (
            f"{key}.name: {name}: the engine module {module} is not part of this prefopt "
            "(not installed or not built yet); use the hf engine"
        )
    check = getattr(importlib.import_module(module), "problem", None)
    problem = check(settings, model_cfg) if callable(check) else None
    return f"{key}.name: {name}: {problem}" if problem else None


def recipe_engine_problems(recipe: Any, online: bool) -> list[str]:
    """:func:`engine_problem` of every engine ``recipe`` (a Recipe) will build: ``eval.engine``
    when its evaluation is on, ``rollout.engine`` for an ``online`` run."""
    named = [("eval.engine", recipe.eval.engine)] if recipe.eval.enabled else []
    if online:
        named.append(("rollout.engine", recipe.rollout.engine))
    problems = [engine_problem(settings, recipe.model, key) for key, settings in named]
    return [p for p in problems if p]


def build_engine(
    model: nn.Module,
    tokenizer: Any,
    device: torch.device,
    settings: EngineSettings | None = None,
) -> RolloutEngine:
    """The engine ``settings.name`` (default ``hf``) for ``model``, built once. An engine
    that cannot run here raises ValueError with :func:`engine_problem`'s line (callers that
    have a recipe check it before any model loads)."""
    settings = settings if settings is not None else EngineSettings()
    problem = engine_problem(settings, None)
    if problem:
        raise ValueError(problem)
    module, cls = _module_and_class(str(settings.name))
    engine_cls = getattr(importlib.import_module(module), cls)
    return engine_cls(model, tokenizer, device, settings)


@contextlib.contextmanager
def open_engine(
    model: nn.Module,
    tokenizer: Any,
    device: torch.device,
    settings: EngineSettings | None = None,
) -> Iterator[RolloutEngine]:
    """An engine for ``model`` while the block runs, closed after it."""
    engine = build_engine(model, tokenizer, device, settings)
    try:
        yield engine
    finally:
        engine.close()


def sample_once(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    cfg: Any,
    device: torch.device,
    seed: int,
    max_prompt_length: int = 64,
) -> Samples:
    """``model``'s samples of ``prompts`` with the engine ``cfg.engine`` names (see
    :func:`engine_settings`), built for this one call: the caller that samples a model once."""
    with open_engine(model, tokenizer, device, engine_settings(cfg)) as engine:
        return engine.sample(prompts, cfg, seed, max_prompt_length=max_prompt_length)
