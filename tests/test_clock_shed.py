"""The governor's clock lever: where a budget drop makes the governor lower a GPU's limit under its draw, the
lowest-priority GPUs' clocks are locked down the same tick, while the limits still sum under the threshold every
tick; with clocks off the caps alone hold the drop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from fake_pynvml import FakeGpu, FakeNvml
from prometheus_client import CollectorRegistry

from controller.clock_shed import ClockShed
from controller.control import Controller
from controller.own_metrics import OwnMetrics
from controller.plan import Plan
from controller.settings import load_settings
from controller.telemetry.base import GpuSample
from controller.wiring import build_parts
from tuner import Tuner

PLAN = Plan.of(1, {"chat": {"H100-SXM": 600.0}, "code": {"H100-SXM": 600.0}}, {"chat": 1, "code": 2})
"""code (GPU 1) has the lower priority (the larger number): the governor cuts its GPU first. Neither service plans
a locked clock."""


def gpu(power_w: float, limit_w: float) -> GpuSample:
    return GpuSample(0, "GPU-a", "H100", power_w, None, limit_w, 200.0, 700.0, service="chat")


def test_a_hold_starts_where_the_limit_falls_under_the_draw_and_ends_at_the_plans_clock() -> None:
    shed = ClockShed(min_share=0.3)
    share = {"GPU-a": 1.0}

    def step(power_w: float, limit_before_w: float, limit_after_w: float) -> dict[int, float]:
        out = shed.step([gpu(power_w, limit_before_w)], {"GPU-a": limit_after_w},
                        {"GPU-a"} if limit_after_w < 600.0 else set(), lambda g: share[g.uuid], lambda g: 1.0)
        share["GPU-a"] = out.get(0, 1.0)
        return out

    assert step(603.0, 600.0, 600.0) == {}  # at its cap, a reading a little over it: no hold
    assert shed.step([gpu(650.0, 700.0)], {"GPU-a": 600.0}, set(), lambda g: 1.0, lambda g: 1.0) == {}  # the plan's
    # own cap under the draw binds as the plan chose: no hold
    first = step(500.0, 600.0, 300.0)[0]  # the governor cuts the limit to 300 W under a 500 W draw
    assert 0.5 < first < 0.6  # in proportion, less half the margin: the least the compute part sheds
    second = step(310.0, 300.0, 300.0)[0]  # still past the limit: lower again
    assert second < first
    assert step(296.0, 300.0, 300.0)[0] == second  # pressed against a limit kept: held inside the band
    third = step(270.0, 300.0, 300.0)[0]  # room under it: up to the aim, 292.5 W, and no further
    assert third == pytest.approx(second * 292.5 / 270.0)
    assert step(296.0, 300.0, 290.0)[0] < third  # a limit that fell under the draw's aim: lower
    rises = [step(150.0, 300.0, 600.0).get(0, 1.0) for _ in range(5)]  # the governor gives the cut back
    assert rises == sorted(rises) and rises[0] > second and rises[-1] == 1.0  # a step a tick back up...
    assert shed.holds == {}  # ...and released once the plan's clock is reached


def test_a_reading_past_what_the_gpu_can_draw_sheds_no_more_than_its_maximum_would() -> None:
    """One glitched reading (5,000 W on a 700 W GPU) counts as the GPU's maximum: it would otherwise send the hold
    to the floor, and the clock would take six ticks to climb back."""
    glitched, at_peak = ClockShed(min_share=0.3), ClockShed(min_share=0.3)
    hold = glitched.step([gpu(5000.0, 600.0)], {"GPU-a": 300.0}, {"GPU-a"}, lambda g: 1.0, lambda g: 1.0)[0]
    assert hold == at_peak.step([gpu(700.0, 600.0)], {"GPU-a": 300.0}, {"GPU-a"}, lambda g: 1.0, lambda g: 1.0)[0]
    assert hold > 0.3


def test_a_lock_lost_in_force_does_not_raise_the_hold() -> None:
    shed = ClockShed(min_share=0.3)
    first = shed.step([gpu(500.0, 600.0)], {"GPU-a": 300.0}, {"GPU-a"}, lambda g: 1.0, lambda g: 1.0)[0]
    # the lock failed its read-back and was dropped: the share in force reads 1.0, the GPU still past its limit
    again = shed.step([gpu(310.0, 300.0)], {"GPU-a": 300.0}, {"GPU-a"}, lambda g: 1.0, lambda g: 1.0)[0]
    assert again < first


def test_a_hold_never_goes_below_its_least_share_and_keeps_its_gpu_unread() -> None:
    shed = ClockShed(min_share=0.4)
    out = shed.step([gpu(650.0, 700.0)], {"GPU-a": 200.0}, {"GPU-a"}, lambda g: 1.0, lambda g: 1.0)
    assert out == {0: 0.4}
    unread = replace(gpu(650.0, 200.0), power_w=None)
    assert shed.step([unread], {"GPU-a": 200.0}, {"GPU-a"}, lambda g: 0.4, lambda g: 1.0) == {0: 0.4}
    nan = replace(unread, power_w=float("nan"))
    assert shed.step([nan], {"GPU-a": 200.0}, {"GPU-a"}, lambda g: 0.4, lambda g: 1.0) == {0: 0.4}
    assert shed.step([], {}, set(), lambda g: 0.4, lambda g: 1.0) == {} and shed.holds == {}  # gone from the listing


class Clock:
    """The simulated time the NVML actuators' raise gates read (the tests tick faster than the wall clock)."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def daemon(sim_config: Callable[..., Path], fake: FakeNvml, clocks: str) -> tuple[Controller, Clock]:
    path = sim_config({'gpu_source = "sim"': 'gpu_source = "nvml"', 'vllm_source = "sim"': 'vllm_source = "prometheus"',
                       'power = "sim"': f'power = "nvml"\nclocks = "{clocks}"', 'batch = "sim"': 'batch = "dry-run"',
                       'replicas = "sim"': 'replicas = "dry-run"', 'name = "chat"\nmodel = "llama-3.1-8b"':
                       'name = "chat"\nmodel = "llama-3.1-8b"\ngpus = [0]', 'name = "code"\nmodel = "qwen2.5-14b"':
                       'name = "code"\nmodel = "qwen2.5-14b"\ngpus = [1]'})
    s = load_settings(path)
    parts = build_parts(s, nvml=fake)
    ctl = Controller(s, parts.gpus, parts.vllm, parts.power, parts.batch, parts.replicas, Tuner(None),
                     OwnMetrics(CollectorRegistry()), clocks=parts.clocks)
    ctl.fast.plan = PLAN
    clock = Clock()
    for gated in (parts.power, parts.clocks):
        if gated is not None:
            gated.gate.clock = clock  # type: ignore[attr-defined]
    return ctl, clock


