"""How a locked SM clock changes a step's time and a GPU's draw: the model's law, fitted by the tuner.

Compute takes cycles, so its time scales as 1/f, f the SM clock as a share of the GPU's maximum; memory-bound
work does not slow. `clock_time_sensitivity` is the share of a compute phase that follows the clock (1: all
of it): a prompt's compute (under continuous batching inside the step's smooth maximum with the memory time
that hides it; the whole prefill in the batched reading), and under continuous batching a decode step's compute:
the step family's roofline term inside the same smooth maximum (memory-bound decode keeps its pace, but for the
share of its fixed per-step time that runs on the GPU's clock, `clock_step_share`), or, in the affine laws, the
compute share of the step's draw, B / (B + batch_half), as for a cap. The compute part of the
dynamic draw falls as f^`clock_draw_exponent` (dynamic power is f V^2 and the voltage falls with the clock:
between 1 and 3 in CMOS, 2 the prior). All three are the pair's own, fitted by tuner/clock.py from windows run at
different clocks; the catalogue's are generic.
"""

from __future__ import annotations

from typing import TypeVar, cast

import numpy as np
from numpy.typing import NDArray

from queuemodels.types import PowerProfile

Clock = TypeVar("Clock", float, NDArray[np.float64])


def slowed(sensitivity: float, clock: float | None) -> float:
    """Time multiplier of work whose share `sensitivity` follows 1 / a locked clock share (None: unlocked)."""
    return 1.0 if clock is None or clock >= 1.0 else 1.0 + sensitivity * (1.0 / clock - 1.0)


def clock_time_factor(profile: PowerProfile | None, clock: float | None, compute_share: float) -> float:
    """Time multiplier of a phase whose `compute_share` is compute, at a locked clock (None: unlocked)."""
    return 1.0 if profile is None else slowed(profile.clock_time_sensitivity * compute_share, clock)


def step_clock_factor(profile: PowerProfile | None, clock: float | None) -> float:
    """Time multiplier of a roofline decode step's fixed per-step time at a locked clock: its share that runs on
    the GPU's clock (`clock_step_share`, fitted) follows 1 / the clock, the host's part does not."""
    return 1.0 if profile is None else slowed(profile.clock_step_share, clock)


def clock_draw_scale(profile: PowerProfile, clock: Clock) -> Clock:
    """Share of the compute part of the dynamic draw left at a clock (1 at the maximum)."""
    if isinstance(clock, float):  # the scalar path, many times per law: numpy's scalar overhead dominates it
        return cast(Clock, min(clock, 1.0) ** profile.clock_draw_exponent)
    out: Clock = np.minimum(clock, 1.0) ** profile.clock_draw_exponent
    return out


def clock_share(clock: float | None) -> float:
    """The clock a shape runs at as a share of the maximum (1 when unlocked)."""
    return 1.0 if clock is None else min(1.0, clock)
