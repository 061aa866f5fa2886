"""Budgets that follow the clock: a fixed number, and a weekday x time-of-day table in a time zone.

Table rules are matched on the local wall time of `now` (zoneinfo), so a rule for 08:00-20:00 holds from
08:00 to 20:00 local time on both sides of a daylight-saving change. Where several rules match, the lowest
budget wins; where none does, the table's default holds.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from controller.budget.base import BudgetReading
from controller.telemetry.base import shortened

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEK_S = 7 * 86400.0


class FixedSource:
    def __init__(self, budget_w: float) -> None:
        self.budget_w = budget_w

    def step(self, now: float) -> BudgetReading:
        return BudgetReading(self.budget_w, f"fixed {self.budget_w:.0f} W", math.inf)


@dataclass(frozen=True)
class Rule:
    """`budget_w` on `weekdays` (0 = Monday) from `start_min` to `end_min` minutes after local midnight."""

    weekdays: frozenset[int]
    start_min: int
    end_min: int
    budget_w: float
    label: str


def minutes(hhmm: str) -> int:
    """"HH:MM" (00:00 to 24:00) as minutes after midnight; raises ValueError otherwise."""
    hours, _, mins = hhmm.partition(":")
    if len(hours) != 2 or len(mins) != 2 or not (hours + mins).isascii() or not (hours + mins).isdigit():
        raise ValueError(f"{shortened(repr(hhmm), 20)} is not HH:MM")
    total = int(hours) * 60 + int(mins)
    if int(mins) > 59 or total > 24 * 60:
        raise ValueError(f"{hhmm!r} is not a time of day")
    return total


class ScheduleSource:
    def __init__(self, rules: list[Rule], default_budget_w: float, time_zone: str) -> None:
        self.rules, self.default_budget_w = rules, default_budget_w
        self.tz = ZoneInfo(time_zone)
        self._held: tuple[float, float] | None = None
        """The last change read: from when, and until when (the table's next change) the budget holds."""

    def budget_at(self, now: float) -> tuple[float, str]:
        local = dt.datetime.fromtimestamp(now, self.tz)
        minute = local.hour * 60 + local.minute
        matching = [r for r in self.rules if local.weekday() in r.weekdays and r.start_min <= minute < r.end_min]
        if not matching:
            return self.default_budget_w, f"schedule default {self.default_budget_w:.0f} W"
        rule = min(matching, key=lambda r: r.budget_w)
        return rule.budget_w, f"schedule {rule.label} {rule.budget_w:.0f} W"

    def boundaries(self, now: float, until: float) -> list[float]:
        """The Unix times in (now, until] where a rule may start or end, in order: each rule time at both of its
        readings (a time in autumn's repeated hour happens twice), and the instants the clock changes (a rule under
        way when the clock jumps into or back across it starts or ends then; read at one reading only, the spring
        gap's rule start and the repeated hour's second end were 30 minutes off)."""
        today = dt.datetime.fromtimestamp(now, self.tz).date()
        out: set[float] = set()
        for d in range(math.ceil((until - now) / 86400.0) + 2):
            day = today + dt.timedelta(days=d)
            midnight = dt.datetime.combine(day, dt.time())
            for rule in self.rules:
                if day.weekday() not in rule.weekdays:
                    continue
                for m in (rule.start_min, rule.end_min):
                    local = midnight + dt.timedelta(minutes=m)
                    out.update(local.replace(tzinfo=self.tz, fold=fold).timestamp() for fold in (0, 1))
            if (change := self._clock_change(midnight)) is not None:
                out.add(change)
        return sorted(t for t in out if now < t <= until)

    def _clock_change(self, midnight: dt.datetime) -> float | None:
        """The instant the zone's offset changes within the local day starting at `midnight`, to the second (None: it
        does not)."""
        low, high = midnight.replace(tzinfo=self.tz).timestamp(), (midnight + dt.timedelta(days=1)).replace(
            tzinfo=self.tz).timestamp()
        offset = dt.datetime.fromtimestamp(low, self.tz).utcoffset()
        if dt.datetime.fromtimestamp(high, self.tz).utcoffset() == offset:
            return None
        while high - low > 1.0:  # the offset is a step in UTC time: bisect it
            mid = math.floor((low + high) / 2.0)
            low, high = (mid, high) if dt.datetime.fromtimestamp(mid, self.tz).utcoffset() == offset else (low, mid)
        return high

    def step(self, now: float) -> BudgetReading:
        """The budget at `now`, valid until the table next changes it (a week covers every table). The budget and
        its rule are read each step; the next change only once the budget changes or the clock went back: it costs
        rules x boundaries (400 rules took 47 ms), and the source is stepped every second."""
        held = self._held
        if held is None or not held[0] <= now < held[1]:
            held = self._held = (now, self._next_change(now))
        budget_w, why = self.budget_at(now)
        return BudgetReading(budget_w, why, held[1])

    def _next_change(self, now: float) -> float:
        """When the budget at `now` next changes (inf: not within a local week, so never; a day past WEEK_S, as a week
        across the autumn clock change lasts 169 hours: a weekly rule's next start was read as never)."""
        budget_w = self.budget_at(now)[0]
        return next((t for t in self.boundaries(now, now + WEEK_S + 86400.0) if self.budget_at(t)[0] != budget_w),
                    math.inf)
