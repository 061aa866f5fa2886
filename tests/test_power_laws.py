"""GPU power laws: the default is the original law to the bit, each law keeps the limit, and the host and probe
pick one per GPU type."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.hardware import MIN_CLOCK_FRACTION, SPECS, SimGPU
from simulator.host import SimHost
from simulator.power_law import POWER_LAWS, get_power_law
from simulator.probe import Replica

H100 = SPECS["H100-SXM"]
DECODE = (1.0, 6.0, 1.0)
"""A memory-bound step (compute, memory, overhead ms): a small batch's decode."""
PREFILL = (30.0, 6.0, 1.0)
"""A compute-bound one: a long prompt's."""


def run(law: str, limit_w: float, parts: tuple[float, float, float]) -> tuple[float, float, float]:
    gpu = SimGPU(0, H100, get_power_law(law))
    gpu.set_power_limit(limit_w)
    return gpu.run_step(*parts)


def original_draw_w(clock: float, compute_ms: float, memory_ms: float, overhead_ms: float) -> float:
    """The draw as the simulator computed it before power laws, operation for operation."""
    step = overhead_ms + ((memory_ms**3 + (compute_ms / clock) ** 3) ** (1.0 / 3.0))
    u_c, u_m = (compute_ms / clock) / step, memory_ms / step
    return float(H100.idle_w + H100.compute_w * u_c * clock**2.4 + H100.memory_w * u_m)


@pytest.mark.parametrize("limit_w", [700.0, 600.0, 420.0, 250.0, 200.0])
@pytest.mark.parametrize("parts", [DECODE, PREFILL])
def test_the_default_law_is_the_original_one_to_the_bit(limit_w: float, parts: tuple[float, float, float]) -> None:
    gpu = SimGPU(0, H100)
    gpu.set_power_limit(limit_w)
    clock, draw_w, _ = gpu.run_step(*parts)
    assert draw_w == original_draw_w(clock, *parts)
    assert clock == 1.0 or original_draw_w(min(1.0, clock + 1e-3), *parts) > limit_w  # the same clock found


@given(st.sampled_from(sorted(POWER_LAWS)), st.floats(H100.min_limit_w, H100.max_limit_w),
       st.floats(0.1, 100.0), st.floats(0.1, 100.0))
def test_no_law_draws_past_the_limit_but_where_it_says_it_may(law: str, limit_w: float, compute_ms: float,
                                                             memory_ms: float) -> None:
    clock, draw_w, step_ms = run(law, limit_w, (compute_ms, memory_ms, 1.0))
    assert MIN_CLOCK_FRACTION <= clock <= 1.0 and step_ms > 0.0
    if draw_w > limit_w + 1e-9:  # only the lowest clock overdraws, where the law does not throttle
        assert clock == MIN_CLOCK_FRACTION and not POWER_LAWS[law].throttles_memory


@pytest.mark.parametrize("law", sorted(POWER_LAWS))
def test_draw_rises_with_the_clock(law: str) -> None:
    """The cap's bisection needs it: a law whose draw fell with the clock would settle anywhere."""
    shares = np.linspace(MIN_CLOCK_FRACTION, 1.0, 200)
    draws = [get_power_law(law).clock_draw(float(s)) for s in shares]
    assert all(b > a for a, b in pairwise(draws)) and draws[-1] == 1.0


def test_voltage_floor_makes_deep_caps_dear_and_shallow_ones_cheap() -> None:
    """Above the floor draw falls as s^3, below it only as s: the same compute-bound step runs faster than under
    the default law at a shallow cap and slower at a deep one."""
    assert run("voltage-floor", 600.0, PREFILL)[2] < run("dynamic", 600.0, PREFILL)[2]
    assert run("voltage-floor", 200.0, PREFILL)[2] > 1.1 * run("dynamic", 200.0, PREFILL)[2]


def test_memory_heavy_draws_more_at_small_batches_and_a_cap_slows_its_decode() -> None:
    """A decode step the default law runs untouched under a 60 % cap (its draw is below it) is slowed under the
    memory-heavy law, which draws past the cap on memory traffic: the step is stretched until its draw fits."""
    free = run("memory-heavy", 700.0, DECODE)
    assert free[1] > run("dynamic", 700.0, DECODE)[1] + 100.0
    default_capped, heavy_capped = run("dynamic", 420.0, DECODE), run("memory-heavy", 420.0, DECODE)
    assert default_capped[2] == free[2]  # unchanged: the default law's decode draws below 420 W
    assert heavy_capped[1] == pytest.approx(420.0) and heavy_capped[2] > 1.2 * free[2]
    # its energy above idle is the same, spent at the limit
    lowest = SimGPU(0, H100, get_power_law("memory-heavy"))
    unthrottled_w, unthrottled_ms = lowest._draw_and_ms(MIN_CLOCK_FRACTION, *DECODE, 0.0)
    assert (heavy_capped[1] - H100.idle_w) * heavy_capped[2] == pytest.approx(
        (unthrottled_w - H100.idle_w) * unthrottled_ms)


def test_the_host_and_the_probe_pick_a_law_per_gpu_type() -> None:
    host = SimHost("H100-SXM", 1, gpu_types=["H100-SXM", "L40S"], power_laws={"L40S": "memory-heavy"})
    assert [g.law.name for g in host.gpus] == ["dynamic", "memory-heavy"]
    engine = Replica("llama-3.1-8b", "H100-SXM", power_law="voltage-floor").engine(8, None, np.random.default_rng(0))
    assert engine.gpu.law.name == "voltage-floor"
    with pytest.raises(ValueError, match=r"power law: unknown 'cubic', expected one of \['dynamic'"):
        SimHost("H100-SXM", 1, power_laws={"H100-SXM": "cubic"})