def budget_drop(ctl: Controller, clock: Clock, fake: FakeNvml) -> list[tuple[float, float, bool]]:
    """Ten seconds at a loose budget, a drop to 1000 W, twenty seconds there, then the budget back: per tick, the
    limits' sum, the threshold, and whether the low-priority GPU's demand (what it would draw uncapped, at its
    clock) fits under its limit: the cap need not bite it."""
    loose = ctl.fast.governor.settings
    out = []
    for t in range(1, 41):
        if t in (11, 31):
            ctl.fast.governor.settings = replace(loose, budget_w=1000.0) if t == 11 else loose
        clock.now_s = float(t)
        ctl.tick_fast(float(t))
        out.append((sum(g.limit_mw for g in fake.gpus) / 1000, ctl.fast.governor.threshold_w(),
                    fake.gpus[1].want_mw() <= fake.gpus[1].limit_mw))
    return out


def gpus() -> list[FakeGpu]:
    """Two GPUs at 550 W, 250 W of it compute that follows a locked clock."""
    return [FakeGpu(demand_mw=550_000, clock_mw=250_000), FakeGpu(demand_mw=550_000, clock_mw=250_000)]


def test_a_budget_drop_is_held_within_two_seconds_with_the_low_priority_clock_lowered_first(
        sim_config: Callable[..., Path]) -> None:
    fake = FakeNvml(gpus())
    ticks = budget_drop(*daemon(sim_config, fake, "nvml"), fake)
    assert all(limits <= threshold + 1e-6 for limits, threshold, _ in ticks[10:30])  # the hard rule, every tick
    # the lock falls in proportion to the draw, of which only the compute follows the clock: within three ticks
    # of the drop the cut GPU's clock sheds its draw under its limit, and the cap no longer has to
    assert all(fits for *_, fits in ticks[13:30])
    locks = [(i, mhz) for i, _, mhz in fake.locks]
    assert locks and locks[0][0] == 1 and min(mhz for _, mhz in locks) < 1980  # code, the lower priority, first
    assert all(g.locked_mhz is None for g in fake.gpus)  # given back after the drop


