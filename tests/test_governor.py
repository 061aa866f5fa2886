"""The fast-loop governor against a plant whose GPUs draw min(natural draw, limit)."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from actuators import TransientActuatorError
from controller.fast_loop import FastLoop
from controller.governor import PowerGovernor
from controller.limit_pressure import accounted_w
from controller.own_metrics import OwnMetrics
from controller.plan import FloorAlarm, Plan
from controller.power_rooms import safe_caps
from controller.settings import PowerDomainSettings, PowerSettings
from controller.telemetry.base import GpuSample

OWNERS = {0: "chat", 1: "chat", 2: "bulk", 3: "bulk"}
PRIORITIES = {"chat": 1, "bulk": 2}
PLAN = Plan.of(1, {"chat": {"H100": 700.0}, "bulk": {"H100": 700.0}}, PRIORITIES)


class Plant:
    """Four GPUs at their limits or their natural draw, whichever is lower."""

    def __init__(self, natural_w: dict[int, float]) -> None:
        self.natural_w = dict(natural_w)
        self.limit_w = {i: 700.0 for i in OWNERS}

    def samples(self) -> list[GpuSample]:
        return [GpuSample(i, f"GPU-{i}", "H100", min(self.natural_w[i], self.limit_w[i]), None, self.limit_w[i],
                          200.0, 700.0, service=OWNERS[i]) for i in OWNERS]

    def tick(self, governor: PowerGovernor, plan: Plan = PLAN) -> float:
        """One fast tick: read, let the governor set limits; returns the draw it read."""
        samples = self.samples()
        self.limit_w.update(governor.step(samples, plan))
        return sum(s.power_w or 0.0 for s in samples)


def test_an_overdraw_is_cut_from_the_lowest_priority_first() -> None:
    governor = PowerGovernor(PowerSettings(budget_w=2000.0))
    plant = Plant({0: 500.0, 1: 500.0, 2: 600.0, 3: 600.0})  # 2200 W against 1940 W of threshold
    plant.tick(governor)
    assert governor.emergency
    assert plant.limit_w[0] >= 500.0 and plant.limit_w[1] >= 500.0  # chat draws what it did
    assert max(plant.limit_w[2], plant.limit_w[3]) < 600.0
    assert sum(s.power_w or 0.0 for s in plant.samples()) <= 2000.0 * 0.97 + 1e-6


@pytest.mark.parametrize("rack_w", [1000.0, 1300.0])
def test_a_rack_and_the_site_over_at_once_cut_the_larger_excess_not_both(rack_w: float) -> None:
    """bulk's rack 30 W over its 970-W line and the site 260 W over its threshold: both cut in full took 490 W,
    held bulk at 710 W (its rack allows 970, the site 940) and the site at 1,710 W, over the release line for good.
    Cut for the larger excess, bulk is held as with no rack (1,300 W: a rack that never binds)."""
    free = PowerGovernor(PowerSettings(budget_w=2000.0))
    racked = PowerGovernor(PowerSettings(budget_w=2000.0, domains=(PowerDomainSettings("rack", rack_w, (2, 3)),)))
    alone, both = (Plant({0: 500.0, 1: 500.0, 2: 600.0, 3: 600.0}) for _ in range(2))
    draws = [(alone.tick(free), both.tick(racked)) for _ in range(60)]
    assert all(b == pytest.approx(a) for a, b in draws)  # every tick: the first's cut the site's 260 W, not 490
    assert both.limit_w == pytest.approx(alone.limit_w)
    assert both.limit_w[2] + both.limit_w[3] <= rack_w * 0.97


def test_exhausted_only_once_every_limit_is_at_its_floor_over_budget() -> None:
    """A cut that fits under the threshold is an emergency, not exhaustion; a budget under four GPUs' 200-W
    floors is both, until the draw falls under it (a replica stopped)."""
    governor = PowerGovernor(PowerSettings(budget_w=2000.0))
    plant = Plant({0: 500.0, 1: 500.0, 2: 600.0, 3: 600.0})
    plant.tick(governor)
    assert governor.emergency and not governor.exhausted
    governor.settings = replace(governor.settings, budget_w=700.0)
    plant.tick(governor)
    assert governor.exhausted and all(v == 200.0 for v in plant.limit_w.values())
    plant.natural_w.update({2: 60.0, 3: 60.0})  # bulk's replicas stopped: idle draw
    plant.tick(governor)
    assert not governor.exhausted


def test_the_early_slow_tick_is_asked_once_a_slow_period_when_the_floor_flickers() -> None:
    """Four GPUs whose 200-W floors draw 800 W against a 776-W threshold, one dipping every other tick (noise):
    the alarm asks the slow loop for an early tick once, not every other tick, and again only a slow period
    later."""
    governor = PowerGovernor(PowerSettings(budget_w=800.0))
    plant = Plant({0: 500.0, 1: 500.0, 2: 500.0, 3: 500.0})
    alarm = FloorAlarm()
    asked = []
    for k in range(40):
        plant.natural_w[3] = 150.0 if k % 2 else 500.0
        plant.tick(governor)
        if alarm.ring(float(k), governor.exhausted, 15.0):
            asked.append(k)
    assert asked == [0, 16, 32]


def test_a_release_never_carries_the_draw_back_over_the_threshold() -> None:
    """bulk's load spikes (cuts follow), then chat's falls away: the spare below the release line is given
    back to bulk a watt of limit for a watt of spare, so the site never crosses the threshold again, and once
    the spare allows, every cut is gone."""
    settings = PowerSettings(budget_w=2000.0)
    governor = PowerGovernor(settings)
    plant = Plant({0: 450.0, 1: 450.0, 2: 650.0, 3: 650.0})
    for _ in range(3):
        plant.tick(governor)
    assert governor.cut_w
    plant.natural_w.update({0: 150.0, 1: 150.0})  # chat quiet: 1600 W natural, below the release line
    reads = [plant.tick(governor) for _ in range(10)]
    assert all(w <= settings.budget_w * (1 - settings.headroom) + 1e-6 for w in reads), reads
    assert not governor.cut_w and plant.limit_w[2] >= 650.0 and plant.limit_w[3] >= 650.0  # bulk unthrottled
    plant.natural_w.update({0: 400.0, 1: 400.0})  # 2100 W natural: cut again, bulk first
    plant.tick(governor)
    reads = [plant.tick(governor) for _ in range(10)]
    assert all(w <= settings.budget_w * (1 - settings.headroom) + 1e-6 for w in reads), reads
    assert plant.limit_w[0] >= 400.0 and plant.limit_w[1] >= 400.0


def test_one_release_gives_back_no_more_than_the_spare() -> None:
    """The state a cut-release cycle passes through: bulk held at 275 W by cuts of 425 W, chat busy, 1650 W
    read (under the release line). Halving the cuts would raise bulk to 487 W each and read 2075 W next
    tick, over the budget; giving back only the 290 W of spare reads 1940 W, the threshold itself."""
    settings = PowerSettings(budget_w=2000.0)
    governor = PowerGovernor(settings)
    governor.cut_w = {"GPU-2": 425.0, "GPU-3": 425.0}
    plant = Plant({0: 550.0, 1: 550.0, 2: 700.0, 3: 700.0})
    plant.limit_w.update({2: 275.0, 3: 275.0})
    assert plant.tick(governor) == 1650.0 and not governor.emergency
    assert sum(s.power_w or 0.0 for s in plant.samples()) <= settings.budget_w * (1 - settings.headroom) + 1e-6


def test_a_gpu_without_a_reading_counts_at_its_limit() -> None:
    governor = PowerGovernor(PowerSettings(budget_w=2000.0))
    blind = [GpuSample(i, f"GPU-{i}", "H100", None, None, 700.0, 200.0, 700.0, service=OWNERS[i]) for i in OWNERS]
    governor.step(blind, PLAN)
    assert governor.emergency  # 4 x 700 W assumed, not 0


def test_a_nan_reading_counts_as_none_and_keeps_the_ramp() -> None:
    """A NaN passes every comparison: counted as a reading it lifted the ramp's ceiling (min(threshold, nan)) and
    hid an overdraw. It counts at the GPU's limit, as no reading does."""
    governor = PowerGovernor(PowerSettings(budget_w=4000.0, ramp_up_w_per_s=10.0), interval_s=1.0)
    capped = [GpuSample(i, f"GPU-{i}", "H100", 300.0 if i else float("nan"), None, 300.0, 200.0, 700.0,
                        service=OWNERS[i]) for i in OWNERS]
    limits = governor.step(capped, PLAN)
    assert sum(limits.get(g.index, g.power_limit_w) for g in capped) <= 4 * 300.0 + 10.0 + 1e-6
    tight = PowerGovernor(PowerSettings(budget_w=2000.0))
    tight.step([replace(g, power_w=float("nan"), power_limit_w=700.0) for g in capped], PLAN)
    assert tight.emergency  # 4 x 700 W counted, not NaN


def test_no_load_jump_carries_the_site_over_its_threshold() -> None:
    """Natural draws jump anywhere between idle and peak from one tick to the next: the limits in force always
    sum under the threshold, so the next reading does too, whatever the load does."""
    settings = PowerSettings(budget_w=2000.0)
    governor = PowerGovernor(settings)
    plant = Plant({i: 300.0 for i in OWNERS})
    rng = np.random.default_rng(3)
    for _ in range(300):
        plant.natural_w = {i: float(rng.uniform(80.0, 700.0)) for i in OWNERS}
        assert plant.tick(governor) <= settings.budget_w * (1 - settings.headroom) + 1e-6
        assert sum(plant.limit_w.values()) <= settings.budget_w * (1 - settings.headroom) + 1e-6


