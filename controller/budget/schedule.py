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

from controller.budget.base import BudgetPoint, BudgetReading
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
    def __init__(self, rules: list[Rule], default_budget_w: float, time_zone: str,
                 horizon_s: float = 86400.0) -> None:
        self.rules, self.default_budget_w = rules, default_budget_w
        self.tz = ZoneInfo(time_zone)
        self.horizon_s = horizon_s
        """How far ahead the reading's forecast lists the table's changes."""
        self._held: tuple[float, float, tuple[BudgetPoint, ...]] | None = None
        """The last week read: when, until when its budget held, and the table's changes over it."""

    def budget_at(self, now: float) -> tuple[float, str]:
        local = dt.datetime.fromtimestamp(now, self.tz)
        minute = local.hour * 60 + local.minute
        matching = [r for r in self.rules if local.weekday() in r.weekdays and r.start_min <= minute < r.end_min]
        if not matching:
            return self.default_budget_w, f"schedule default {self.default_budget_w:.0f} W"
        rule = min(matching, key=lambda r: r.budget_w)
        return rule.budget_w, f"schedule {rule.label} {rule.budget_w:.0f} W"

    def boundaries(self, now: float, until: float) -> list[float]:
        """The Unix times in (now, until] where a rule starts or ends, in order."""
        today = dt.datetime.fromtimestamp(now, self.tz).date()
        out = set()
        for d in range(math.ceil((until - now) / 86400.0) + 2):
            day = today + dt.timedelta(days=d)
            for rule in self.rules:
                if day.weekday() not in rule.weekdays:
                    continue
                for m in (rule.start_min, rule.end_min):
                    local = dt.datetime.combine(day, dt.time()) + dt.timedelta(minutes=m)
                    t = local.replace(tzinfo=self.tz).timestamp()
                    if now < t <= until:
                        out.add(t)
        return sorted(out)

    def step(self, now: float) -> BudgetReading:
        """The budget at `now`, valid until the table next changes it (a week covers every table), with the
        changes within `horizon_s` as forecast. The budget and its rule are read each step; the week's changes
        only once the budget changes, the forecast would pass the week read, or the clock went back: they cost
        rules x boundaries (400 rules took 47 ms), and the source is stepped every second."""
        held = self._held
        if held is None or not held[0] <= now < held[1] or now + self.horizon_s > held[0] + WEEK_S:
            held = self._held = (now, *self._changes(now))
        _, valid_until_s, changes = held
        budget_w, why = self.budget_at(now)
        return BudgetReading(budget_w, why, valid_until_s, tuple(p for p in changes if p.at_s <= now + self.horizon_s))

    def _changes(self, now: float) -> tuple[float, tuple[BudgetPoint, ...]]:
        """When the budget at `now` next changes, and the table's changes over the week after it."""
        changes, last_w = [], self.budget_at(now)[0]
        for t in self.boundaries(now, now + WEEK_S):
            w, _ = self.budget_at(t)
            if w != last_w:
                changes.append(BudgetPoint(t, w))
                last_w = w
        return changes[0].at_s if changes else math.inf, tuple(changes)
