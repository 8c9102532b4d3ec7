"""Per-token KL estimators and the KL coefficient controllers (ALGORITHMS.md section 3).

With ``d = logp - ref_logp`` the log-ratio of the sampled token under the policy and the
reference (samples drawn from the policy), Schulman's estimators of KL(pi || pi_ref) are:

* k1 = d                      -- unbiased, can be negative;
* k2 = d^2 / 2                -- biased, low variance, >= 0;
* k3 = (e^{-d} - 1) + d       -- unbiased, >= 0 (the GRPO paper's eq. 4 form).

Controllers (Ziegler et al. 2019, arXiv 1909.08593, sec. 2.2): a fixed coefficient, or the
adaptive one ``coef <- coef * (1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon)``.
A controller never clamps or rewrites the coefficient it was given; bad arguments raise a
ValueError naming the argument. ``state_dict`` carries the current value (and the settings it
was produced under) so that a resumed run continues where it stopped; loading a state made
under different settings raises rather than silently picking one side.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str) -> Tensor:
    """Per-token KL estimate; logp, ref_logp: [B, T] log-probs of the sampled tokens -> [B, T]."""
    d = logp - ref_logp
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d**2
    if estimator == "k3":
        return torch.expm1(-d) + d
    raise ValueError(f"unknown KL estimator {estimator!r}; use one of {', '.join(KL_ESTIMATORS)}")


class FixedKLController:
    """A constant coefficient: ``update`` does nothing."""

    def __init__(self, coef: float):
        if coef < 0:
            raise ValueError(f"coef must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Kept for the controller interface; a fixed coefficient does not move."""

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "fixed", "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, "fixed")
        if state["value"] != self.value:
            raise ValueError(
                f"checkpoint's fixed KL coef {state['value']} differs from the configured "
                f"{self.value}; a fixed coefficient cannot change on resume"
            )


class AdaptiveKLController:
    """Ziegler et al.'s proportional controller steering the measured KL towards ``target``.

    init_coef: starting coefficient (> 0; a multiplicative update cannot leave 0).
    target: the KL (nats per sequence, as the trainer measures it) to aim for, > 0.
    horizon: steps over which a full 20% correction is applied, > 0.
    """

    def __init__(self, init_coef: float, target: float, horizon: int):
        for name, value in (("init_coef", init_coef), ("target", target), ("horizon", horizon)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """One controller step after ``n_steps`` samples (or batches) at measured ``current_kl``."""
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "adaptive",
            "value": self.value,
            "target": self.target,
            "horizon": self.horizon,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_kind(state, "adaptive")
        for key in ("target", "horizon"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"checkpoint's adaptive KL {key} {state[key]} differs from the configured "
                    f"{getattr(self, key)}"
                )
        self.value = float(state["value"])


def _check_kind(state: dict[str, Any], kind: str) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"expected a {kind} KL controller state, got {state.get('kind')!r}")