def test_when_every_gpu_wants_more_the_first_priority_gets_it() -> None:
    governor = PowerGovernor(PowerSettings(budget_w=2000.0))
    plant = Plant({i: 700.0 for i in OWNERS})
    for _ in range(30):
        plant.tick(governor)
    chat, bulk = plant.limit_w[0] + plant.limit_w[1], plant.limit_w[2] + plant.limit_w[3]
    assert chat >= 2 * 660.0 and bulk <= 1940.0 - chat + 1e-6


def test_a_cut_follows_its_gpu_by_uuid_not_by_position() -> None:
    governor = PowerGovernor(PowerSettings(budget_w=2000.0))
    governor.cut_w = {"GPU-2": 300.0}
    samples = Plant({i: 480.0 for i in OWNERS}).samples()  # between the release line and the threshold
    moved = [dataclasses.replace(g, index=3 - g.index) for g in samples]  # the listing's order changed
    limits = governor.step(moved, PLAN)
    assert limits[1] <= 400.0  # GPU-2, now listed as index 1, keeps its cut
    assert set(governor.cut_w) == {"GPU-2"}


def test_safe_caps_fit_the_budget_and_each_gpus_own_limits() -> None:
    h100 = GpuSample(0, "GPU-a", "H100", None, None, 700.0, 200.0, 700.0)
    l40s = GpuSample(1, "GPU-b", "L40S", None, None, 350.0, 100.0, 350.0)
    caps, fits = safe_caps([h100, l40s, dataclasses.replace(l40s, index=2, uuid="GPU-c")], 900.0)
    assert fits and sum(caps.values()) <= 900.0 + 1e-6
    assert 200.0 <= caps[0] <= 700.0 and all(100.0 <= caps[i] <= 350.0 for i in (1, 2))
    caps, fits = safe_caps([h100, l40s], 250.0)  # the minima alone are 300 W
    assert not fits and caps == {0: 200.0, 1: 100.0}


def fast_on(plant: Any, caps_w: dict[str, float], priorities: dict[str, int],
            on_error: Callable[[str, str], None] = lambda kind, message: None) -> FastLoop:
    """A fast loop on `plant` (its GPUs' source and their limiter) under 1,000 W, each service of A100s at its cap
    and priority."""
    fast = FastLoop(PowerSettings(budget_w=1000.0), 3, plant, plant, OwnMetrics(CollectorRegistry()), on_error)
    fast.plan = Plan.of(1, {name: {"A100": w} for name, w in caps_w.items()}, priorities)
    return fast


class StuckPlant:
    """Two GPUs; GPU 0's limit cannot be changed (every set fails, as NVML's would when busy)."""

    name = "stuck"

    def __init__(self) -> None:
        self.limit_w = {0: 500.0, 1: 450.0}

    def sample(self, now: float) -> list[GpuSample]:
        return [GpuSample(0, "a", "A100", 480.0, None, self.limit_w[0], 100.0, 700.0, service="lo"),
                GpuSample(1, "b", "A100", self.limit_w[1] - 2.0, None, self.limit_w[1], 100.0, 700.0, service="hi")]

    def set_power_limit(self, gpu_index: int, watts: float) -> float:
        if gpu_index == 0:
            raise TransientActuatorError("GPU 0: NVML busy", delay_s=1.0)
        self.limit_w[gpu_index] = watts
        return watts


def test_a_gpu_whose_limit_cannot_be_set_is_fitted_around_not_over_the_budget() -> None:
    """The governor would lower GPU 0 to make room for GPU 1 (higher priority); GPU 0's sets fail, so it is
    counted at the limit it keeps and GPU 1 gets only the room left: the limits in force never sum over."""
    plant = StuckPlant()
    fast = fast_on(plant, {"lo": 500.0, "hi": 700.0}, {"lo": 2, "hi": 1})
    for t in range(1, 26):
        fast.tick(float(t))
        assert sum(plant.limit_w.values()) <= 970.0 + 2.0, (t, plant.limit_w)
    assert plant.limit_w[0] == 500.0 and plant.limit_w[1] > 450.0  # GPU 1 grew into what room there was



def test_a_threshold_under_the_gpus_lowest_limits_is_said_as_it_starts_and_as_it_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    """Two A100s' 100-W floors under a budget dropped to 150 W: every GPU is held at its floor, and the caps the plan
    gives above it do not apply. Said once as it starts, not each tick, and once as the budget comes back."""
    plant = StuckPlant()
    fast = fast_on(plant, {"lo": 500.0, "hi": 700.0}, {"lo": 2, "hi": 1})
    with caplog.at_level(logging.INFO, logger="wattscale.governor"):
        fast.tick(1.0)
        fast.governor.settings = replace(fast.governor.settings, budget_w=150.0)
        for t in range(2, 6):
            fast.tick(float(t))
        fast.governor.settings = replace(fast.governor.settings, budget_w=1000.0)
        fast.tick(6.0)
        fast.tick(7.0)
    said = [r.getMessage() for r in caplog.records if "lowest limits" in r.getMessage()]
    assert said == ["power: the GPUs' lowest limits, 200 W, sum above the 146-W threshold: every GPU is held at its "
                    "lowest limit, and a cap planned above it does not apply",
                    "power: the 970-W threshold is above the GPUs' lowest limits, 200 W, again"], said

class BuggyPlant(StuckPlant):
    """StuckPlant whose GPU 0 set raises what no backend should (an error it did not translate, or round(nan))."""

    def set_power_limit(self, gpu_index: int, watts: float) -> float:
        if gpu_index == 0:
            raise ValueError("cannot convert float NaN to integer")
        return super().set_power_limit(gpu_index, watts)


def test_an_error_a_backend_did_not_translate_is_one_gpus_failure_not_the_ticks() -> None:
    """A RuntimeError from the limiter had failed every tick with a traceback, no limit set, and no failsafe: the
    budget broken while the metrics went on. Now it is GPU 0's failure, counted and retried; GPU 1 is fitted
    around it as around any GPU whose set fails."""
    plant = BuggyPlant()
    fast = fast_on(plant, {"lo": 500.0, "hi": 700.0}, {"lo": 2, "hi": 1})
    for t in range(1, 26):
        fast.tick(float(t))
        assert sum(plant.limit_w.values()) <= 970.0 + 2.0, (t, plant.limit_w)
    assert plant.limit_w[0] == 500.0 and plant.limit_w[1] > 450.0
    errors = fast.metrics.errors.labels("power_actuator")._value.get()
    assert 3 <= errors <= 25  # retried with backoff, each failure counted


class BlindPlant(StuckPlant):
    """StuckPlant whose every set succeeds and whose readings can be lost (`blind`)."""

    blind = False

    def sample(self, now: float) -> list[GpuSample]:
        if self.blind:
            raise TimeoutError("the exporter does not answer")
        return super().sample(now)

    def set_power_limit(self, gpu_index: int, watts: float) -> float:
        self.limit_w[gpu_index] = watts
        return watts


def blinded(plant: BlindPlant, caps_w: dict[str, float]) -> tuple[FastLoop, dict[int, float]]:
    """A fast loop on `plant` ("lo" priority 2, "hi" 1) after five ticks that read it, gone blind since; and the
    limits in force before."""
    fast = fast_on(plant, caps_w, {"lo": 2, "hi": 1})
    for t in range(1, 6):
        fast.tick(float(t))
    plant.blind = True
    return fast, dict(plant.limit_w)


def test_a_budget_cut_while_the_readings_are_lost_is_held_at_the_next_tick() -> None:
    """The readings fail and the budget falls in the same second: safe caps came only with the third lost tick
    (failsafe_after_ticks), the site over its new budget until then. Now the first lost tick under a lower
    threshold cuts what the limits in force pass it by, lowest priority first; a fall the limits already fit
    moves nothing."""
    plant = BlindPlant()
    fast, before = blinded(plant, {"lo": 500.0, "hi": 700.0})
    fast.governor.settings = replace(fast.governor.settings, budget_w=995.0)  # 965 W: the limits fit it
    fast.tick(6.0)
    assert plant.limit_w == before and sum(before.values()) <= 965.0
    fast.governor.settings = replace(fast.governor.settings, budget_w=500.0)  # 485 W
    fast.tick(7.0)
    assert not fast.blind.failsafe_on and sum(plant.limit_w.values()) <= 500.0 * 0.97 + 1e-6, plant.limit_w
    assert fast.metrics.emergency._value.get() == 1.0
    fast.tick(8.0)
    assert fast.blind.failsafe_on  # the third lost tick: safe caps as before
    plant.blind = False
    fast.tick(9.0)
    assert not fast.blind.failsafe_on and fast.blind.lost == 0


class IdlingPlant(BlindPlant):
    """BlindPlant whose two GPUs draw 300 W each, well under their limits."""

    def sample(self, now: float) -> list[GpuSample]:
        return [replace(g, power_w=300.0) for g in super().sample(now)]


def test_a_blind_cut_takes_the_excess_alone_from_the_lowest_priority() -> None:
    """Stepped on limits as draws, the governor read every GPU as pressed: it grew the higher priority's limit out
    of the lower's, and the cut applied (decreases only) took twice the excess or more from the lower priority."""
    plant = IdlingPlant()
    fast, before = blinded(plant, {"lo": 700.0, "hi": 700.0})
    fast.governor.settings = replace(fast.governor.settings, budget_w=800.0)  # 776 W
    fast.tick(6.0)
    excess = sum(before.values()) - 776.0
    assert excess > 50.0 and plant.limit_w[1] == before[1]  # "hi" (priority 1) keeps its limit
    assert before[0] - plant.limit_w[0] == pytest.approx(excess, abs=1.0)  # "lo" gives the excess, no more
    assert fast.governor.cut_w == {} and not fast.governor.exhausted  # the governor's own state as it was