def test_the_lock_takes_the_draw_under_the_cut_limit_so_the_cap_need_not_bite(sim_config: Callable[..., Path]) \
        -> None:
    fake = FakeNvml(gpus())
    ctl, clock = daemon(sim_config, fake, "nvml")
    loose = ctl.fast.governor.settings
    for t in range(1, 20):
        if t == 11:
            ctl.fast.governor.settings = replace(loose, budget_w=1000.0)
        clock.now_s = float(t)
        ctl.tick_fast(float(t))
    code = fake.gpus[1]
    assert code.locked_mhz is not None and code.want_mw() <= code.limit_mw  # the clock sheds, the cap backs it
    assert ctl.fast.clocks is not None and list(ctl.fast.clocks.shed.holds) == [ctl.fast.samples[1].uuid]


def test_with_clocks_off_the_caps_alone_hold_the_drop(sim_config: Callable[..., Path]) -> None:
    for fake, clocks in ((FakeNvml(gpus()), "none"), (FakeNvml([replace(g, unsupported={"lock"}) for g in gpus()]),
                                                      "nvml")):
        ticks = budget_drop(*daemon(sim_config, fake, clocks), fake)
        assert all(limits <= threshold + 1e-6 for limits, threshold, _ in ticks[10:30])
        assert not any(fits for *_, fits in ticks[13:30])  # the cap alone bites the cut GPU's draw
        assert all(g.locked_mhz is None for g in fake.gpus) and not fake.locks


def test_under_a_ramp_limit_a_held_clock_is_given_back_as_the_ramp_gives_the_watts_back(
        sim_config: Callable[..., Path]) -> None:
    """A ramp gives room a step at a time to GPUs that press their limits. A held GPU aimed just under that band never
    pressed, its limit was lent down to the draw the lock kept low, and its clock stayed at a third for good (a
    trial: code's GPU, its SLO met on 0.19 of its requests, beside the same run's 1.0 with clocks off). Once the
    governor cuts it no more, its clock now climbs back a step a tick, and the ramp gives the watts as it would to a
    GPU never held."""
    fake = FakeNvml(gpus())
    ctl, clock = daemon(sim_config, fake, "nvml")
    loose = replace(ctl.fast.governor.settings, ramp_up_w_per_s=30.0)
    for t in range(1, 121):
        if t in (1, 11, 31):
            ctl.fast.governor.settings = replace(loose, budget_w=1000.0) if t == 11 else loose
        clock.now_s = float(t)
        ctl.tick_fast(float(t))
        assert sum(g.limit_mw for g in fake.gpus) / 1000 <= ctl.fast.governor.threshold_w() + 1e-6
    assert fake.locks and all(g.locked_mhz is None for g in fake.gpus)
    assert ctl.fast.clocks is not None and ctl.fast.clocks.shed.holds == {}
