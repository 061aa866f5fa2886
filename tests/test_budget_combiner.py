"""The combiner: the lowest budget wins; a failing source holds its last value for the TTL, then counts as
the safe budget; retry delays and permanent failures are honoured; every change says why."""

from __future__ import annotations

import logging

import pytest

from controller.budget.base import (
    BudgetError,
    BudgetReading,
    PendingBudgetError,
    PermanentBudgetError,
    TransientBudgetError,
)
from controller.budget.combiner import BudgetCombiner
from controller.budget.schedule import FixedSource

Outcome = BudgetReading | BudgetError | None


class Scripted:
    """A source that answers from a script, one outcome per step (the last repeats), and counts its steps."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes, self.steps = list(outcomes), 0

    def step(self, now: float) -> BudgetReading | None:
        self.steps += 1
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BudgetError):
            raise outcome
        return outcome


def reading(budget_w: float) -> BudgetReading:
    return BudgetReading(budget_w, f"scripted {budget_w:.0f} W", float("inf"))


def test_the_lowest_source_wins_and_each_change_says_why() -> None:
    grid = Scripted(reading(1800.0), reading(1800.0), reading(2600.0))
    combiner = BudgetCombiner({"site": FixedSource(2500.0), "grid": grid}, ttl_s=600.0, safe_budget_w=1000.0)
    first = combiner.step(0.0)
    assert (first.budget_w, first.source) == (1800.0, "grid")
    assert first.changed and first.why == "scripted 1800 W"
    assert not combiner.step(1.0).changed  # nothing moved
    third = combiner.step(2.0)
    assert third.changed and (third.budget_w, third.source, third.why) == (2500.0, "site", "fixed 2500 W")


def test_a_failing_source_holds_for_the_ttl_then_counts_as_the_safe_budget(caplog: pytest.LogCaptureFixture) -> None:
    down = TransientBudgetError("grid: HTTP 503", retry_after_s=0.0)
    grid = Scripted(reading(1800.0), down, down, down, reading(1700.0))
    combiner = BudgetCombiner({"site": FixedSource(2500.0), "grid": grid}, ttl_s=600.0, safe_budget_w=1200.0)
    combiner.step(0.0)
    with caplog.at_level(logging.INFO, logger="wattscale.budget"):
        held = combiner.step(300.0)
        assert held.budget_w == 1800.0 and not held.changed and "held 300 s of 600 s: grid: HTTP 503" in held.why
        assert combiner.step(600.0).budget_w == 1800.0
        safe = combiner.step(601.0)
        assert safe.budget_w == 1200.0 and safe.changed
        assert safe.why == "safe budget: grid: HTTP 503" and safe.source == "grid"
        back = combiner.step(602.0)
        assert back.budget_w == 1700.0 and combiner.states["grid"].error == ""
    assert [r.message for r in caplog.records if r.levelno == logging.WARNING] == [
        "budget source grid: grid: HTTP 503",  # the run of failures is logged once
        "budget sources: 1200 W from grid: safe budget: grid: HTTP 503"]  # and the fallback it brings
    assert "budget source grid answers again" in caplog.text


def test_a_transient_error_is_not_retried_before_its_delay() -> None:
    grid = Scripted(reading(1800.0), TransientBudgetError("429", retry_after_s=120.0), reading(1600.0))
    combiner = BudgetCombiner({"grid": grid}, ttl_s=600.0, safe_budget_w=1000.0)
    combiner.step(0.0)
    combiner.step(10.0)
    for now in (20.0, 60.0, 129.0):
        assert combiner.step(now).budget_w == 1800.0
    assert grid.steps == 2
    assert combiner.step(130.0).budget_w == 1600.0 and grid.steps == 3


def test_a_permanent_error_stops_tries_and_falls_back_after_the_ttl() -> None:
    grid = Scripted(reading(1800.0), PermanentBudgetError("grid: HTTP 401, credentials refused"))
    combiner = BudgetCombiner({"site": FixedSource(2500.0), "grid": grid}, ttl_s=60.0, safe_budget_w=1000.0)
    combiner.step(0.0)
    combiner.step(1.0)
    assert combiner.step(60.0).budget_w == 1800.0
    assert combiner.step(10_000.0).budget_w == 1000.0
    assert grid.steps == 2 and combiner.states["grid"].permanent


def test_a_source_that_never_answered_counts_as_the_safe_budget() -> None:
    combiner = BudgetCombiner({"site": FixedSource(2500.0), "grid": Scripted(BudgetError("boom"))},
                              ttl_s=600.0, safe_budget_w=1000.0, default_retry_s=30.0)
    first = combiner.step(0.0)
    assert (first.budget_w, first.source, first.why) == (1000.0, "grid", "safe budget: boom")
    assert combiner.states["grid"].retry_at_s == 30.0  # an error of no kind waits the default delay


def test_demand_response_lowers_the_budget_until_its_deadline_passes() -> None:
    dr = Scripted(None, reading(900.0), reading(900.0), None)
    combiner = BudgetCombiner({"site": FixedSource(2500.0), "dr": dr}, ttl_s=600.0, safe_budget_w=1000.0)
    assert combiner.step(0.0).budget_w == 2500.0
    lowered = combiner.step(1.0)
    assert (lowered.budget_w, lowered.source) == (900.0, "dr") and lowered.changed
    assert not combiner.step(2.0).changed
    after = combiner.step(3.0)
    assert after.changed and (after.budget_w, after.source, after.why) == (2500.0, "site", "fixed 2500 W")


def test_when_no_source_sets_a_limit_the_safe_budget_holds() -> None:
    combiner = BudgetCombiner({"dr": Scripted(None)}, ttl_s=600.0, safe_budget_w=1000.0)
    budget = combiner.step(0.0)
    assert (budget.budget_w, budget.source, budget.why) == (1000.0, "", "safe budget: no source sets a limit")


def test_a_source_failing_in_an_unforeseen_way_fails_alone() -> None:
    """A source whose bug raises something no budget error names: the other sources still set the budget, and
    the broken one holds its last value for the TTL, then counts as the safe budget."""

    class Broken:
        def __init__(self) -> None:
            self.steps = 0

        def step(self, now: float) -> BudgetReading | None:
            self.steps += 1
            if self.steps > 1:
                raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
            return reading(1500.0)

    grid = Scripted(reading(1800.0), reading(1200.0))
    combiner = BudgetCombiner({"csv": Broken(), "grid": grid}, ttl_s=600.0, safe_budget_w=1000.0)
    assert combiner.step(0.0).budget_w == 1500.0
    assert combiner.step(60.0).budget_w == 1200.0  # grid still stepped, its lower value wins
    assert combiner.step(700.0).budget_w == 1000.0  # the broken source's last value is past its TTL


def test_every_failed_read_is_counted_though_a_run_of_them_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """A broken signal file or CSV was logged once and never counted: wattscale_errors_total said nothing of it."""
    failed = []
    grid = Scripted(TransientBudgetError("broken", 1.0), TransientBudgetError("broken", 1.0), reading(1800.0))
    combiner = BudgetCombiner({"grid": grid}, ttl_s=600.0, safe_budget_w=1000.0, failed=lambda: failed.append(1))
    with caplog.at_level(logging.WARNING):
        for t in range(4):
            combiner.step(float(t))
    assert len(failed) == 2 and grid.steps == 4 and caplog.text.count("budget source grid: broken") == 1


def test_a_failed_sources_last_cut_holds_past_the_ttl_while_it_is_in_force() -> None:
    """A demand-response signal of 2,000 W for 15 minutes, then its file broken: 120 s on, the safe budget (3,000 W)
    lifted the utility's cut 13 minutes before its deadline. Its last reading holds while in force and under the
    safe budget; past its deadline the safe budget does."""
    cut = BudgetReading(2000.0, "demand response 2000 W", valid_until_s=900.0)
    signal = Scripted(cut, TransientBudgetError("unreadable", 1.0), TransientBudgetError("unreadable", 1.0),
                      TransientBudgetError("unreadable", 1.0), TransientBudgetError("unreadable", 1.0))
    combiner = BudgetCombiner({"utility": signal}, ttl_s=120.0, safe_budget_w=3000.0)
    assert combiner.step(0.0).budget_w == 2000.0
    assert combiner.step(60.0).budget_w == 2000.0  # within the ttl
    held = combiner.step(300.0)
    assert held.budget_w == 2000.0 and "held past 120 s while in force, under the safe budget: unreadable" in held.why
    assert combiner.step(899.0).budget_w == 2000.0
    assert combiner.step(900.0).budget_w == 3000.0  # the signal's deadline passed


ANSWER = BudgetReading(2000.0, "api 400 gCO2/kWh", 3600.0)
"""A feed's one answer, valid for its first hour."""
RETOLD = PendingBudgetError("in flight", 0.0, held=BudgetReading(2000.0, "cached", 1e9))
"""Its answers on their way after it, re-telling the cached points with a validity far on (it moves with time)."""