def test_a_blind_cut_of_under_a_watt_a_gpu_is_set() -> None:
    """Twenty-four GPUs gone blind, the budget lowered 10 W under their limits: shared out in proportion to room, each
    GPU's share was under a watt, no fall was set (only those of a watt or more were), and the site stayed 10 W over
    until the fail-safe's third tick (a review; the limits now fit the line exactly, with no watt a GPU to spare)."""

    class Many(BlindPlant):
        def __init__(self) -> None:
            super().__init__()
            self.limit_w = {i: 300.0 for i in range(24)}

        def sample(self, now: float) -> list[GpuSample]:
            if self.blind:
                raise TimeoutError("the exporter does not answer")
            return [GpuSample(i, f"GPU-{i}", "A100", w - 50.0, None, w, 100.0, 400.0, service="lo")
                    for i, w in self.limit_w.items()]

    plant = Many()
    fast = FastLoop(PowerSettings(budget_w=10_000.0), 3, plant, plant, OwnMetrics(CollectorRegistry()),
                    lambda kind, message: None)
    fast.plan = Plan.of(1, {"lo": {"A100": 300.0}}, {"lo": 1})
    for t in range(1, 6):
        fast.tick(float(t))
    plant.blind = True
    threshold = sum(plant.limit_w.values()) - 10.0
    fast.governor.settings = replace(fast.governor.settings, budget_w=threshold / 0.97)
    fast.tick(6.0)
    assert not fast.blind.failsafe_on and sum(plant.limit_w.values()) <= threshold + 1e-6, sum(plant.limit_w.values())


def test_a_domain_line_cut_while_the_readings_are_lost_is_held_at_the_next_tick() -> None:
    """A rack's limit lowered while blind waited the whole failsafe count: the cut compared the site's threshold
    alone."""
    plant = BlindPlant()
    fast, before = blinded(plant, {"lo": 500.0, "hi": 700.0})
    assert before[1] > 400.0
    rack = PowerDomainSettings("rack", 400.0, (1,))
    fast.governor.settings = replace(fast.governor.settings, domains=(rack,))
    fast.tick(6.0)
    assert not fast.blind.failsafe_on and plant.limit_w[1] <= 400.0 * 0.97 + 1e-6, plant.limit_w


class AllLeave(BlindPlant):
    """BlindPlant whose GPUs all leave the site for good at once (`gone`): listed no more, and said to have left."""

    gone = False

    def sample(self, now: float) -> list[GpuSample]:
        return [] if self.gone else super().sample(now)

    def departed(self) -> frozenset[str]:
        return frozenset({"a", "b"}) if self.gone else frozenset()


def test_every_gpu_leaving_for_good_at_once_is_retired_not_a_lost_sample() -> None:
    """The last node of a site deleted: its GPUs listed none and were said to have left, but the empty listing was
    refused as a lost sample first, so they were never retired and safe caps went to GPUs that were not there."""
    plant = AllLeave()
    fast = fast_on(plant, {"lo": 500.0, "hi": 700.0}, {"lo": 2, "hi": 1})
    fast.tick(1.0)
    plant.gone = True
    for t in range(2, 8):
        fast.tick(float(t))
    assert fast.blind.lost == 0 and not fast.blind.failsafe_on and not fast.listing.seen


class HalfLeave(BlindPlant):
    """BlindPlant whose GPU 'a' leaves for good (`gone`) while GPU 'b' reads no power."""

    gone = False

    def sample(self, now: float) -> list[GpuSample]:
        listing = super().sample(now)
        return [replace(listing[1], power_w=None)] if self.gone else listing

    def departed(self) -> frozenset[str]:
        return frozenset({"a"}) if self.gone else frozenset()


def test_a_gpu_retired_on_a_lost_tick_gets_no_safe_cap() -> None:
    """Retired on a tick whose listing was then lost, it stayed in the last listing: the failsafe shared the budget
    with it and wrote a limit to a GPU no longer there."""
    plant = HalfLeave()
    fast = fast_on(plant, {"lo": 500.0, "hi": 700.0}, {"lo": 2, "hi": 1})
    fast.tick(1.0)
    gone_at = plant.limit_w[0]
    plant.gone = True
    for t in range(2, 6):
        fast.tick(float(t))
    assert fast.blind.failsafe_on and [g.uuid for g in fast.samples] == ["b"] and plant.limit_w[0] == gone_at


def test_no_gpu_the_governor_may_set_is_not_its_floors_exhausted() -> None:
    """Every GPU pinned (missing, or its sets failing) over the budget: `all` over none had read as every limit at
    its floor, and the daemon shrank replicas for a floor it never reached."""
    governor = PowerGovernor(PowerSettings(budget_w=700.0))
    samples = Plant({0: 500.0, 1: 500.0, 2: 600.0, 3: 600.0}).samples()
    governor.step(samples, PLAN, frozenset(g.uuid for g in samples))
    assert governor.emergency and not governor.exhausted


@pytest.mark.parametrize("domain", [False, True])
def test_a_pinned_gpu_drawing_under_its_limit_counts_at_that_limit_and_the_others_are_cut_for_it(domain: bool) -> None:
    """A budget drop as GPU 0's set fails (its backoff pins it at 700 W while it draws 200 W): counted at its draw,
    no cut was due, and 1,400 W of limits stood on a 970-W line for the backoff's 5 s, room its load could fill."""
    lines = [PowerDomainSettings("rack", 1000.0, (0, 1))] if domain else []
    governor = PowerGovernor(PowerSettings(budget_w=4000.0 if domain else 1000.0, domains=lines))
    plan = Plan.of(1, {"s": {"H100": 700.0}}, {"s": 1})
    pinned = GpuSample(0, "A", "H100", 200.0, None, 700.0, 200.0, 700.0, service="s")
    other = GpuSample(1, "B", "H100", 700.0, None, 700.0, 200.0, 700.0, service="s")
    limits = governor.step([pinned, other], plan, pinned=frozenset({"A"}))
    assert 0 not in limits and governor.emergency
    assert 700.0 + limits[1] <= 970.0 + 1e-6
    # and a GPU waiting out its backoff is tried anyway where the others cannot make room for its limit
    floor = replace(other, power_limit_w=200.0, power_w=200.0)
    assert governor.tried_anyway([pinned, floor, replace(floor, index=2, uuid="C")], frozenset(),
                                 frozenset({"A"})) == ({"A"} if not domain else frozenset())


@pytest.mark.parametrize("domain", [False, True])
def test_limits_fit_the_line_though_idle_gpus_draw_under_their_floors(domain: bool) -> None:
    """After a drop to 1,700 W one GPU draws at its 411-W limit beside seven idle ones at their 200-W floor drawing
    138 W: the draw (1,377 W) is under the 1,649-W line, so nothing was cut, and 1,811 W of limits stood for as
    long as the drop lasted (a reload, a demand-response signal; a rack the same), room a load could fill."""
    line = 1700.0
    lines = [PowerDomainSettings("rack", line, tuple(range(8)))] if domain else []
    governor = PowerGovernor(PowerSettings(budget_w=4000.0 if domain else line, domains=lines))
    plan = Plan.of(1, {"s": {"H100": 700.0}}, {"s": 1})
    busy = GpuSample(0, "G0", "H100", 411.0, None, 411.0, 200.0, 700.0, service="s")
    idle = [GpuSample(i, f"G{i}", "H100", 138.0, None, 200.0, 200.0, 700.0) for i in range(1, 8)]
    for _ in range(3):
        limits = governor.step([busy, *idle], plan)
        busy = replace(busy, power_limit_w=limits.get(0, busy.power_limit_w))
        busy = replace(busy, power_w=min(busy.power_w or 0.0, busy.power_limit_w))
        assert busy.power_limit_w + 7 * 200.0 <= line * 0.97 + 1e-6, limits
    assert busy.power_limit_w >= line * 0.97 - 7 * 200.0 - 8.0  # and no lower than the line asks


def test_a_gpu_missing_from_the_listing_still_counts_at_its_last_limit() -> None:
    """GPU 0's exporter goes away: its last limit (500 W) stays in the sum, so GPU 1 is not given its room."""
    plant = StuckPlant()
    listing = plant.sample
    errors: list[tuple[str, str]] = []
    fast = fast_on(plant, {"lo": 500.0, "hi": 700.0}, {"lo": 2, "hi": 1},
                   lambda kind, message: errors.append((kind, message)))
    fast.tick(1.0)
    plant.sample = lambda now: listing(now)[1:]  # type: ignore[method-assign]
    for t in range(2, 20):
        fast.tick(float(t))
        assert plant.limit_w[1] <= 970.0 - 500.0 + 1.0, (t, plant.limit_w)
    assert fast.listing.missing == {"a"}
    # each reported (counted, recorded) as its run began, not each tick: GPU 0's sets failing, then GPU 0 gone
    assert [kind for kind, _ in errors] == ["power_actuator", "gpu_missing"], errors


