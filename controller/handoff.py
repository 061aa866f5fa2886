"""What other threads hand the control loops: a reload's settings and the budget sources' budget.

The governor takes both at once, as one reference to new power settings made under one lock (a reload and the
budget thread may both hand something over); the slow loop takes them at the start of its next tick, so a tick in
flight keeps one config throughout.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any

from controller.budget.combiner import Budget, BudgetCombiner
from controller.governor import PowerGovernor
from controller.own_metrics import OwnMetrics
from controller.settings import PowerSettings, Settings

log = logging.getLogger("wattscale.budget")


class Handoff:
    """One lock over what the reload and budget threads hand over; the governor holds the result by reference."""

    def __init__(self, settings: Settings, governor: PowerGovernor, metrics: OwnMetrics) -> None:
        self.governor, self.metrics = governor, metrics
        self._latest = settings
        """The newest settings (a reload's, before the slow loop adopts them)."""
        self.budget_from: tuple[float, str] | None = None
        """The budget sources' budget and why (`set_budget`); None: `power.budget_w` alone."""
        self._next: Settings | None = None
        self._changes: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        """Held while the newest settings and the sources' budget become the governor's settings, and while the
        slow loop takes a reload or the budget changes."""
        self._to_governor()

    @property
    def latest(self) -> Settings:
        """The newest settings: a reload's, before the slow loop adopts them."""
        return self._latest

    def reconfigure(self, settings: Settings) -> None:
        """New settings (a reload checked by controller/reload.py): the governor's budget at once, the rest for the
        slow loop's next tick."""
        with self._lock:
            self._latest = self._next = settings
            before = self.governor.settings.budget_w
            self._to_governor()
            if self.governor.settings.budget_w != before:  # the budget in force moved with the config's
                self.metrics.budget_changes.labels("config").inc()

    def set_budget(self, budget_w: float, why: str, now: float, changed: bool = True) -> None:
        """The budget sources moved the budget: the governor takes it at once, the next plan plans for it, the
        decision log says why; `changed` False: the same budget for a why of its own (kept current, no change)."""
        with self._lock:
            self.budget_from = (budget_w, why)
            if changed:
                self._to_governor()
                self._changes.append({"t": round(now, 3), "budget_w": self.governor.settings.budget_w, "why": why})

    def take(self) -> tuple[Settings | None, list[dict[str, Any]]]:
        """For the slow loop's tick: the settings of a reload since the last (None: none), and the budget's changes."""
        with self._lock:
            settings, self._next = self._next, None
            changes, self._changes = self._changes, []
        return settings, changes

    def step_sources(self, sources: BudgetCombiner, wall_s: float, now: float, last_failure: str | None) -> str | None:
        """Step the budget sources at the wall clock's `wall_s` (schedules and forecasts are in real time) and hand
        their budget over (`sources_stepped`), for the daemon's budget thread and the operator's alike. A source's bug
        is counted every time and logged once while it repeats (every tick: it had been a traceback a second), the
        last budget holding. Returns the failure (repr) to give as `last_failure` next time; None where they
        stepped."""
        try:
            self.sources_stepped(sources.step(wall_s), now)
        except Exception as exc:
            self.metrics.errors.labels("budget_source").inc()
            if repr(exc) != last_failure:
                log.exception("budget sources failed: %r (logged once while it repeats; the last budget holds)", exc)
            return repr(exc)
        return None

    def sources_stepped(self, budget: Budget, now: float) -> None:
        """A step of the budget sources (the daemon's budget thread and the operator's both hand theirs here): a
        change counted and handed over; a why that moved alone (a signal's time left, a failing source's latest
        error) kept current, with no change recorded."""
        if budget.changed:
            self.metrics.budget_changes.labels(budget.source or "fallback").inc()
        self.set_budget(budget.budget_w, f"{budget.source or 'fallback'}: {budget.why}", now, budget.changed)

    def budget(self, configured_w: float) -> tuple[float, str | None]:
        """The budget in force and why, from one read of the sources' (the budget thread may move it between two):
        their reason where their budget is under the configured one (a reload to a budget under theirs had kept
        naming them); why None where no source has said."""
        source = self.budget_from
        if source is None:
            return configured_w, None
        if source[0] < configured_w:
            return source
        return configured_w, f"power.budget_w (the sources' {source[0]:.0f} W is not below it)"

    def power(self, settings: Settings) -> PowerSettings:
        """The power settings in force: the configured budget, lowered by the budget sources where they say
        (`budget`)."""
        budget_w, _ = self.budget(settings.power.budget_w)
        return settings.power if budget_w == settings.power.budget_w else replace(settings.power, budget_w=budget_w)

    def _to_governor(self) -> None:
        """The newest settings, with the sources' budget, to the governor (one reference)."""
        power = self.power(self._latest)
        self.governor.settings = power
        self.governor.interval_s = self._latest.daemon.fast_interval_s  # the ramps' share of a tick
        self.metrics.budget.set(power.budget_w)
