"""The grid-carbon budget source: intensities from a feed (an API or a CSV), mapped to watts by a curve,
looking `lead_s` ahead so that the budget drops before the grid gets dirtier, not after.

The feed is asked at most every `refresh_s` (the APIs count calls); between asks the cached points are
re-read at each `now`. The budget at `now` is the lowest the curve gives over the point in force at `now`
and every point up to `now + lead_s`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.budget.base import BudgetPoint, BudgetReading, TransientBudgetError
from controller.budget.curve import PowerCurve


@dataclass(frozen=True)
class IntensityPoint:
    """Grid carbon intensity from `at_s` (Unix seconds) on, in gCO2eq/kWh."""

    at_s: float
    g_per_kwh: float


class IntensityFeed(Protocol):
    """Where intensities come from: the latest one and, when the feed has them, forecast points."""

    name: str
    """Says which feed in a reading's why, e.g. "electricitymaps DE"."""

    def fetch(self, now: float) -> Sequence[IntensityPoint]:
        """Intensities around `now` in any order; raises BudgetError."""
        ...


class CarbonBudgetSource:
    def __init__(self, feed: IntensityFeed, curve: PowerCurve, lead_s: float = 3600.0,
                 refresh_s: float = 900.0, stale_after_s: float = 7200.0) -> None:
        self.feed, self.curve = feed, curve
        self.lead_s, self.refresh_s, self.stale_after_s = lead_s, refresh_s, stale_after_s
        self.points: list[IntensityPoint] = []
        self.next_fetch_s = float("-inf")

    def step(self, now: float) -> BudgetReading:
        if now >= self.next_fetch_s:
            self.points = sorted(self.feed.fetch(now), key=lambda p: p.at_s)
            self.next_fetch_s = now + self.refresh_s
        return self.reading(now)

    def reading(self, now: float) -> BudgetReading:
        """The budget at `now` from the cached points; none in force (or only one older than
        `stale_after_s`) raises TransientBudgetError, retried at the next refresh."""
        past = [p for p in self.points if p.at_s <= now]
        later = [p for p in self.points if p.at_s > now]
        if not past or now - past[-1].at_s > self.stale_after_s:
            retry_s = max(0.0, self.next_fetch_s - now)
            raise TransientBudgetError(f"{self.feed.name}: no intensity in force at {now:.0f}", retry_s)
        window = [past[-1]] + [p for p in later if p.at_s <= now + self.lead_s]
        lowest = min(window, key=lambda p: (self.curve.watts(p.g_per_kwh), p.at_s))
        budget_w = self.curve.watts(lowest.g_per_kwh)
        when = "now" if lowest is past[-1] else f"in {(lowest.at_s - now) / 60:.0f} min"
        why = f"{self.feed.name} {lowest.g_per_kwh:.0f} gCO2/kWh {when} -> {budget_w:.0f} W"
        valid_until_s = later[0].at_s if later else past[-1].at_s + self.stale_after_s
        forecast = tuple(BudgetPoint(p.at_s, self.curve.watts(p.g_per_kwh)) for p in later)
        return BudgetReading(budget_w, why, valid_until_s, forecast)