def test_a_ramp_limit_holds_whatever_the_load_does() -> None:
    """Every GPU's load jumps from 250 W to its 700 W peak at once; with a 100 W/s ramp the site's draw rises
    at most 100 W a tick, until it reaches the threshold."""
    settings = PowerSettings(budget_w=2000.0, ramp_up_w_per_s=100.0)
    governor = PowerGovernor(settings, interval_s=1.0)
    plant = Plant({i: 250.0 for i in OWNERS})
    before = plant.tick(governor)
    plant.natural_w = {i: 700.0 for i in OWNERS}
    reads = [plant.tick(governor) for _ in range(12)]
    rises = [b - a for a, b in zip([before, *reads], reads, strict=False)]
    assert max(rises) <= 100.0 + 1e-6 and reads[-1] >= 1940.0 - 100.0 - 4, (rises, reads)
    for ramp, bound in ((100.0, True), (0.0, False)):  # three ticks in: the GPUs under their caps, by what?
        stepped, plant = PowerGovernor(replace(settings, ramp_up_w_per_s=ramp)), Plant({i: 250.0 for i in OWNERS})
        plant.tick(stepped)
        plant.natural_w = {i: 700.0 for i in OWNERS}
        for _ in range(3):
            plant.tick(stepped)
        assert stepped.ramp_bound == bound and min(plant.limit_w.values()) < 700.0, (ramp, plant.limit_w)


def test_a_ramp_takes_back_the_room_a_limit_leaves_over_its_draw() -> None:
    """One chat GPU's limit 96 W over its draw took the whole tick's ramp (the limits' sum is held under the draw
    plus a tick's ramp): bulk's two GPUs, pressed at 300 W under 700-W caps, stayed there for 60 ticks with the site
    at 1,100 W of a 3,880-W line (a review). That slack is the ramp's to share: they climb, within the ramp."""
    governor = PowerGovernor(PowerSettings(budget_w=4000.0, ramp_up_w_per_s=100.0), interval_s=1.0)
    plant = Plant({0: 200.0, 1: 300.0, 2: 300.0, 3: 300.0})
    for _ in range(10):
        plant.tick(governor)
    plant.natural_w.update({2: 700.0, 3: 700.0})
    reads = [plant.tick(governor) for _ in range(15)]
    rises = [b - a for a, b in itertools.pairwise(reads)]
    assert max(rises) <= 100.0 + 1e-6 and reads[-1] >= 1900.0 - 1.0, reads  # every GPU at its natural draw, within
    # the 1 W a limit is set to


def still_after(governor: PowerGovernor, plant: Plant, ticks: int) -> list[dict[int, float]]:
    """The limits of `ticks` more ticks once the plant has had as many to settle."""
    for _ in range(ticks):
        plant.tick(governor)
    seen = []
    for _ in range(ticks):
        plant.tick(governor)
        seen.append(dict(plant.limit_w))
    return seen


def test_room_over_a_margin_is_taken_back_before_the_margin_itself() -> None:
    """Over the threshold, a chat GPU's room was taken down to its draw at once: pressed then, it took a step of
    bulk's limit, gave it back over the next ticks, and pressed again. The room over its draw's
    margin goes first, the margin only where that is not enough."""
    governor = PowerGovernor(PowerSettings(budget_w=1337.0), interval_s=1.0)
    plant = Plant({0: 265.0, 1: 300.0, 2: 438.0, 3: 650.0})
    limits = still_after(governor, plant, 100)
    assert all(later == limits[0] for later in limits), limits[:4]
    assert sum(limits[0].values()) <= 1337.0 * 0.97 + 1e-6 and limits[0][2] < 438.0  # bulk's cut holds


class CappedPlant(Plant):
    """GPUs at their caps draw 97 % of the limit on average, as capped engines do between steps."""

    def samples(self) -> list[GpuSample]:
        return [replace(g, power_w=min(self.natural_w[g.index], 0.97 * self.limit_w[g.index]))
                for g in super().samples()]


def test_a_small_ramp_still_grows_a_fleet_drawing_under_its_caps() -> None:
    """Caps at 400 W, every GPU wants 700 W but draws 3 % under its limit (12 W, 48 W the site): with a 10 W/s
    ramp the site still grows (counted at its draw it would stall: 48 W under its caps is more than a tick's ramp),
    and never by more than the ramp."""
    governor = PowerGovernor(PowerSettings(budget_w=4000.0, ramp_up_w_per_s=10.0), interval_s=1.0)
    plant = CappedPlant({i: 700.0 for i in OWNERS})
    plant.limit_w = {i: 400.0 for i in OWNERS}
    reads = [plant.tick(governor) for _ in range(40)]
    rises = [b - a for a, b in itertools.pairwise(reads)]
    assert reads[-1] - reads[0] >= 0.5 * 10.0 * 39 and max(rises) <= 10.0 + 1e-6, reads


class NoisyPlant(Plant):
    """chat's draw swings +-12 W about 270 W (its load's, under its caps): near a limit just above it, it reads as
    pressed one tick and not the next."""

    def __init__(self, natural_w: dict[int, float]) -> None:
        super().__init__(natural_w)
        self.rng = np.random.default_rng(3)

    def samples(self) -> list[GpuSample]:
        noise = self.rng.uniform(-12.0, 12.0, len(OWNERS))
        return [replace(g, power_w=min(self.natural_w[g.index] + (noise[g.index] if g.service == "chat" else 0.0),
                                       self.limit_w[g.index])) for g in super().samples()]


def test_a_ramp_grows_the_gpus_pressed_against_it_past_a_higher_priority_that_draws_its_load() -> None:
    """Every GPU starts at its 200-W floor under a loose budget and a 25 W/s ramp; chat needs about 270 W, bulk
    600 W. bulk reaches its load within a few minutes: given whole to chat, whose draw reads pressed one tick in
    two, each tick's room went to a limit chat did not draw, and bulk stayed at its floor."""
    governor = PowerGovernor(PowerSettings(budget_w=4000.0, ramp_up_w_per_s=25.0), interval_s=1.0)
    plant = NoisyPlant({0: 270.0, 1: 270.0, 2: 600.0, 3: 600.0})
    plant.limit_w = {i: 200.0 for i in OWNERS}
    reads = [plant.tick(governor) for _ in range(180)]
    assert min(plant.limit_w[2], plant.limit_w[3]) >= 550.0 and reads[-1] >= 1650.0, (plant.limit_w, reads[-1])


def test_a_gpu_idle_under_its_floor_does_not_take_the_ramp() -> None:
    """GPU 3 draws 80 W under its 200-W minimum limit, which no limit can take back: counted at its draw, its 120 W
    took every tick's 25 W of ramp and the three GPUs pressing at 300 W never grew."""
    governor = PowerGovernor(PowerSettings(budget_w=4000.0, ramp_up_w_per_s=25.0), interval_s=1.0)
    plant = Plant({0: 600.0, 1: 600.0, 2: 600.0, 3: 80.0})
    plant.limit_w = {0: 300.0, 1: 300.0, 2: 300.0, 3: 200.0}
    reads = [plant.tick(governor) for _ in range(60)]
    assert min(plant.limit_w[i] for i in (0, 1, 2)) >= 550.0, plant.limit_w
    assert max(b - a for a, b in itertools.pairwise(reads)) <= 25.0 + 1e-6


def test_where_the_budget_binds_under_a_ramp_the_higher_priority_still_takes_from_the_lower() -> None:
    """1,455 W of threshold, a 25 W/s ramp: chat pressing at 480 W wants 700, bulk draws its 700 W, and bulk's second
    GPU serves lightly (100 W under a 272-W limit, slack that keeps the ramp's ceiling under the threshold). The
    budget is what binds, so chat takes bulk's limit as it would with no ramp."""
    settings = PowerSettings(budget_w=1500.0, ramp_up_w_per_s=25.0)
    governor = PowerGovernor(settings, interval_s=1.0)
    plant = Plant({0: 700.0, 1: 700.0, 2: 700.0, 3: 100.0})
    plant.limit_w = {0: 480.0, 1: 200.0, 2: 700.0, 3: 272.0}
    for _ in range(60):
        plant.tick(governor)
    assert plant.limit_w[0] >= 650.0 and sum(plant.limit_w.values()) <= 1500.0 * 0.97 + 1e-6, plant.limit_w


def test_a_ramp_down_limit_slows_a_planned_fall_but_not_a_budget_drop() -> None:
    """Every GPU draws 700 W under a loose budget; the plan lowers the caps to 300 W: with a 100 W/s ramp
    down, the site's draw falls at most 100 W a tick until it reaches 1,200 W. Then the budget drops under
    the draw: that cut is made at once, whatever the ramp."""
    settings = PowerSettings(budget_w=4000.0, ramp_down_w_per_s=100.0)
    governor = PowerGovernor(settings, interval_s=1.0)
    plant = Plant({i: 700.0 for i in OWNERS})
    low = Plan.of(2, {"chat": {"H100": 300.0}, "bulk": {"H100": 300.0}}, PRIORITIES)
    reads = [plant.tick(governor), *(plant.tick(governor, low) for _ in range(20))]
    falls = [a - b for a, b in itertools.pairwise(reads)]
    assert max(falls) <= 100.0 + 1e-6 and reads[0] == 2800.0 and reads[-1] == 1200.0, reads
    plant.natural_w = {i: 600.0 for i in OWNERS}
    plant.limit_w = {i: 600.0 for i in OWNERS}
    governor.settings = dataclasses.replace(settings, budget_w=1500.0)
    before = plant.tick(governor)  # reads 2,400 W, over 1,455 W: cut below the draw at once
    after = plant.tick(governor)
    assert before - after > 800.0 and after <= 1500.0 * 0.97 + 1e-6, (before, after)


