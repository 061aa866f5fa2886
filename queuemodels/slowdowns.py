"""How a power cap and a locked SM clock slow each phase of a step (the continuous and batched laws read them).

A cap slows the clock the GPU runs at once it would draw more than the cap; a lock sets the clock. A GPU under
both runs at the lower of the two, so each phase takes the larger of the two slow-downs alone, never their
product: a lock never makes a capped GPU faster, and where the cap slows a phase more, the lock changes nothing.
"""

from __future__ import annotations

from queuemodels.clock import clock_time_factor
from queuemodels.power import natural_draw_w, prompt_draw_w
from queuemodels.roofline import Roofline
from queuemodels.types import Load, PowerProfile, ServerShape, ServiceParams


def cap_factors(profile: PowerProfile | None, power_cap_w: float | None,
                clock: float | None = None) -> tuple[float, float]:
    """(prefill, decode) time multipliers a power cap and a locked clock share cause; (1, 1) when neither.
    A GPU under both runs at the lower of the two clocks: the lock's, or the one the cap lets it draw. So each
    phase takes the larger of the two slow-downs, the lock's and the cap's alone; a lock never makes a capped
    GPU faster (decode's, in the batched reading: `capped_law`)."""
    if profile is None:
        return 1.0, 1.0
    prefill_clock = clock_time_factor(profile, clock, 1.0)
    if power_cap_w is None:
        return prefill_clock, 1.0
    squeeze = max(0.0, prompt_draw_w(profile) / power_cap_w - 1.0)
    return max(prefill_clock, 1.0 + profile.prefill_sensitivity * squeeze), 1.0 + profile.decode_sensitivity * squeeze


def decode_cap_factor(profile: PowerProfile | None, power_cap_w: float | None, batch: float,
                      clock: float | None = None) -> float:
    """Time multiplier of a decode step at `batch` under a cap. A cap slows the compute in a step, as it slows
    prompts (prefill_sensitivity), and only once the step would draw more than the cap: a small batch is
    memory-bound and draws well below the peak, so a cap may never bite it. The compute share of a decode
    step is what its draw says: the part of the dynamic draw above the memory-bound base, B / (B + batch_half).
    A locked clock slows that compute share by itself; under a cap as well, the step runs at the lower of the
    lock and the clock the cap allows, so it takes the larger of the two slow-downs (`cap_factors`)."""
    if profile is None:
        return 1.0
    compute_share = batch / (batch + profile.batch_half)
    by_clock = clock_time_factor(profile, clock, compute_share)
    if power_cap_w is None:
        return by_clock
    squeeze = max(0.0, natural_draw_w(profile, batch) / power_cap_w - 1.0)
    return max(by_clock, 1.0 + profile.prefill_sensitivity * compute_share * squeeze)


def capped_decode(d0: float, d1: float, profile: PowerProfile | None, max_batch: int, power_cap_w: float | None,
                  clock: float | None) -> tuple[float, float]:
    """(d0, d1) of the capped decode step: the line through its times at batch 1 and at the max batch, so
    the law stays affine and is exact where it matters most (light load, and the full batch of saturation)."""
    n = float(max_batch)
    at_one = (d0 + d1) * decode_cap_factor(profile, power_cap_w, 1.0, clock)
    if n <= 1.0:
        return d0 * at_one / (d0 + d1), d1 * at_one / (d0 + d1)
    slope = ((d0 + d1 * n) * decode_cap_factor(profile, power_cap_w, n, clock) - at_one) / (n - 1.0)
    return at_one - slope, slope


def decode_lock(params: ServiceParams, load: Load, profile: PowerProfile | None, shape: ServerShape, d0: float,
                d1: float) -> float:
    """What a lock multiplies a roofline law's decode compute by (`Roofline.of`: memory-bound decode keeps its pace).
    Under a cap as well the GPU runs at the lower clock: where the cap slows the full batch's step more than the
    lock would, the cap sets the clock and the lock changes nothing (1.0)."""
    lock = clock_time_factor(profile, shape.sm_clock_fraction, 1.0)
    if lock <= 1.0 or shape.power_cap_w is None:
        return lock
    n = float(shape.max_batch)
    by_lock = (d0 + d1 * n + Roofline.of(params, load, 1.0, lock).bend_ms(n)) / (d0 + d1 * n + Roofline.of(
        params, load).bend_ms(n))
    return lock if by_lock >= decode_cap_factor(profile, shape.power_cap_w, n) else 1.0
