"""The grid-carbon budget source: intensities from a feed (an API or a CSV), mapped to watts by a
piecewise-linear curve, looking `lead_s` ahead so that the budget drops before the grid gets dirtier.

The curve is config data: (gCO2/kWh, watts) points in rising intensity, interpolated between points and
flat beyond the ends; a cleaner grid never gets a smaller budget, so the watts may not rise with intensity.
The feed is asked at most every `refresh_s` (the APIs count calls); between asks the cached points are
re-read at each `now`. The budget at `now` is the lowest the curve gives over the point in force at `now`
and every point up to `now + lead_s`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from controller.budget.base import BudgetReading, PendingBudgetError, TransientBudgetError, utc_iso
from controller.config_loader import ConfigError

MAX_CURVE_W = 1e8
"""Most watts a curve point may give, as any budget may state (settings_checks.MAX_POWER_W): 1e308 W overflowed
the interpolation to a budget of -inf W, every GPU held at its floor, after check-config said ok."""
MAX_INTENSITY = 5000.0
"""Highest carbon intensity a feed's row or a curve's point may state (gCO2eq/kWh): coal plants emit about 1,000."""


def check_curve(points: Sequence[Sequence[float]], where: str) -> None:
    """Refuse a curve that is not a list of >= 1 (g/kWh in [0, MAX_INTENSITY], watts in (0, MAX_CURVE_W]) pairs,
    rising in intensity strictly and falling (or flat) in watts."""
    if not points:
        raise ConfigError(where, "needs at least one [gCO2/kWh, watts] point")
    for i, p in enumerate(points):
        if len(p) != 2:
            raise ConfigError(f"{where}[{i}]", f"must be [gCO2/kWh, watts], got {list(p)}")
        g, w = p
        if not (math.isfinite(g) and 0 <= g <= MAX_INTENSITY):
            raise ConfigError(f"{where}[{i}]", f"intensity must be in [0, {MAX_INTENSITY:g}] gCO2/kWh, got {g}")
        if not (math.isfinite(w) and 0 < w <= MAX_CURVE_W):
            raise ConfigError(f"{where}[{i}]", f"watts must be in (0, {MAX_CURVE_W:g}], got {w}")
        if i and g <= points[i - 1][0]:
            raise ConfigError(f"{where}[{i}]", "intensities must rise strictly from point to point")
        if i and w > points[i - 1][1]:
            raise ConfigError(f"{where}[{i}]", "not monotonic: watts may not rise with intensity")


class PowerCurve:
    """Maps gCO2/kWh to a budget in watts; build it from a checked curve."""

    def __init__(self, points: Sequence[Sequence[float]]) -> None:
        check_curve(points, "curve")
        self.g_per_kwh = [float(p[0]) for p in points]
        self.budget_w = [float(p[1]) for p in points]

    def watts(self, g_per_kwh: float) -> float:
        xs, ys = self.g_per_kwh, self.budget_w
        i = bisect.bisect_right(xs, g_per_kwh)
        if i == 0:
            return ys[0]
        if i == len(xs):
            return ys[-1]
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * ((g_per_kwh - x0) / (x1 - x0))  # the share first: in [0, 1], no overflow


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
        self.starts: list[float] = []
        self.watts: list[float] = []
        """Each point's budget (its start in `starts`), worked out once a fetch: a year of hourly points is read
        every second."""
        self.next_fetch_s = float("-inf")

    def step(self, now: float) -> BudgetReading:
        if now >= self.next_fetch_s or now < self.next_fetch_s - self.refresh_s:  # due, or the clock stepped back
            try:
                fetched = self.feed.fetch(now)
            except PendingBudgetError as exc:  # an answer on its way: the points held meanwhile, if any
                if not self.points:
                    raise
                raise PendingBudgetError(str(exc), exc.retry_after_s, held=self.reading(now)) from None
            self.points = sorted(fetched, key=lambda p: p.at_s)
            self.starts = [p.at_s for p in self.points]
            self.watts = [self.curve.watts(p.g_per_kwh) for p in self.points]
            self.next_fetch_s = now + self.refresh_s
        return self.reading(now)

    def reading(self, now: float) -> BudgetReading:
        """The budget at `now` from the cached points; none in force (or only one older than
        `stale_after_s`) raises TransientBudgetError, retried at the next refresh."""
        k = bisect.bisect_right(self.starts, now)  # points[:k] have started, points[k:] are forecast
        if k == 0 or now - self.points[k - 1].at_s > self.stale_after_s:
            retry_s = max(0.0, self.next_fetch_s - now)
            why = (f"its first point starts at {utc_iso(self.points[0].at_s)}" if k == 0 and self.points else
                   "it holds no point" if k == 0 else f"its latest point, at {utc_iso(self.points[k - 1].at_s)}, is "
                   f"older than stale_after_s ({self.stale_after_s:g} s)")
            raise TransientBudgetError(f"{self.feed.name}: no intensity in force at {utc_iso(now)}: {why}", retry_s)
        ahead = bisect.bisect_right(self.starts, now + self.lead_s)
        lowest = min(range(k - 1, ahead), key=lambda i: (self.watts[i], self.points[i].at_s))
        budget_w, point = self.watts[lowest], self.points[lowest]
        when = "now" if lowest == k - 1 else f"in {(point.at_s - now) / 60:.0f} min"
        why = f"{self.feed.name} {point.g_per_kwh:.0f} gCO2/kWh {when} -> {budget_w:.0f} W"
        valid_until_s = self.starts[k] if k < len(self.points) else self.points[k - 1].at_s + self.stale_after_s
        return BudgetReading(budget_w, why, valid_until_s)