def test_every_power_domain_is_held_under_its_own_limit_whatever_the_load() -> None:
    """Rack A (GPUs 0-1, 900 W) and rack B (GPUs 2-3, 1,300 W) under a 2,000 W site: loads jump anywhere
    between idle and peak each tick, and neither rack nor the site ever has limits summing above its line."""
    domains = (PowerDomainSettings("rack-a", 900.0, (0, 1)), PowerDomainSettings("rack-b", 1300.0, (2, 3)))
    settings = PowerSettings(budget_w=2000.0, domains=domains)
    governor = PowerGovernor(settings)
    plant = Plant({i: 300.0 for i in OWNERS})
    rng = np.random.default_rng(5)
    for _ in range(300):
        plant.natural_w = {i: float(rng.uniform(80.0, 700.0)) for i in OWNERS}
        plant.tick(governor)
        assert plant.limit_w[0] + plant.limit_w[1] <= 900.0 * 0.97 + 1e-6
        assert plant.limit_w[2] + plant.limit_w[3] <= 1300.0 * 0.97 + 1e-6
        assert sum(plant.limit_w.values()) <= 2000.0 * 0.97 + 1e-6


def test_a_rack_at_its_breaker_is_cut_though_the_site_has_room() -> None:
    """chat (priority 1) and bulk share rack A at 900 W; the site has 4,000 W. Both want 700 W a GPU: the
    rack's 873 W go to chat first, and bulk's GPU outside the rack is untouched."""
    domains = (PowerDomainSettings("rack-a", 900.0, (0, 2)),)
    governor = PowerGovernor(PowerSettings(budget_w=4000.0, domains=domains))
    plant = Plant({i: 700.0 for i in OWNERS})
    for _ in range(30):
        plant.tick(governor)
    assert plant.limit_w[0] + plant.limit_w[2] <= 873.0 + 1e-6
    assert plant.limit_w[0] > plant.limit_w[2]  # chat's GPU has the rack first
    assert plant.limit_w[3] == 700.0  # bulk outside the rack runs at its cap


DETERMINISM = """
import sys, tempfile
from dataclasses import replace
from pathlib import Path
from prometheus_client import CollectorRegistry
from controller.control import Controller
from controller.own_metrics import OwnMetrics
from controller.settings import load_settings
from controller.wiring import build_parts
from tuner import Tuner
tmp = tempfile.mkdtemp()
text = Path("config/sim.toml").read_text().replace('state_dir = "../var/state"', f'state_dir = "{tmp}"')
(Path(tmp) / "w.toml").write_text(text)
s = load_settings(Path(tmp) / "w.toml")
s = replace(s, power=replace(s.power, budget_w=1800.0))
parts = build_parts(s)
ctl = Controller(s, parts.gpus, parts.vllm, parts.power, parts.batch, parts.replicas, Tuner(None), OwnMetrics(
    CollectorRegistry()))
for t in range(1, 91):
    parts.host.advance_to(float(t))
    ctl.tick_fast(float(t))
    if t % 15 == 0:
        ctl.tick_slow(float(t))
    print(repr([g.power_limit_w for g in ctl.fast.samples]))
"""