def test_a_feed_whose_answer_stays_pending_counts_as_the_safe_budget_past_the_ttl() -> None:
    """No failure, only an answer on its way each step: held as a failed source's last cut is, it kept 2,000 W for
    three days where the ttl gives 30 minutes."""
    combiner = BudgetCombiner({"api": Scripted(ANSWER, RETOLD)}, ttl_s=1800.0, safe_budget_w=3000.0)
    assert combiner.step(0.0).budget_w == 2000.0
    assert combiner.step(1800.0).budget_w == 2000.0
    assert combiner.step(1900.0).budget_w == 3000.0


def test_a_feed_that_fails_then_stays_pending_holds_its_cut_only_while_its_last_answer_said() -> None:
    """Answered once, then an error, then answers on their way: the cut was held for days past the ttl; it holds
    until the last good answer's hour ends."""
    down = TransientBudgetError("HTTP 503", 0.0)
    combiner = BudgetCombiner({"api": Scripted(ANSWER, down, RETOLD)}, ttl_s=1800.0, safe_budget_w=3000.0)
    assert combiner.step(0.0).budget_w == 2000.0
    assert combiner.step(10.0).budget_w == 2000.0  # the error, within the ttl
    assert combiner.step(3000.0).budget_w == 2000.0  # past the ttl, within the answer's hour
    assert combiner.step(3600.0).budget_w == 3000.0
    assert combiner.step(259200.0).budget_w == 3000.0


