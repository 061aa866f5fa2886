"""Service-time families of REFERENCE.md section 1, reduced to affine laws in the batch size.

Both families give per-step times that are affine in the batch B, so one request's service time
tau(B) = prefill(B) + k * decode(B) is affine too and the effective concurrency can be inverted exactly.
Power caps scale the prefill and decode laws separately (compute-bound vs memory-bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from queuemodels.types import Load, PowerProfile, ServiceParams

Batch = TypeVar("Batch", float, NDArray[np.float64])


@dataclass(frozen=True)
class StepLaw:
    """prefill(B) = p0 + p1 B, decode(B) = d0 + d1 B (ms); a request takes one prefill and
    `decode_steps` decodes, so tau(B) = t0 + t1 B."""

    p0: float
    p1: float
    d0: float
    d1: float
    decode_steps: float

    def prefill(self, batch: Batch) -> Batch:
        return self.p0 + self.p1 * batch

    def decode(self, batch: Batch) -> Batch:
        return self.d0 + self.d1 * batch

    @property
    def t0(self) -> float:
        return self.p0 + self.decode_steps * self.d0

    @property
    def t1(self) -> float:
        return self.p1 + self.decode_steps * self.d1

    def scaled(self, prefill_factor: float, decode_factor: float) -> StepLaw:
        return StepLaw(
            self.p0 * prefill_factor,
            self.p1 * prefill_factor,
            self.d0 * decode_factor,
            self.d1 * decode_factor,
            self.decode_steps,
        )


def step_law(params: ServiceParams, load: Load) -> StepLaw:
    """The family's per-step laws at a load's mean token counts."""
    n_in, m = load.in_tokens, load.out_tokens
    if params.family == "gen1":
        return StepLaw(params.gamma_ms, params.delta_ms * n_in, params.alpha_ms, params.beta_ms, m - 1)
    per_seq = params.beta_ms * (n_in + m) / (m + 1) + params.gamma_ms * (n_in + m / 2)
    prefill_extra = (params.beta_ms + params.gamma_ms) * n_in
    decode_extra = params.beta_ms + params.gamma_ms * (n_in + (m + 1) / 2)
    return StepLaw(params.alpha_ms + prefill_extra, per_seq, params.alpha_ms + decode_extra, per_seq, m)


def cap_factors(profile: PowerProfile | None, power_cap_w: float | None) -> tuple[float, float]:
    """(prefill, decode) time multipliers a power cap causes; (1, 1) when uncapped."""
    if profile is None or power_cap_w is None:
        return 1.0, 1.0
    knee_w = profile.knee_fraction * profile.max_power_w
    squeeze = max(0.0, knee_w / power_cap_w - 1.0)
    return 1.0 + profile.prefill_sensitivity * squeeze, 1.0 + profile.decode_sensitivity * squeeze


def capped_law(
    params: ServiceParams, load: Load, profile: PowerProfile | None, power_cap_w: float | None
) -> StepLaw:
    """The step law at a power cap."""
    prefill_factor, decode_factor = cap_factors(profile, power_cap_w)
    return step_law(params, load).scaled(prefill_factor, decode_factor)