def test_the_loop_is_the_same_whatever_the_process_string_hashing() -> None:
    """Two processes with different string hashing step the same plant to the same limits, tick for tick: no
    decision depends on the order a set of GPU UUIDs iterates in (a float sum in another order differs in
    its last bits, which once flipped comparisons and made the closed loop irreproducible)."""
    runs = [subprocess.run([sys.executable, "-c", DETERMINISM], capture_output=True, text=True, timeout=120,
                           cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONHASHSEED": seed})
            for seed in ("1", "2")]
    assert runs[0].returncode == 0, runs[0].stderr[-2000:]
    assert runs[0].stdout and runs[0].stdout == runs[1].stdout


def test_a_reading_past_what_the_gpu_can_draw_counts_at_that_most() -> None:
    """One 5,000 W glitch on a 700 W GPU is counted at 700 W, not as 4,300 W over the budget."""
    g = GpuSample(0, "GPU-0", "H100", 5000.0, None, 700.0, 200.0, 700.0)
    assert accounted_w(g) == 700.0
    assert accounted_w(replace(g, power_w=float("nan"))) == 700.0  # none: its limit
    assert accounted_w(replace(g, power_w=420.0)) == 420.0


class ListedPlant(StuckPlant):
    """StuckPlant whose GPU 0 reports the limits `report` gives it (min, max, limit in force: None keeps its own)
    and `reading`, GPU 1 the fields `peer` replaces; every set succeeds."""

    def __init__(self, min_w: float, max_w: float, limit_w: float | None = None, reading: float | None = None,
                 **peer: object) -> None:
        super().__init__()
        self.report, self.reading, self.peer = (min_w, max_w, limit_w), reading, peer

    def sample(self, now: float) -> list[GpuSample]:
        first, second = super().sample(now)
        low, high, limit = self.report
        return [replace(first, power_w=self.reading, min_limit_w=low, max_limit_w=high,
                        power_limit_w=first.power_limit_w if limit is None else limit), replace(second, **self.peer)]

    def set_power_limit(self, gpu_index: int, watts: float) -> float:
        assert 0.0 <= watts <= 700.0, (gpu_index, watts)
        self.limit_w[gpu_index] = watts
        return watts


def run_listed(plant: ListedPlant, ticks: int = 12) -> tuple[FastLoop, list[tuple[str, str]]]:
    """The fast loop over `plant`: the limits in force never sum over the threshold, nor is the draw ever NaN."""
    errors: list[tuple[str, str]] = []
    fast = fast_on(plant, {"lo": 700.0, "hi": 700.0}, {"lo": 2, "hi": 1},
                   lambda kind, message: errors.append((kind, message)))
    for t in range(1, ticks + 1):
        fast.tick(float(t))
        assert fast.draw_w is None or fast.draw_w == fast.draw_w  # never NaN
        assert sum(plant.limit_w.values()) <= 970.0 + 2.0, (t, plant.limit_w)
    return fast, errors


def test_a_nan_limit_in_force_counts_at_the_gpus_maximum_not_as_nan() -> None:
    """DCGM's limit series NaN, the GPU unread: the sum was NaN, read as under budget, and GPU 1 rose to 700 W
    beside a GPU that may draw 700 W. Now GPU 0 counts at its 700 W maximum, is reported once, and GPU 1 gets the
    rest."""
    plant = ListedPlant(100.0, 700.0, float("nan"))
    _, errors = run_listed(plant)
    assert plant.limit_w[1] <= 970.0 - 100.0 + 1.0  # GPU 0 is set (to its share): counted again
    # and that it gave no reading (ListedPlant's GPU 0 reads none), said once too
    assert [kind for kind, _ in errors] == ["gpu_limits", "gpu_power"] and "limit in force of nan W" in errors[0][1]


def test_reversed_or_negative_limits_keep_the_last_plausible_pair_and_are_reported_once() -> None:
    plant = ListedPlant(100.0, 700.0)
    fast, errors = run_listed(plant, 3)
    for bad in [(700.0, 100.0), (-50.0, 700.0), (100.0, float("inf")), (100.0, 1e9), (0.0, 0.0)]:
        plant.report = (*bad, None)
        for t in range(4, 8):
            fast.tick(float(t))
            assert all(0.0 <= w <= 700.0 for w in plant.limit_w.values())  # the plant asserts it too
            assert sum(plant.limit_w.values()) <= 972.0
            assert fast.samples[0].min_limit_w == 100.0 and fast.samples[0].max_limit_w == 700.0
    # once for the run, counted every tick (and, once, that GPU 0 gives no reading: ListedPlant's reads none)
    assert [kind for kind, _ in errors] == ["gpu_power", "gpu_limits"]
    assert "700-100 W" in errors[1][1] and "its last limits, 100-700 W, are kept" in errors[1][1]
    plant.report = (100.0, 700.0, None)
    fast.tick(8.0)
    plant.report = (0.0, 0.0, None)
    fast.tick(9.0)
    assert len(errors) == 3 and "0-0 W" in errors[2][1]  # a new run of it is reported again


def test_a_gpu_never_seen_with_plausible_limits_counts_at_the_most_it_may_draw_and_is_not_set() -> None:
    """A 0-0 pair counted a GPU drawing 650 W as 0 W; a NaN pair beside an L4 counted an H100 at the L4's 72 W."""
    plant = ListedPlant(-1.0, float("nan"), 500.0)
    _, errors = run_listed(plant)
    assert plant.limit_w[0] == 500.0  # never set
    assert plant.limit_w[1] <= 970.0 - 700.0 + 1.0  # GPU 0 counted at 700 W, the largest maximum beside it
    assert len(errors) == 1 and "not set" in errors[0][1]
    for low, high in [(0.0, 0.0), (float("nan"), float("nan"))]:
        mixed = ListedPlant(low, high, 700.0, reading=650.0, name="L4", min_limit_w=40.0, max_limit_w=72.0)
        mixed.limit_w[1] = 72.0
        fast, _ = run_listed(mixed)
        assert fast.draw_w is not None and fast.draw_w >= 700.0 and fast.samples[0].max_limit_w == 700.0


def test_gpus_with_nothing_to_count_them_at_are_a_lost_sample_naming_them() -> None:
    """Every GPU's limits unknown, and GPU 0 neither read nor with a limit in force: no figure to count it at, so
    the tick is lost (the failsafe's caps follow) and the error names each problem; once it reads, it counts at
    its reading, and GPU 1 at its limit in force (450 W, over its 280-W reading)."""
    plant = ListedPlant(float("nan"), float("nan"), float("nan"), min_limit_w=-1.0, max_limit_w=-1.0, power_w=280.0)
    fast, errors = run_listed(plant, 4)
    assert fast.blind.lost == 4 and errors[0][0] == "gpu_source" and "nothing to count it at" in errors[0][1]
    assert "GPU a (0) reports limits nan-nan W" in errors[0][1] and "GPU b (1) reports limits -1--1 W" in errors[0][1]
    plant.reading = 300.0
    fast.tick(5.0)
    assert fast.blind.lost == 0 and fast.draw_w == 300.0 + 280.0


class SwappingPlant:
    """Two GPUs of one priority whose plan swaps room from GPU 0 to GPU 1; its readings can go (`down`)."""

    name = "swapping"

    def __init__(self) -> None:
        self.limit_w, self.down = {0: 600.0, 1: 300.0}, False

    def sample(self, now: float) -> list[GpuSample]:
        if self.down:
            raise OSError("exporter down")
        return [GpuSample(i, "ab"[i], "A100", self.limit_w[i] - 5.0, None, self.limit_w[i], 100.0, 700.0,
                          service="ab"[i], variant="A100") for i in (0, 1)]

    def set_power_limit(self, gpu_index: int, watts: float) -> float:
        self.limit_w[gpu_index] = watts
        return watts


def test_safe_caps_start_from_the_limits_in_force_not_those_read_before_the_last_sets() -> None:
    """The last tick before the readings went moved GPU 1 from 300 to 600 W and GPU 0 the other way; the failsafe
    read the limits from before those sets: it left GPU 1 at 600 (its 300 read under the 485-W level) and raised
    GPU 0 to 485, 1,085 W against a 970-W threshold for the whole outage."""
    plant = SwappingPlant()
    fast = fast_on(plant, {"a": 600.0, "b": 300.0}, {"a": 1, "b": 1})
    for t in range(1, 6):
        fast.tick(float(t))
    fast.plan = Plan.of(2, {"a": {"A100": 300.0}, "b": {"A100": 600.0}}, {"a": 1, "b": 1})
    t = 6
    while not plant.limit_w[1] > 485.0:  # until a tick raises GPU 1 past the safe level
        fast.tick(float(t))
        t += 1
        assert t < 60
    in_force = dict(plant.limit_w)
    plant.down = True
    for k in range(5):
        fast.tick(float(t + k))
    assert sum(plant.limit_w.values()) <= fast.governor.threshold_w() + 1e-6, plant.limit_w
    assert all(plant.limit_w[i] <= in_force[i] for i in in_force), (in_force, plant.limit_w)  # and none raised


def _fitted(chat: tuple[float, float | None], bulk: tuple[float, float | None], limits: tuple[float, float]
            ) -> list[GpuSample]:
    """chat on GPU 0 and bulk on GPU 1, each (draw, capped share) under the limits given."""
    return [GpuSample(i, f"GPU-{i}", "H100", w, None, lim, 200.0, 700.0, service=svc, capped_share=share)
            for i, (svc, (w, share), lim) in enumerate(zip(("chat", "bulk"), (chat, bulk), limits, strict=True))]


FITTED = Plan.of(1, {"chat": {"H100": 480.0}, "bulk": {"H100": 490.0}}, PRIORITIES,
                 ceilings_w={"chat": {"H100": 630.0}, "bulk": {"H100": 630.0}})
"""Caps fitted within a 1,000-W budget (970 W: 3 % headroom): chosen at 630 W."""


def test_a_gpu_its_fitted_cap_holds_down_grows_back_to_the_chosen_cap_and_rests_at_the_fitted_one() -> None:
    """The plan's caps were fitted within the limits' sum where a watt of cap is worth least; a GPU whose limit holds
    its clock a good share of the tick (its prompts' bursts pass it, under a mean draw well below it) grows a step a
    tick toward the cap chosen before, out of the room another GPU leaves unused, and rests back at its fitted cap
    once the limit no longer holds it."""
    governor = PowerGovernor(PowerSettings(budget_w=1000.0))
    held = governor.step(_fitted((400.0, 0.3), (300.0, 0.0), (480.0, 490.0)), FITTED)
    assert held[0] == pytest.approx(480.0 + 0.15 * 480.0) and held[1] == pytest.approx(970.0 - held[0])
    assert governor.step(_fitted((400.0, 0.3), (300.0, 0.0), (held[0], held[1])), FITTED)[0] == pytest.approx(630.0)
    rests = governor.step(_fitted((400.0, 0.0), (300.0, 0.0), (630.0, 340.0)), FITTED)
    assert rests == {0: 480.0, 1: 490.0}


@pytest.mark.parametrize(("chat", "why"), [((400.0, None), "a source that reads no share: judged by its mean draw"),
                                           ((400.0, 0.05), "held 5 % of the tick: no more than noise"),
                                           ((400.0, 0.3), "no ceiling: the plan's cap is where it may grow")])
def test_a_gpu_grows_past_its_fitted_cap_only_where_its_limit_holds_it(chat: tuple[float, float | None],
                                                                       why: str) -> None:
    governor = PowerGovernor(PowerSettings(budget_w=1000.0))
    plan = FITTED if chat[1] != 0.3 else Plan.of(1, dict(FITTED.caps_w), PRIORITIES)  # type: ignore[arg-type]
    assert governor.step(_fitted(chat, (300.0, 0.0), (480.0, 490.0)), plan) == {}, why
    pressed_at_its_mean = governor.step(_fitted((470.0, None), (300.0, 0.0), (480.0, 490.0)), FITTED)
    assert pressed_at_its_mean[0] == pytest.approx(480.0 + 0.15 * 480.0)


def test_a_held_gpu_below_its_fitted_cap_is_judged_by_its_mean_draw_as_before() -> None:
    """The held share moves limits only between a fitted cap and its ceiling: below the cap (the budget shared out
    priority first) a GPU held by bursts took room on it from every GPU not pressed, and diurnal's sum T/C fell."""
    governor = PowerGovernor(PowerSettings(budget_w=900.0))  # 873 W of limits: chat, behind bulk, gets 383 W
    plan = replace(FITTED, priorities={"chat": 2, "bulk": 1})
    assert governor.step(_fitted((300.0, 0.3), (300.0, 0.0), (383.0, 490.0)), plan) == {}


def test_a_gpu_drawing_past_its_fitted_cap_keeps_the_room_it_grew_into() -> None:
    """A steady 550-W load under a 480-W fitted cap and a 630-W ceiling: once grown, it read as neither pressed nor
    held under 630 W, went back to 480 W (below its draw), grew again, and the limit ran 552, 630, 480 (a review).
    Now it grows while the limit holds its clock and keeps the room it grew into, over its draw."""
    governor = PowerGovernor(PowerSettings(budget_w=1000.0))  # no room past the fitted caps for a second pass
    limits = (480.0, 490.0)
    seen = []
    for _ in range(6):
        chat_w = min(550.0, limits[0])
        got = governor.step(_fitted((chat_w, 0.3 if chat_w >= limits[0] else 0.0), (300.0, 0.0), limits), FITTED)
        limits = (got.get(0, limits[0]), got.get(1, limits[1]))
        seen.append(limits[0])
    assert len(set(seen)) == 1 and seen[0] >= 550.0, seen


def test_in_caps_mode_no_gpu_grows_past_the_cap_the_budget_trimmed() -> None:
    """Caps mode fits the caps themselves within the budget; a ceiling read before the trim let a pressed GPU grow
    back to its plan's cap, out of the room of a higher priority (a review: bulk 464 -> 700 W, chat 698 -> 462)."""
    governor = PowerGovernor(PowerSettings(budget_w=1200.0, mode="caps"))
    plan = Plan.of(1, {"chat": {"H100": 700.0}, "bulk": {"H100": 700.0}}, PRIORITIES,
                   ceilings_w={"chat": {"H100": 700.0}, "bulk": {"H100": 700.0}})
    limits = (700.0, 700.0)
    for _ in range(8):
        got = governor.step(_fitted((300.0, 0.0), (min(700.0, limits[1]), 0.5), limits), plan)
        limits = (got.get(0, limits[0]), got.get(1, limits[1]))
    assert limits[0] >= 690.0 and limits[1] <= 1200.0 * 0.97 - limits[0] + 1.0, limits


def test_room_the_fitted_caps_leave_goes_on_to_the_ceilings() -> None:
    """Caps fitted for the replicas planned, fewer of which run yet, left room no GPU took: it goes to the
    ceilings, highest priority first."""
    governor = PowerGovernor(PowerSettings(budget_w=1290.0))  # 1,251.3 W: 281.3 W past the fitted caps' 970
    got = governor.step(_fitted((300.0, 0.0), (300.0, 0.0), (480.0, 490.0)), FITTED)
    assert got == {0: 630.0, 1: pytest.approx(490.0 + 1251.3 - 970.0 - 150.0)}


def test_a_gpu_keeping_its_room_past_a_fitted_cap_slows_no_other_gpus_ramp_down() -> None:
    """The ramp-down counted a GPU drawing past its fitted cap as a fall it would make, though it keeps its limit:
    bulk's cap lowered from 600 to 400 W crept 550, 522, 497 ... and had not reached 400 W in 12 ticks (a review);
    now it falls 50 W a tick from its draw, as with no fitted cap."""
    governor = PowerGovernor(PowerSettings(budget_w=1400.0, ramp_down_w_per_s=50.0))
    plan = Plan.of(2, {"chat": {"H100": 480.0}, "bulk": {"H100": 400.0}}, PRIORITIES,
                   ceilings_w={"chat": {"H100": 630.0}})
    limits, seen = (630.0, 600.0), []
    for _ in range(5):
        got = governor.step(_fitted((600.0, 0.0), (min(580.0, limits[1]), 0.0), limits), plan)
        limits = (got.get(0, limits[0]), got.get(1, limits[1]))
        seen.append(limits)
    assert [round(b) for _, b in seen] == [530, 480, 430, 400, 400] and all(c == 630.0 for c, _ in seen), seen


def test_over_its_threshold_no_gpu_grows_past_its_fitted_cap() -> None:
    """A reading 80 W over its limit passes the threshold while the limits fit it: the ceiling let that GPU grow
    into the room the cut had just freed, 480 -> 558 -> 630 W, and the site stayed over for three ticks (a review)."""
    governor = PowerGovernor(PowerSettings(budget_w=1000.0))
    limits, over = (480.0, 490.0), []
    for _ in range(6):
        draws = (limits[0] + 80.0, min(480.0, limits[1]))
        got = governor.step(_fitted((draws[0], 0.3), (draws[1], 0.0), limits), FITTED)
        limits = (got.get(0, limits[0]), got.get(1, limits[1]))
        over.append(sum(draws) > governor.threshold_w())
        assert limits[0] <= 480.0, limits
    assert over.count(True) == 1, over


def test_a_pinned_gpu_reading_over_its_limit_is_never_handed_a_limit() -> None:
    """A ramp's slowed fall raised the wanted limit of a GPU reading a few watts past its limit, pinned or not: one
    whose limit cannot be set now was handed 416 W over the 409.5 in force."""
    governor = PowerGovernor(PowerSettings(budget_w=4000.0, ramp_down_w_per_s=5.0))
    plan = Plan.of(1, {"s": {"H100": 300.0}}, {"s": 1})
    pinned = GpuSample(0, "A", "H100", 416.0, None, 409.5, 200.0, 700.0, service="s")
    other = GpuSample(1, "B", "H100", 600.0, None, 650.0, 200.0, 700.0, service="s")
    limits = governor.step([pinned, other], plan, pinned=frozenset({"A"}))
    assert 0 not in limits and 300.0 < limits[1] < 650.0  # B falls, slowly; A is left as it is


def test_a_ramps_ceiling_takes_no_gpu_below_its_draw() -> None:
    """The second pass that takes limits below the draw where floors pass a line read a ramp's ceiling as a line: a
    GPU pinned at 700 W drawing 200, beside three drawing their 500-W limits, sent those to their floors in two
    ticks on a 7,760-W line with the site at 1,700 W (and GPUs reading 3 % over their limits, one by one)."""
    governor = PowerGovernor(PowerSettings(budget_w=8000.0, ramp_up_w_per_s=50.0, ramp_down_w_per_s=50.0))
    plan = Plan.of(1, {"s": {"H100": 700.0}}, {"s": 1})
    limit = {1: 500.0, 2: 500.0, 3: 500.0}
    for _ in range(4):
        pinned = GpuSample(0, "A", "H100", 200.0, None, 700.0, 200.0, 700.0, service="s")
        rest = [GpuSample(i, f"G{i}", "H100", min(500.0, w), None, w, 200.0, 700.0, service="s")
                for i, w in limit.items()]
        limit.update(governor.step([pinned, *rest], plan, pinned=frozenset({"A"})))
        assert all(w >= 500.0 - 50.0 for w in limit.values()), limit
    over = PowerGovernor(PowerSettings(budget_w=8000.0, ramp_up_w_per_s=40.0))
    two = Plan.of(1, {"hi": {"H100": 700.0}, "lo": {"H100": 700.0}}, {"hi": 1, "lo": 2})
    limits = {i: 400.0 for i in range(6)}
    for _ in range(4):
        samples = [GpuSample(i, f"G{i}", "H100", 1.03 * w, None, w, 200.0, 700.0, service="hi" if i < 3 else "lo")
                   for i, w in limits.items()]
        limits.update(over.step(samples, two))
        assert min(limits.values()) >= 400.0 - 1.0, limits


def test_a_gpu_idle_under_its_floor_does_not_flip_the_ramps_ceiling_every_tick() -> None:
    """Counted at its limit on its floor and at its 82-W draw 1 W above it, an idle GPU moved the ramp's ceiling by
    the gap: its limit went 100 -> 118 -> 100 W, one NVML set a tick for as long as it idled."""
    governor = PowerGovernor(PowerSettings(budget_w=1097.5, ramp_up_w_per_s=20.0, ramp_down_w_per_s=20.0,
                                           domains=(PowerDomainSettings("rack", 715.8, (0, 1)),)))
    plan = Plan.of(1, {"a": {"X": 316.6}}, {"a": 1})
    limits = [600.0, 700.0]
    seen = []
    for _ in range(120):
        samples = [GpuSample(0, "G0", "X", min(82.2, limits[0]), None, limits[0], 100.0, 600.0, service="a",
                             variant="X"),
                   GpuSample(1, "G1", "X", min(549.4, limits[1]), None, limits[1], 200.0, 700.0)]
        for i, w in governor.step(samples, plan).items():
            limits[i] = w
        seen.append(tuple(limits))
    assert len(set(seen[-40:])) == 1, seen[-4:]


def test_a_ramp_takes_no_lower_prioritys_limit_below_its_draw_for_a_gpu_in_a_short_rack() -> None:
    """GPU 0 (priority 1) pressed at 400 W in a rack of 420, GPU 1 (priority 2, another rack's) drawing its 500-W
    limit, a 10-W/s ramp: a short rack made the growth no ramp's alone, and the site's room, short by the ramp
    only, let GPU 0 take 11 W of GPU 1's limit below its draw, for room its own rack could not give it anyway."""
    plan = Plan.of(1, {"hi": {"X": 700.0}, "lo": {"X": 700.0}}, {"hi": 1, "lo": 2})
    governor = PowerGovernor(PowerSettings(budget_w=3000.0, headroom=0.0, ramp_up_w_per_s=10.0,
                                           domains=(PowerDomainSettings("A", 420.0, (0,)),)))
    limits = {0: 400.0, 1: 500.0}
    for _ in range(6):
        samples = [GpuSample(0, "g", "X", limits[0], None, limits[0], 200, 700, service="hi", variant="X"),
                   GpuSample(1, "h", "X", min(limits[1], 500.0), None, limits[1], 200, 700, service="lo", variant="X")]
        limits.update(governor.step(samples, plan))
        assert limits[1] >= 500.0, limits
    assert limits[0] == pytest.approx(419.0, abs=1.0)  # and GPU 0 grew to its rack's line, within the ramp


def held_share(load_w: float, limit_w: float, noise_w: float) -> float:
    """The share of a tick a draw spread by `noise_w` around `load_w` passes `limit_w` (1 or 0 without noise)."""
    if noise_w <= 0:
        return 1.0 if load_w > limit_w else 0.0
    return 0.5 * math.erfc((limit_w - load_w) / (noise_w * math.sqrt(2.0)))


def run_loads(governor: PowerGovernor, plan: Plan, gpus: list[tuple[float, float, str]],
              loads: Callable[[int], list[float]], ticks: int, limits: list[float] | None = None, *,
              variant: str | None = None, noise_w: float = 0.0, shares: bool = True
              ) -> tuple[list[list[float]], list[float]]:
    """Step `governor` over GPUs (lowest limit, highest, service) drawing the lower of their load at each tick and
    their limit, plus `noise_w` of seeded Gaussian noise, each reading the share of the tick its limit held it
    (`held_share`) unless `shares` is off. The limits after each tick, and the site's draw read at each."""
    rng = np.random.default_rng(0)
    limit = list(limits) if limits is not None else [hi for _, hi, _ in gpus]
    seen, draws = [], []
    for t in range(ticks):
        load = loads(t)
        noise = rng.normal(0.0, noise_w, len(gpus)) if noise_w > 0 else np.zeros(len(gpus))
        samples = [GpuSample(i, f"GPU-{i}", "H100", min(load[i], limit[i]) + float(noise[i]), None, limit[i], lo, hi,
                             service=svc, variant=variant,
                             capped_share=held_share(load[i], limit[i], noise_w) if shares else None)
                   for i, (lo, hi, svc) in enumerate(gpus)]
        draws.append(sum(g.power_w or 0.0 for g in samples))
        for i, w in governor.step(samples, plan).items():
            limit[i] = w
        seen.append(list(limit))
    return seen, draws


def test_a_small_gpu_lent_down_is_not_pressed_by_its_own_margin() -> None:
    """A GPU under 200 W has a 10-W margin whatever its limit: lent down to its draw plus that margin, it was pressed
    again at once, took a 25-W step of a lower priority's limit and lent it back, every tick (a fuzzed site; the
    code before this one did the same). One watt past the margin, it stays lent."""
    mins, maxs, owner = [200.0, 200.0, 100.0, 100.0], [700.0, 700.0, 350.0, 350.0], ["c", "b", "a", "c"]
    plan = Plan.of(1, {"a": {"X": 202.913}, "b": {"X": 323.330}, "c": {"X": 433.776}}, {"a": 1, "b": 1, "c": 3})
    governor = PowerGovernor(PowerSettings(budget_w=700.2304, ramp_up_w_per_s=200.0, ramp_down_w_per_s=20.0))
    demand, limit = [500.0, 198.9414, 124.5485, 75.5524], [206.2630, 210.1509, 159.5485, 100.0]
    seen, _ = run_loads(governor, plan, list(zip(mins, maxs, owner, strict=True)), lambda t: demand, 60, limit,
                        variant="X", shares=False)
    assert all(later == seen[30] for later in seen[30:]), seen[-3:]


@pytest.mark.parametrize(("share", "grows"), [(0.0, False), (0.005, False), (0.05, True), (None, True)])
def test_a_reading_in_its_margin_presses_only_where_the_limit_held_the_clock(share: float | None,
                                                                             grows: bool) -> None:
    """chat reads 390 W under a 400-W limit, inside its 20-W margin, beside bulk pressed at 500 W of a tight budget. Its
    limit held its clock none of the tick (the load is under it: the reading's noise touched the margin), so it asks
    for no room; held 5 % of the tick, or on a GPU that reads no share, it takes a step of bulk's limit."""
    governor = PowerGovernor(PowerSettings(budget_w=930.0))  # 902.1 W of limits, all in force
    samples = [GpuSample(0, "GPU-0", "H100", 390.0, None, 400.0, 200.0, 700.0, service="chat", capped_share=share),
               GpuSample(1, "GPU-1", "H100", 502.1, None, 502.1, 200.0, 700.0, service="bulk", capped_share=1.0)]
    got = governor.step(samples, PLAN)
    assert got == ({0: pytest.approx(460.0), 1: pytest.approx(442.1)} if grows else {}), got


def test_a_gpu_resting_inside_its_margin_leaves_a_small_ramp_to_one_that_presses() -> None:
    """Under a 25-W/s ramp, chat rests at a 480-W load with its limit inside its margin, its limit holding it none
    of the tick, while bulk's load jumps from 300 to 900 W. Counted at its draw for the ramp (a first version of
    reading the share), the room chat kept there took the ramp's whole tick and bulk stayed at 300 W for good (a
    review). A reading inside its margin counts at its limit for the ramp, held or not, and bulk climbs within it."""
    governor = PowerGovernor(PowerSettings(budget_w=100_000.0, ramp_up_w_per_s=25.0), interval_s=1.0)
    seen, draws = run_loads(governor, PLAN, [(200.0, 700.0, "chat"), (200.0, 700.0, "bulk")],
                            lambda t: [480.0, 300.0 if t < 60 else 900.0], 120)
    limit = seen[-1]
    assert limit[1] >= 700.0 - 1.0 and limit[0] >= 480.0, limit
    assert max(b - a for a, b in itertools.pairwise(draws)) <= 25.0 + 1e-6, draws


def test_steady_gpus_under_a_ramp_keep_their_limits_through_their_readings_noise() -> None:
    """Eight GPUs at a steady 300 W under a 50-W/s ramp, 2 W of noise on each reading and the share of the tick
    their limits held them as that noise has it: the limits moved 21 W a tick while any reading in its margin
    pressed, and 65 W where a GPU resting inside its margin lent it to the ramp, down to a watt over its draw (a
    version not kept: the lender pressed in its noise the next tick)."""
    governor = PowerGovernor(PowerSettings(budget_w=100_000.0, ramp_up_w_per_s=50.0), interval_s=1.0)
    seen, _ = run_loads(governor, PLAN, [(200.0, 700.0, "chat")] * 8, lambda t: [300.0] * 8, 400, noise_w=2.0)
    moved = [sum(abs(b - a) for a, b in zip(before, after, strict=True))
             for before, after in itertools.pairwise(seen[99:])]
    assert float(np.mean(moved)) < 12.0, float(np.mean(moved))
    assert min(seen[-1]) >= 300.0 - 3 * 2.0, seen[-1]  # a ramp's room taken back goes down to a noisy reading at most


def test_a_ramp_too_small_to_split_goes_whole_to_one_gpu() -> None:
    """Twelve GPUs under a 20-W/s ramp, all at a steady 450 W but one whose load jumped to 900 W, then a second's:
    the ramp's tick (then less a watt kept per GPU), split among the GPUs pressing (several read their limit exactly),
    gave each under a watt, no limit moved (a rise under a watt is never set), and the second stayed at 450 W for good
    (a review). Under a watt each, the tick's room goes whole to one, highest priority first."""
    governor = PowerGovernor(PowerSettings(budget_w=100_000.0, ramp_up_w_per_s=20.0), interval_s=1.0)
    seen, draws = run_loads(governor, PLAN, [(200.0, 700.0, "chat")] * 12,
                            lambda t: [900.0, 900.0 if t >= 150 else 450.0] + [450.0] * 10, 300)
    limit = seen[-1]
    assert limit[0] >= 700.0 - 1.0 and limit[1] >= 700.0 - 1.0, limit[:2]
    assert max(b - a for a, b in itertools.pairwise(draws)) <= 20.0 + 1e-6


def test_a_ramp_smaller_than_the_gpus_count_still_grows_a_pressed_one() -> None:
    """Twenty-four GPUs at a steady 450 W under a 20-W/s ramp, one whose load jumps to 900 W: the limits' sum kept a
    watt per GPU under the ramp's ceiling (a move under a watt is never set, and might leave one a watt high), 24 W of a
    20-W tick, and the load stayed at 450 W for good. The limits now fit the ceiling exactly, a fall under a watt set
    where the limits in force would pass it, and the load climbs at the ramp."""
    governor = PowerGovernor(PowerSettings(budget_w=100_000.0, ramp_up_w_per_s=20.0), interval_s=1.0)
    seen, draws = run_loads(governor, PLAN, [(200.0, 700.0, "chat")] * 24,
                            lambda t: [900.0 if t >= 20 else 450.0] + [450.0] * 23, 60)
    assert seen[-1][0] >= 700.0 - 1.0, seen[-1][0]
    assert max(b - a for a, b in itertools.pairwise(draws)) <= 20.0 + 1e-6


@pytest.mark.parametrize(("domain", "nvml"), [(False, False), (True, False), (False, True), (True, True)])
def test_limits_in_force_fit_the_line_though_moves_under_a_watt_go_unset(domain: bool, nvml: bool) -> None:
    """Ten GPUs pressing a tight budget (and a rack's line) with 3 W of noise on their loads: most ticks move some
    limits by under a watt, which are not set unless the line needs them. Summed as they are in force, the limits never
    pass the site's threshold or the rack's line; set through NVML's limiter too, which had skipped every move under a
    watt, falls included (a review: 2.8 W over the threshold of eight GPUs)."""
    from fake_pynvml import FakeGpu, FakeNvml

    from actuators.nvml import NvmlDevices
    from actuators.nvml_limits import NvmlPowerLimiter

    rng = np.random.default_rng(3)
    lines = (PowerDomainSettings("rack", 2200.0, tuple(range(5))),) if domain else ()
    settings = PowerSettings(budget_w=4000.0, domains=lines)
    governor = PowerGovernor(settings)
    owners = ["chat", "bulk"] * 5
    limit = [400.0] * 10
    fake = FakeNvml([FakeGpu(limit_mw=400_000) for _ in range(10)])
    limiter = NvmlPowerLimiter(NvmlDevices(fake), min_interval_s=0.0)
    loads = rng.uniform(350.0, 600.0, 10)
    for _ in range(300):
        loads = np.clip(loads + rng.normal(0.0, 3.0, 10), 250.0, 650.0)
        samples = [GpuSample(i, f"GPU-{i}", "H100", min(float(loads[i]), limit[i]), None, limit[i], 200.0, 700.0,
                             service=owners[i], capped_share=1.0 if loads[i] >= limit[i] else 0.0) for i in range(10)]
        for i, w in governor.step(samples, PLAN).items():
            limit[i] = limiter.set_power_limit(i, w) if nvml else w
        assert sum(limit) <= governor.threshold_w() + 1e-6, sum(limit)
        if domain:
            assert sum(limit[:5]) <= 2200.0 * (1 - settings.headroom) + 1e-6, limit[:5]


def test_under_a_ramp_room_goes_to_the_gpu_that_presses_not_to_those_that_rest() -> None:
    """Six GPUs lent down to a steady 450 W beside one at 900 W, under a 20-W/s ramp; a second load jumps to 900 W. The
    tick's room left after the pressing GPUs went on to the resting ones' caps; drawn by none, it counted at their draw
    at the next tick, and the ramp's ceiling took it back from the GPUs that had grown into it, every other tick: the
    jumped load stood at 541 W 20 ticks later (466 W with the limits fitted to the ceiling exactly). Resting GPUs keep
    their limits under a ramp, and the load climbs at the ramp."""
    governor = PowerGovernor(PowerSettings(budget_w=100_000.0, ramp_up_w_per_s=20.0), interval_s=1.0)
    seen, draws = run_loads(governor, PLAN, [(200.0, 700.0, "chat")] * 6,
                            lambda t: [900.0] + [900.0 if t >= 150 else 450.0] + [450.0] * 4, 171)
    assert seen[-1][1] >= 700.0 - 1.0, seen[-1]
    assert max(b - a for a, b in itertools.pairwise(draws[1:])) <= 20.0 + 1e-6


def test_under_a_ramp_a_gpu_its_bursts_hold_grows_back_into_room_it_lent() -> None:
    """A GPU serving bursts (30 % of each tick at 650 W, the rest at 300 W) under a 200-W/s ramp beside a load that
    jumps to 900 W: its mean draw sits outside its margin, so it is never pressing, while its limit clips every burst.
    Lent down to the grower, it got no room back once room left after the pressing GPUs went to none under a ramp
    (465 W for good; a review). A GPU its limit holds still grows back, to about where it settled before (582 W)."""
    governor = PowerGovernor(PowerSettings(budget_w=1e6, ramp_up_w_per_s=200.0), interval_s=1.0)
    limit = [700.0, 200.0]
    for _ in range(600):
        burst = 0.3 * min(650.0, limit[0]) + 0.7 * min(300.0, limit[0])
        samples = [GpuSample(0, "GPU-0", "H100", burst, None, limit[0], 200.0, 700.0, service="chat",
                             capped_share=0.3 if limit[0] < 650.0 else 0.0),
                   GpuSample(1, "GPU-1", "H100", min(900.0, limit[1]), None, limit[1], 200.0, 700.0, service="chat",
                             capped_share=1.0 if limit[1] < 900.0 else 0.0)]
        for i, w in governor.step(samples, PLAN).items():
            limit[i] = w
    assert limit[0] >= 560.0 and limit[1] >= 700.0 - 1.0, limit
