"""The benchmark harness's pure pieces (benchmarks/): FLOP counting, pair selection by length,
the agreement checker. No TRL, no model: well under a second."""

from __future__ import annotations

import pytest

from benchmarks.assets import select_pairs, select_prompts
from benchmarks.measure import (
    AgreementError,
    check_agreement,
    check_same_ids,
    rates,
    useful_flops,
)


def test_useful_flops_counts_forward_and_backward_per_token():
    # DPO: policy forward+backward (6 N T) + reference forward (2 N T); N=10, T=3 -> 240
    assert useful_flops("dpo", 10, 3) == 240
    assert useful_flops("rm", 10, 3) == 180  # 6 N T
    assert useful_flops("ppo", 10, 3) == 600  # 20 N T
    assert useful_flops("grpo", 10, 3) == 240  # sampling 2 N T + training 6 N T


def test_rates_divide_the_timed_window():
    # 14 pairs, 2,000 tokens in 7 s with N = 1e6: 2 pairs/s, 8 * 1e6 * 2000 / 7 / 1e9 GFLOP/s
    out = rates("dpo", 14, 2000, 7.0, 1_000_000)
    assert out["per_s"] == 2.0
    assert out["tokens_per_s"] == pytest.approx(2000 / 7)
    assert out["gflops"] == pytest.approx(16 / 7)


def lengths(prompt: str, completion: str) -> int | None:
    """Characters as tokens; a completion starting with '!' tokenizes differently (None)."""
    return None if completion.startswith("!") else len(prompt) + len(completion)


def test_select_pairs_keeps_the_first_that_fit():
    pairs = [
        {"prompt": "ab", "chosen": "cdefgh", "rejected": "c"},  # chosen 8 > 6: out
        {"prompt": "ab", "chosen": "cd", "rejected": "!e"},  # differs between the sides: out
        {"prompt": "ab", "chosen": "cd", "rejected": "efgh"},  # 4 and 6: in
        {"prompt": "a", "chosen": "b", "rejected": "c"},  # in
        {"prompt": "a", "chosen": "d", "rejected": "e"},  # not needed
    ]
    assert select_pairs(pairs, 2, 6, lengths) == [pairs[2], pairs[3]]
    with pytest.raises(ValueError, match="only 2 pairs fit in 6 tokens; 3 needed"):
        select_pairs(pairs[:4], 3, 6, lengths)


def test_select_prompts_distinct_and_short():
    pairs = [{"prompt": p} for p in ("abc", "abcdefg", "abc", "xy", "z")]
    assert select_prompts(pairs, 3, 3, len) == ["abc", "xy", "z"]


def test_agreement_within_tolerance_returns_the_largest_difference():
    assert check_agreement("loss", [1.0, 2.0], [1.0 + 5e-5, 2.0]) == pytest.approx(5e-5)


def test_agreement_raises_with_the_numbers_on_a_mismatch():
    with pytest.raises(AgreementError, match=r"dpo chosen_logps: .* differ by 0.001 > 0.0001"):
        check_agreement("dpo chosen_logps", [-10.0, -20.0], [-10.0, -20.001])
    with pytest.raises(AgreementError, match="differ by nan"):
        check_agreement("loss", [float("nan")], [0.5])
    # a relative part for sums: 1.2e-4 at -741 passes at rtol 1e-6 (1e-4 + 7.4e-4), not without
    assert check_agreement("s", [-741.2025], [-741.20238], 1e-4, rtol=1e-6) < 2e-4
    with pytest.raises(AgreementError):
        check_agreement("s", [-741.2025], [-741.20238], 1e-4)
    with pytest.raises(AgreementError, match="2 values against 1"):
        check_agreement("loss", [1.0, 2.0], [1.0])


def test_same_ids_names_the_first_differing_position():
    check_same_ids("ids", [[1, 2, 3]], [[1, 2, 3]])
    with pytest.raises(AgreementError, match="row 0 tokenizes differently from position 2"):
        check_same_ids("ids", [[1, 2, 3]], [[1, 2, 4]])


def test_best_against_best_takes_each_sides_fastest_setting():
    from benchmarks.report import best

    by_setting = {
        "fp32": {
            "prefopt_per_s": 2.0,
            "trl_per_s": 1.5,
            "prefopt_peak_mb": 900,
            "trl_peak_mb": 2000,
        },
        "fastest": {
            "prefopt_per_s": 4.0,
            "trl_per_s": 1.0,
            "prefopt_peak_mb": 1000,
            "trl_peak_mb": 1800,
        },
    }
    e = best(by_setting)
    # TRL's fp32 (1.5/s) beat its own "fastest" (1.0/s): the ratio is 4.0 / 1.5, not 4.0 / 1.0
    assert (e["prefopt_setting"], e["trl_setting"]) == ("fastest", "fp32")
    assert e["ratio"] == pytest.approx(4.0 / 1.5)
    assert (e["prefopt_peak_mb"], e["trl_peak_mb"]) == (1000, 2000)


