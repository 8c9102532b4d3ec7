"""Gao et al. 2022's over-optimisation forms (arXiv 2210.10760): least-squares fits recover
known coefficients, report R^2 and the peak, and say when the form does not fit."""

import math

import numpy as np
import pytest

from prefopt.eval.gold import best_of_n_kl
from prefopt.eval.overoptimisation import fit_gao, gao_curve


def test_bon_form_recovers_known_coefficients_on_best_of_n_kls():
    """Gold gain d (1.2 - 0.4 d) at the analytic best-of-n KLs log n - (n-1)/n, n = 1..64:
    exact data, so alpha = 1.2, beta = 0.4, R^2 = 1; the peak d* = 1.2 / 0.8 = 1.5 (KL 2.25),
    gain there 1.5 (1.2 - 0.6) = 0.9."""
    kl = np.array([best_of_n_kl(n) for n in (1, 2, 4, 8, 16, 32, 64)])
    gain = gao_curve(np.sqrt(kl), 1.2, 0.4, "bon")
    assert gain[0] == 0.0  # n = 1: KL 0, no gain
    fit = fit_gao(kl, gain, "bon")
    assert fit["alpha"] == pytest.approx(1.2, abs=1e-10)
    assert fit["beta"] == pytest.approx(0.4, abs=1e-10)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)
    assert fit["d_peak"] == pytest.approx(1.5)
    assert fit["kl_peak"] == pytest.approx(2.25)
    assert fit["gain_at_peak"] == pytest.approx(0.9)


def test_rl_form_recovers_known_coefficients_with_noise():
    """d (0.8 - 0.3 log d) on d in [0.1, 6] plus small noise: the coefficients within 0.02,
    R^2 near 1; the peak exp(0.8 / 0.3 - 1) = exp(5/3) = 5.29."""
    rng = np.random.default_rng(0)
    d = np.linspace(0.1, 6.0, 60)
    gain = d * (0.8 - 0.3 * np.log(d)) + rng.normal(0.0, 0.01, d.size)
    fit = fit_gao(d**2, gain, "rl")
    assert fit["alpha"] == pytest.approx(0.8, abs=0.02)
    assert fit["beta"] == pytest.approx(0.3, abs=0.02)
    assert fit["r2"] > 0.99
    exact = fit_gao(d**2, d * (0.8 - 0.3 * np.log(d)), "rl")
    assert exact["d_peak"] == pytest.approx(math.exp(5 / 3))


def test_hand_computed_two_point_fit():
    """Two points determine the two coefficients: d = 1 (gain 1) and d = 2 (gain 0) under
    the best-of-n form: alpha - beta = 1 and 2 alpha - 4 beta = 0 -> alpha = 2, beta = 1."""
    fit = fit_gao([1.0, 4.0], [1.0, 0.0], "bon")
    assert (fit["alpha"], fit["beta"]) == (pytest.approx(2.0), pytest.approx(1.0))


def test_a_curve_the_form_cannot_fit_has_a_low_r2():
    """A gain that oscillates in d (sin 3d) is not d (alpha - beta d): R^2 far below 1."""
    d = np.linspace(0.1, 4.0, 50)
    fit = fit_gao(d**2, np.sin(3 * d), "bon")
    assert fit["r2"] < 0.3
    rl = fit_gao(d**2, np.sin(3 * d), "rl")
    assert rl["r2"] < 0.3


def test_monotone_gain_has_no_peak():
    """A gain that only rises (beta < 0) has no peak."""
    fit = fit_gao([1.0, 4.0, 9.0], [1.0, 3.0, 6.0], "bon")
    assert fit["beta"] < 0 and fit["d_peak"] is None


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="form"):
        fit_gao([1.0, 2.0], [0.1, 0.2], "ppo")
    with pytest.raises(ValueError, match="KL must be >= 0"):
        fit_gao([-1.0, 2.0], [0.1, 0.2], "bon")
    with pytest.raises(ValueError, match="two points"):
        fit_gao([0.0, 2.0], [0.0, 0.2], "rl")
    with pytest.raises(ValueError, match="values"):
        fit_gao([1.0, 2.0], [0.1], "rl")


def _write_results(out, swept, rows):
    import csv
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps({"swept": swept, "runs": []}))
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)


def test_gao_report_fits_a_best_of_n_sweep_per_reward_model(tmp_path):
    """results.csv of a best-of-n sweep (two reward models, n = 1..16) whose gold gains are
    exactly d (1 - 0.2 d) and d (0.5 - 0.5 d): one fit per reward model recovering both."""
    from prefopt.pipeline.gao import gao_report

    rows = []
    for steps, (alpha, beta) in ((40, (1.0, 0.2)), (300, (0.5, 0.5))):
        for n in (1, 2, 4, 8, 16):
            kl = best_of_n_kl(n)
            gain = float(gao_curve([math.sqrt(kl)], alpha, beta, "bon")[0])
            rows.append({"run": f"r{steps}-{n}", "stages.rm.trainer.max_steps": steps,
                         "stages.bon.eval.best_of_n": n, "seed": 0, "status": "done",
                         "stages.bon.eval.kl": kl, "stages.bon.eval.gold_gain": gain,
                         "stages.bon.eval.proxy_reward": 0.1 * n if n > 1 else ""})  # fmt: skip
    _write_results(tmp_path, ["stages.rm.trainer.max_steps", "stages.bon.eval.best_of_n"], rows)
    report = gao_report(tmp_path)
    assert report["form"] == "bon"
    fits = {name: item["fit"] for name, item in report["fits"].items()}
    first = fits["stages.rm.trainer.max_steps=40, seed=0"]
    assert (first["alpha"], first["beta"]) == (pytest.approx(1.0), pytest.approx(0.2))
    second = fits["stages.rm.trainer.max_steps=300, seed=0"]
    assert (second["alpha"], second["beta"]) == (pytest.approx(0.5), pytest.approx(0.5))
    assert (tmp_path / "gao.md").read_text().count("| stages.rm") == 2
    assert (tmp_path / "gao_bon.png").exists()


def test_gao_report_fits_the_training_log_of_an_rl_run(tmp_path):
    """A run whose log's gold follows 2 + d (0.8 - 0.3 log d) along training: gains are taken
    against the first batch (d = 0), and the RL form recovers 0.8 and 0.3."""
    import json

    from prefopt.pipeline.gao import gao_report

    _write_results(tmp_path, ["stages.rm.trainer.max_steps"],
                   [{"run": "a", "stages.rm.trainer.max_steps": 40, "seed": 0,
                     "status": "done"}])  # fmt: skip
    log = tmp_path / "runs" / "a" / "stages" / "ppo"  # a pipeline's stage folder
    log.mkdir(parents=True)
    d = np.linspace(0.0, 5.0, 30)
    gold = 2.0 + gao_curve(d, 0.8, 0.3, "rl")
    lines = [
        json.dumps({"step": i, "objective/kl": float(x**2), "objective/gold": float(g),
                    "objective/scores": float(x)})
        for i, (x, g) in enumerate(zip(d, gold, strict=True))
    ]  # fmt: skip
    (log / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    fit = gao_report(tmp_path)["fits"]["a"]["fit"]
    assert (fit["alpha"], fit["beta"]) == (pytest.approx(0.8), pytest.approx(0.3))
