"""prefopt's generation passes an attention mask, so transformers' "We strongly recommend
passing in an `attention_mask`" warning (raised by its decoding loop anyway) is not shown;
a forward call of the user's without a mask still warns."""

from __future__ import annotations

import logging

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
