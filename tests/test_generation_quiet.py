"""prefopt's generation passes an attention mask, so transformers' "We strongly recommend
passing in an `attention_mask`" warning (raised by its decoding loop anyway) is not shown;
a forward call of the user's without a mask still warns."""

from __future__ import annotations

import logging

import pytest
import torch


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_generation_does_not_warn_about_a_mask_it_passes_but_a_bare_forward_does(tiny_pretrained):
    import transformers.utils.logging as tlog

    from prefopt.config import load_recipe
    from prefopt.models.generation import generate
    from prefopt.models.loading import load_pretrained
    from prefopt.world import WorldConfig, build_world

    world = build_world(WorldConfig())
    model = load_pretrained(str(tiny_pretrained)).eval()
    tok = world.tokenizer()
    logger = logging.getLogger("transformers.modeling_utils")
    handler = _Collect()
    logger.addHandler(handler)
    try:
        tlog.warning_once.cache_clear()  # the warning is "once" per process: start afresh
        cfg = load_recipe("dpo").eval
        cfg.samples_per_prompt, cfg.max_new_tokens = 2, 8
        generate(model, tok, world.eval_prompts("test")[:8], cfg, torch.device("cpu"), 0, 48)
        assert not [m for m in handler.messages if "attention_mask" in m]
        # the control: a padded batch without a mask, outside prefopt's generation, warns
        tlog.warning_once.cache_clear()
        ids = torch.tensor([[5, 6, tok.pad_token_id], [5, 6, 7]])
        model.config.pad_token_id = tok.pad_token_id
        model(input_ids=ids)
        assert [m for m in handler.messages if "attention_mask" in m]
    finally:
        logger.removeHandler(handler)


def test_a_reward_model_says_in_one_line_that_its_head_is_new(tiny_pretrained, capsys):
    from transformers import AutoModelForSequenceClassification

    from prefopt.config import load_recipe
    from prefopt.models.loading import load_reward_backbone
    from prefopt.world import WorldConfig, build_world

    logger = logging.getLogger("transformers.modeling_utils")
    handler = _Collect()
    logger.addHandler(handler)
    try:
        recipe = load_recipe("rm")
        load_reward_backbone(
            recipe.model, build_world(WorldConfig()).tokenizer(), str(tiny_pretrained)
        )
        assert not [m for m in handler.messages if "LOAD REPORT" in m]
        assert f"reward model: a new scalar head (score.weight) on {tiny_pretrained}" in (
            capsys.readouterr().out
        )
        # the control: plain transformers prints its table for the same checkpoint
        AutoModelForSequenceClassification.from_pretrained(str(tiny_pretrained), num_labels=1)
        assert [m for m in handler.messages if "LOAD REPORT" in m]
    finally:
        logger.removeHandler(handler)


BNB_LINE = "Failed to load CPU gemm_4bit_forward"
ADD_LORA = """
from transformers import GPT2Config, GPT2LMHeadModel
from prefopt.config import LoraSettings
from prefopt.models.loading import add_lora
model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
print(type(add_lora(model, LoraSettings(r=2), quantized=False)).__name__)
"""


def test_bitsandbytes_kernel_line_is_not_shown_by_prefopts_lora_but_by_a_plain_import():
    import subprocess
    import sys

    from tests.conftest import REPO

    def stderr_of(code: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stderr

    # the control: bitsandbytes says it on CPUs with AVX512-BF16 (most x86 servers)
    if BNB_LINE not in stderr_of("import peft"):
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes does not print the line here")
    assert BNB_LINE not in stderr_of(ADD_LORA)
