"""The loops' periods on the monotonic clock (controller/ticker.py): ticks on time, a late tick followed at once
and counted, a failing tick counted and survived, a stop within a period."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from controller.ticker import Ticker


def ticking(period_s: float, tick: Callable[[], None], seconds: float) -> tuple[Counter[str], float]:
    """Run a Ticker for `seconds`; the kinds it counted and how long its stop took."""
    stop, counted = threading.Event(), Counter[str]()
    ticker = Ticker("fast", period_s, tick, stop, lambda kind: counted.update([kind]))
    ticker.start()
    time.sleep(seconds)
    asked = time.monotonic()
    stop.set()
    ticker.join(5.0)
    return counted, time.monotonic() - asked


def test_ticks_keep_their_period_and_stop_within_one() -> None:
    at: list[float] = []
    counted, stopping = ticking(0.05, lambda: at.append(time.monotonic()), 0.53)
    assert 9 <= len(at) <= 11 and not counted and stopping < 0.05
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert max(gaps) < 0.09 and abs(sum(gaps) / len(gaps) - 0.05) < 0.01  # deadlines, not sleeps after each tick


def test_a_late_tick_is_followed_at_once_counted_and_said_once_a_run(caplog: pytest.LogCaptureFixture) -> None:
    """Ticks of 0.12 s on a 0.05-s period: each next one starts at once (none queued behind, none skipped for a
    whole period), each counted late, the run said once."""
    at: list[float] = []

    def slow() -> None:
        at.append(time.monotonic())
        time.sleep(0.12)

    with caplog.at_level(logging.WARNING, "wattscale.daemon"):
        counted, _ = ticking(0.05, slow, 0.6)
    assert len(at) >= 4 and counted["fast_late"] >= 3
    assert max(b - a for a, b in itertools.pairwise(at)) < 0.17
    assert caplog.text.count("past its 0.05-s period") == 1


def test_a_tick_that_raises_is_counted_logged_once_and_the_ticks_go_on(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("a bug")

    counted, _ = ticking(0.03, broken, 0.35)
    assert len(calls) >= 8 and counted["fast_error"] == len(calls)
    assert caplog.text.count("a tick failed") == 1


def test_a_tick_that_ends_after_the_stop_is_not_counted_late_and_the_join_says_it_ended() -> None:
    """A tick in flight as the daemon stops, ending past its period: it was counted and logged late after the stop."""
    stop, counted, started = threading.Event(), Counter[str](), threading.Event()

    def slow() -> None:
        started.set()
        time.sleep(0.2)

    ticker = Ticker("fast", 0.05, slow, stop, lambda kind: counted.update([kind]))
    ticker.start()
    assert started.wait(2.0)
    stop.set()
    assert not ticker.join(0.01)  # still in its tick
    assert ticker.join(2.0) and not counted


def test_late_ticks_between_on_time_ones_are_one_run_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """Every other tick late (a stall that comes and goes): each late tick had started a run of its own and was
    logged, 16 lines in 40 s in a trial. A run now ends only after QUIET_TICKS on time."""
    n = itertools.count()

    def every_other() -> None:
        if next(n) % 2:
            time.sleep(0.06)

    with caplog.at_level(logging.WARNING, "wattscale.daemon"):
        counted, _ = ticking(0.03, every_other, 0.6)
    assert counted["fast_late"] >= 3 and caplog.text.count("past its 0.03-s period") == 1
