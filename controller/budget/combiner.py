"""Several budget sources into one budget: the lowest wins.

Each source is stepped at every `now` unless it is waiting out a retry delay (a transient error's
Retry-After) or has failed permanently. A source that fails keeps its last good value for `ttl_s` after
that value was read, then counts as the safe budget until it answers again, or as its last value where that is
lower and still in force (`valid_until_s`: a demand-response signal's deadline): a broken signal file had lifted
the utility's cut to the safe budget 13 minutes before its deadline. Every change of the budget, or of the
source that sets it, is logged and flagged (`Budget.changed`), for the metrics and the decision log.

`now` is the wall clock's (schedules and signals' deadlines are in real time), which steps. A step back moves
every retry and reading time back with it, so a delay or an age is what has elapsed: a 5-s retry had waited out
an hour's step back, the utility's cut ignored all that hour, and a reading's negative age counted as fresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from controller.budget.base import (
    BudgetError,
    BudgetReading,
    BudgetSource,
    PendingBudgetError,
    PermanentBudgetError,
    TransientBudgetError,
)

log = logging.getLogger("wattscale.budget")


@dataclass(frozen=True)
class Budget:
    """The budget in force at one step, and whether it moved (or another source now sets it) at this step."""

    budget_w: float
    source: str
    """The source that sets the budget; "" when none does and the safe budget holds."""
    why: str
    changed: bool


@dataclass
class SourceState:
    """What the combiner knows of one source."""

    reading: BudgetReading | None = None
    """The last good reading (None: the source set no limit then)."""
    read_at_s: float | None = None
    """When the last good reading came; None before the first."""
    error: str = ""
    """The error of a run of failures; "" while the source answers."""
    retry_at_s: float = float("-inf")
    permanent: bool = False
    pending: bool = False
    """Its first answer is on its way (PendingBudgetError): until it comes, or fails, it sets no limit."""
    fresh_until_s: float = float("-inf")
    """Until when the last good answer said it holds (a pending answer's re-told points move theirs on): past the
    ttl, a failed source's cut holds no longer."""


class BudgetCombiner:
    def __init__(self, sources: Mapping[str, BudgetSource], ttl_s: float, safe_budget_w: float,
                 default_retry_s: float = 60.0, failed: Callable[[], None] = lambda: None) -> None:
        self.sources = dict(sources)
        self.ttl_s, self.safe_budget_w, self.default_retry_s = ttl_s, safe_budget_w, default_retry_s
        self.failed = failed
        """Counts each failed read of a source (the daemon's wattscale_errors_total{kind="budget_source"}): one is
        logged once a run of them, each counted."""
        self.states = {name: SourceState() for name in self.sources}
        self.last: Budget | None = None
        self.last_now: float | None = None
        """The last step's time: one later than `now` means the clock stepped back by the difference."""

    def _stepped_back(self, now: float) -> None:
        if self.last_now is not None and now < self.last_now:
            back = self.last_now - now
            if back >= 1.0:  # a step, not NTP's millisecond jitter
                log.warning("budget sources: the clock stepped back %.0f s; retries and readings' ages moved with it",
                            back)
            for state in self.states.values():
                state.retry_at_s -= back
                state.read_at_s = None if state.read_at_s is None else state.read_at_s - back
        self.last_now = now

    def poll(self, name: str, now: float) -> None:
        """Step one source if it is due, and record its reading or its error."""
        state, source = self.states[name], self.sources[name]
        if state.permanent or now < state.retry_at_s:
            return
        try:
            reading = source.step(now)
        except PendingBudgetError as exc:  # no failure: asked again shortly, not logged, not counted
            state.pending, state.retry_at_s = state.read_at_s is None and not state.error, now + exc.retry_after_s
            if exc.held is not None and state.read_at_s is not None:  # no fresh answer: its age and error hold
                state.reading = exc.held
            return
        except Exception as exc:  # one source's failure, of any kind, is that source's alone
            self.failed()
            state.pending = False
            delay_s = exc.retry_after_s if isinstance(exc, TransientBudgetError) else self.default_retry_s
            if not state.error:
                log.warning("budget source %s: %s", name, exc)
            state.error, state.retry_at_s = str(exc), now + delay_s
            state.permanent = isinstance(exc, PermanentBudgetError)
            if not isinstance(exc, BudgetError):
                log.debug("budget source %s failed unexpectedly", name, exc_info=True)
            return
        if state.error:
            log.info("budget source %s answers again", name)
        state.reading, state.read_at_s, state.error, state.pending = reading, now, "", False
        state.fresh_until_s = reading.valid_until_s if reading is not None else float("-inf")

    def value(self, name: str, now: float) -> tuple[float, str] | None:
        """What one source contributes at `now`: (watts, why), or None when it sets no limit."""
        state = self.states[name]
        if state.pending:  # a first answer on its way, as before it came (the daemon's start waited for it)
            return None
        if state.read_at_s is not None and now - state.read_at_s <= self.ttl_s:
            if state.reading is None:
                return None
            why = state.reading.why
            if state.error:
                why = f"{why} (held {now - state.read_at_s:.0f} s of {self.ttl_s:.0f} s: {state.error})"
            return state.reading.budget_w, why
        last = state.reading  # held past the ttl on a failure only, and while the last good answer said it holds: a
        # feed whose answers stay pending, or fail after one, re-tells its cached points with a validity that moves on
        if state.error and last is not None and now < state.fresh_until_s and last.budget_w < self.safe_budget_w:
            return last.budget_w, f"{last.why} (its last reading, held past {self.ttl_s:.0f} s while in force, under " \
                                  f"the safe budget: {state.error})"
        return self.safe_budget_w, f"safe budget: {state.error or 'no reading yet'}"

    def step(self, now: float) -> Budget:
        self._stepped_back(now)
        for name in self.sources:
            self.poll(name, now)
        values = {name: v for name in self.sources if (v := self.value(name, now)) is not None}
        if values:
            source = min(values, key=lambda n: values[n][0])
            budget_w, why = values[source]
        else:
            source, budget_w, why = "", self.safe_budget_w, "safe budget: no source sets a limit"
        before = self.last
        changed = before is None or before.budget_w != budget_w or before.source != source
        if changed:
            failing = bool(source) and bool(self.states[source].error)  # a broken source's fallback: said louder
            log.log(logging.WARNING if failing else logging.INFO, "budget sources: %.0f W from %s: %s", budget_w,
                    source or "fallback", why)
        self.last = Budget(budget_w, source, why, changed)
        return self.last
