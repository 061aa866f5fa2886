"""A GPU read that hangs costs the fast loop its deadline, not its ticks: the governor still cuts, or fails safe."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from test_governor import BlindPlant, fast_on

from controller.telemetry.base import DepartingGpus, GpuSample, TelemetryError
from controller.telemetry.deadline import SampleDeadline


class HangingPlant(BlindPlant):
    """BlindPlant whose reads hang until `release` is set, while `hang` is."""

    def __init__(self) -> None:
        super().__init__()
        self.hang, self.release, self.reads = False, threading.Event(), 0

    def sample(self, now: float) -> list[GpuSample]:
        self.reads += 1
        if self.hang:
            self.release.wait(10.0)  # bounded: a test that fails leaves no thread for good
        return super().sample(now)


def test_a_hung_read_is_refused_at_its_deadline_and_not_started_again_while_it_hangs() -> None:
    plant = HangingPlant()
    source = SampleDeadline(plant, 0.05)
    assert [g.index for g in source.sample(1.0)] == [0, 1]
    plant.hang = True
    started = time.monotonic()
    with pytest.raises(TelemetryError, match=r"longer than its 0.05 s deadline"):
        source.sample(2.0)
    assert time.monotonic() - started < 1.0
    with pytest.raises(TelemetryError, match=r"has not returned \(deadline 0.05 s\); no other is started"):
        source.sample(3.0)
    assert plant.reads == 2  # one thread hangs, not one a tick
    plant.hang = False
    plant.release.set()
    time.sleep(0.05)
    assert [g.index for g in source.sample(4.0)] == [0, 1]
    plant.blind = True  # the source's own failure reaches the tick as it was raised
    with pytest.raises(TimeoutError, match="the exporter does not answer"):
        source.sample(5.0)


def test_the_governor_cuts_a_budget_drop_while_the_read_hangs() -> None:
    """A read hung for 8 s had held every tick (one job at a time): the budget fell to 2,000 W beside a draw of
    2,380 and nothing moved. Behind the deadline the next tick is a lost sample, and with the budget fallen it
    cuts the limits at once."""
    plant = HangingPlant()
    fast = fast_on(plant, {"lo": 500.0, "hi": 700.0}, {"lo": 2, "hi": 1})
    fast.gpus = SampleDeadline(plant, 0.05)
    for t in range(1, 4):
        fast.tick(float(t))
    plant.hang = True
    fast.governor.settings = replace(fast.governor.settings, budget_w=600.0)
    try:
        started = time.monotonic()
        fast.tick(4.0)
        assert time.monotonic() - started < 1.0
        assert not fast.blind.failsafe_on and sum(plant.limit_w.values()) <= 600.0 * 0.97 + 1e-6, plant.limit_w
    finally:
        plant.release.set()


class SlowPlant(BlindPlant):
    """BlindPlant whose reads take `read_s`."""

    def __init__(self, read_s: float) -> None:
        super().__init__()
        self.read_s = read_s

    def sample(self, now: float) -> list[GpuSample]:
        time.sleep(self.read_s)
        return super().sample(now)


def test_a_source_slower_than_the_deadline_is_lost_each_tick_and_says_what_mends_it() -> None:
    """A late answer is dropped, not used a tick later: its limits would predate those set since, and the room
    under the budget read from them would be wrong."""
    source = SampleDeadline(SlowPlant(0.08), 0.05)
    for now in (1.0, 2.0, 3.0):
        with pytest.raises(TelemetryError, match=r"longer than its 0\.05 s deadline \(a source this slow needs a "
                                                 r"longer daemon\.fast_interval_s\)"):
            source.sample(now)
        time.sleep(0.05)  # the rest of the tick: the read ends before the next


class Leaving(BlindPlant):
    """BlindPlant that says GPU 'a' left the site, once."""

    told = False

    def departed(self) -> frozenset[str]:
        out = frozenset() if self.told else frozenset({"a"})
        self.told = True
        return out


def test_the_gpus_a_source_says_left_pass_through_the_deadline() -> None:
    """The wrapper hid the source's departures (no `departed`): a GPU that left the cluster stayed counted at its
    last limit for good, and a new one could take its number."""
    assert isinstance(SampleDeadline(BlindPlant(), 0.5), DepartingGpus)  # one that says none says none
    assert SampleDeadline(BlindPlant(), 0.5).departed() == frozenset()
    source = SampleDeadline(Leaving(), 0.5)
    source.sample(1.0)
    assert source.departed() == {"a"} and source.departed() == frozenset()
