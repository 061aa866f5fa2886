"""The scenario config's budget sources (`[power.budget]`) stepped on the simulated clock.

A source reads `start_utc + t x grid_time_scale`, never the wall clock: a schedule's or a carbon CSV's day
passes in simulated time (compressed where the scale is above 1). Demand-response signals reach the real
demand-response source through its signal file, as an operator's tool or the loopback endpoint would write
it: the run keeps each such file in its own temporary directory, and a `demand_response` event writes the
signal there. The budget in force is the lowest of the sources' (the combiner's) and the scenario's budget
events.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

from controller.budget.assemble import combiner, resolve
from controller.budget.base import BudgetError
from controller.budget.carbon import IntensityPoint
from controller.budget.carbon_feeds import CsvIntensityFeed
from controller.budget.combiner import BudgetCombiner
from controller.budget.demand_response import DemandSignal, store_signal
from controller.budget.settings import BudgetSettings, CarbonCsvSettings, DemandResponseSettings
from controller.simulate.scenario import TICK_ROUNDING, EventSettings, Scenario, fast_ticks

log = logging.getLogger("wattscale.simulate")


class GridClock:
    """What a budget source reads as the time at simulated second `t`."""

    def __init__(self, scn: Scenario) -> None:
        self.start_s = scn.start_unix_s
        self.scale = scn.settings.grid_time_scale

    def __call__(self, t_s: float) -> float:
        return self.start_s + t_s * self.scale


class Intensity:
    """The grid's carbon intensity at simulated second `t`, from the config's first carbon CSV source (the
    point in force, as the source reads it); nan where the config has none. Used to count grams of CO2."""

    def __init__(self, scn: Scenario) -> None:
        self.clock = GridClock(scn)
        budget = scn.config.budget
        csv = [s for _, s in budget.sources if isinstance(s, CarbonCsvSettings)] if budget is not None else []
        points: Sequence[IntensityPoint] = []
        if csv:
            try:
                points = CsvIntensityFeed(resolve(scn.config.base_dir, csv[0].path), csv[0].basis).fetch(0.0)
            except BudgetError as exc:  # the source fails the same way in the run: its budget falls back
                log.warning("no carbon intensity to count CO2 with: %s", exc)
        self.points = sorted(points, key=lambda p: p.at_s)
        self.starts = [p.at_s for p in self.points]

    def at(self, t_s: float) -> float:
        """Read every simulated second: a bisection, where a year of hourly points scanned each second added
        minutes to a week's run."""
        k = bisect.bisect_right(self.starts, self.clock(t_s))
        return self.points[k - 1].g_per_kwh if k else math.nan


class SimBudget:
    """The scenario's budget over simulated time: its sources on the simulated clock, its budget events, and
    the demand-response signals its events send."""

    def __init__(self, scn: Scenario, signal_dir: Path, sources: bool = True, start_w: float | None = None) -> None:
        self.clock = GridClock(scn)
        self.event_w = scn.start_budget_w if start_w is None else start_w
        self.signal_paths: list[Path] = []
        self.combiner: BudgetCombiner | None = None
        settings = scn.config.budget
        if sources and settings is not None:
            self.combiner = combiner(self._redirected(settings, signal_dir), {}, base_dir=scn.config.base_dir,
                                     wait_s=math.inf)  # a CSV read in the step: the same seed reads the same
            # (an API feed's first answer would be waited for whole: a scenario refuses API sources)
        self.why = "scenario"

    def _redirected(self, settings: BudgetSettings, signal_dir: Path) -> BudgetSettings:
        """The settings with each demand-response source's file in `signal_dir` (a run never writes into the
        repository, and two runs never share a signal)."""
        out = []
        for name, s in settings.sources:
            if isinstance(s, DemandResponseSettings):
                path = signal_dir / f"signal-{len(self.signal_paths)}.json"
                self.signal_paths.append(path)
                s = dataclasses.replace(s, path=str(path), port=0)
            out.append((name, s))
        return dataclasses.replace(settings, sources=tuple(out))

    def apply(self, e: EventSettings, t_s: float) -> None:
        """A budget or demand-response event, applied at simulated second `t_s` (its signal ends `duration_s` after
        the event's own time)."""
        if e.budget_w is None:  # another kind of event (both of these need it, checked when read)
            return
        if e.kind == "budget":
            self.event_w = e.budget_w
        elif e.kind == "demand_response":
            signal = DemandSignal(e.budget_w, self.clock(e.at_s + e.duration_s), e.reason or "scenario event")
            for path in self.signal_paths:
                store_signal(str(path), signal)

    def step(self, t_s: float) -> float:
        """The budget in force from simulated second `t_s`; `why` says where it comes from."""
        if self.combiner is None:
            self.why = "scenario"
            return self.event_w
        budget = self.combiner.step(self.clock(t_s))
        if budget.budget_w < self.event_w:
            self.why = f"{budget.source or 'fallback'}: {budget.why}"
            return budget.budget_w
        self.why = "scenario"
        return self.event_w


def mean_budget_w(scn: Scenario, duration_s: float, signal_dir: Path) -> float:
    """The time-mean of the budget the scenario's sources and events set over `duration_s` (stepped alone, at
    the fast interval): the flat budget of the same mean that `wattscale-flat` runs under."""
    budget = SimBudget(scn, signal_dir)
    fast = scn.config.daemon.fast_interval_s
    events = sorted(scn.settings.events, key=lambda e: e.at_s)
    n = fast_ticks(duration_s, fast)
    total = 0.0
    for k in range(n):
        t = k * fast
        for e in events_due(events, t, fast, duration_s):
            budget.apply(e, t)
        total += budget.step(t)
    return total / n


def events_due(events: list[EventSettings], t_s: float, fast_s: float, end_s: float) -> Iterator[EventSettings]:
    """Take from `events` (sorted by time) those a tick starting at `t_s` applies: the ones that fall in it, before
    the run's end `end_s` (an event not on a tick applies at the start of the tick it falls in). The tick's end is
    read within TICK_ROUNDING: 11 x 0.1 + 0.1 is 1.2000000000000002, and an event at 1.2 s applied a tick early."""
    upto = min(t_s + fast_s, end_s)
    while events and events[0].at_s < upto - TICK_ROUNDING * max(1.0, abs(upto)):
        yield events.pop(0)