def test_the_vllm_setting_is_online_only():
    from benchmarks import settings as S

    assert S.settings_for("dpo") == S.settings_for("rm") == ("fp32", "fastest")
    for algo in ("ppo", "grpo", "rloo"):
        assert S.settings_for(algo) == ("fp32", "fastest", "vllm")
        # the engine on top of prefopt's fastest setting, its KV cache a share of host memory
        assert S.PREFOPT_VLLM[algo][: len(S.PREFOPT_FAST[algo])] == S.PREFOPT_FAST[algo]
        assert "rollout.engine.name=vllm" in S.PREFOPT_VLLM[algo]
    assert set(S.TRL_VLLM) | set(S.TRL_NO_VLLM) == {"ppo", "grpo", "rloo"}
    assert S.TRL_VLLM["grpo"] == {"bf16": True, "use_vllm": True, "vllm_mode": "colocate"}


def test_a_failed_sides_reason_is_its_last_exception_line():
    from benchmarks.run import failure_reason

    log = (
        'INFO starting\n[rank0]: Traceback (most recent call last):\n[rank0]:   File "x.py"\n'
        "[rank0]: AttributeError: 'Parameter' object has no attribute 'weight_loader'\n"
        "[rank0]: destroy_process_group() was not called\n"
    )
    assert failure_reason(log) == (
        "AttributeError: 'Parameter' object has no attribute 'weight_loader'"
    )
    assert failure_reason("killed\n\n") == "killed"
    assert failure_reason("") == "no output"


def test_a_row_without_trl_keeps_prefopts_figures_and_says_why():
    """TRL not run in the vllm setting: its figures are None, the reason is kept, best takes
    TRL's fastest among the settings it ran, and the engine section divides the vLLM engine's
    rate by it: 6.0 / 1.5 = 4.0 >= 3 with 900 <= 2000 MB, met."""
    from benchmarks.report import best, engine_section, entry, line

    fig = {"per_s": 6.0, "tokens_per_s": 600.0, "gflops": 1.0, "peak_mb": 900.0, "items": 56,
           "tokens": 5600}  # fmt: skip
    row = entry("grpo", fig, None, setting="vllm", trl_missing="TRL's colocated vLLM: X")
    assert row["trl_per_s"] is None and row["ratio"] is None
    assert row["trl_missing"] == "TRL's colocated vLLM: X" and row["prefopt_per_s"] == 6.0
    assert row["against"].endswith('vllm_mode="colocate"')
    assert "TRL not run" in line("grpo", "vllm", row)
    by_setting = {
        "fp32": {"prefopt_per_s": 2.0, "trl_per_s": 1.5, "prefopt_peak_mb": 800,
                 "trl_peak_mb": 2000},
        "fastest": {"prefopt_per_s": 4.0, "trl_per_s": 1.0, "prefopt_peak_mb": 1000,
                    "trl_peak_mb": 1800},
        "vllm": row,
    }  # fmt: skip
    by_setting["best"] = e = best(by_setting)
    assert (e["prefopt_setting"], e["trl_setting"]) == ("vllm", "fp32")
    assert e["ratio"] == pytest.approx(6.0 / 1.5)
    text = engine_section({"grpo": by_setting})
    assert "| grpo | 6.00 | 4.00 | - | 1.50 (fp32) | 4.00 | 3x | 900 / - / 2000 | met |" in text
    assert "- grpo: TRL's colocated vLLM: X" in text
    assert engine_section({"grpo": {k: v for k, v in by_setting.items() if k != "vllm"}}) == ""


def test_a_partial_rerun_keeps_earlier_rows_only_from_the_same_cpu():
    from benchmarks.report import kept_results

    stored = {"machine": {"cpu": "Intel(R) Xeon(R) Processor"}, "dpo": {"fp32": {"ratio": 3.4}}}
    kept, why = kept_results(stored, "Intel(R) Xeon(R) Processor")
    assert kept == {"dpo": {"fp32": {"ratio": 3.4}}} and why == ""
    kept, why = kept_results(stored, "AMD EPYC")
    assert kept == {} and "'Intel(R) Xeon(R) Processor'" in why and "'AMD EPYC'" in why
    assert kept_results({"dpo": {}}, "AMD EPYC")[0] == {}  # no machine recorded: not kept


def test_the_reports_parameter_count_is_gpt2s():
    """docs/benchmarks.md names the model's size from BENCH_LAYERS / HIDDEN / HEADS: the
    count equals transformers' own for GPT-2 of that shape (23.6M for the default)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from benchmarks.assets import ModelShape
    from benchmarks.report import gpt2_parameters

    shape = ModelShape(layers=2, hidden=64, heads=2, vocab=100, positions=32)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=100, n_positions=32,
                        bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = GPT2LMHeadModel(config)
    assert gpt2_parameters(shape) == sum(p.numel() for p in model.parameters())
    assert round(gpt2_parameters(ModelShape(layers=6, hidden=512, heads=8)) / 1e6, 1) == 23.6