def test_a_clock_stepped_back_moves_retries_and_ages_with_it(caplog: pytest.LogCaptureFixture) -> None:
    """The wall clock steps back an hour while a source waits out a 5-s retry: the retry waited out the whole hour,
    the utility's cut ignored. Delays and ages are now what has elapsed: it is asked 5 s after it failed, and a
    held reading goes stale at the ttl counted in elapsed seconds, not an hour later."""
    signal = Scripted(TransientBudgetError("half-written", retry_after_s=5.0), reading(1500.0))
    combiner = BudgetCombiner({"site": FixedSource(2000.0), "dr": signal}, ttl_s=60.0, safe_budget_w=2000.0)
    assert combiner.step(10_000.0).budget_w == 2000.0  # the failure: retry at 10,005
    assert combiner.step(6_400.0).budget_w == 2000.0 and signal.steps == 1  # stepped back an hour at the next step
    assert "the clock stepped back 3600 s" in caplog.text
    assert combiner.step(6_404.0).budget_w == 2000.0 and signal.steps == 1
    assert combiner.step(6_405.0).budget_w == 1500.0 and signal.steps == 2  # 5 s after it failed
    down = Scripted(reading(1700.0), TransientBudgetError("503", retry_after_s=0.0))
    held = BudgetCombiner({"grid": down}, ttl_s=60.0, safe_budget_w=1000.0)
    held.step(0.0)
    assert held.step(-3600.0).budget_w == 1700.0  # stepped back: the reading 0 s old, not -3,600
    assert held.step(-3540.0).budget_w == 1700.0 and held.step(-3539.0).budget_w == 1000.0  # stale at 60 s elapsed
    caplog.clear()
    held.step(-3539.002)  # NTP's jitter: shifted, not said
    assert not caplog.records
