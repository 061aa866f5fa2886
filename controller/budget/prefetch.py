"""A carbon API's fetch in a thread of its own, so that one slow answer holds no other budget source back.

The budget thread steps every source each fast tick, one after another. An API that answers after its timeout
(up to 60 s, a login and retries more) held the demand-response file and the schedule back all that time: a
signal to cut the site's draw waited for the carbon API. Here the fetch runs in a worker thread, and the step that
asks for it waits at most `wait_s`: past that the feed says its answer is pending (PendingBudgetError, no failure),
the carbon source answers from the points it holds, and the other sources are read on time. Each later step takes
the answer once it has come, without waiting. Only a feed that has never answered is waited for: a refresh's
answer is taken a step later, so a few feeds refreshing at once hold a demand-response signal back no step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from controller.budget.base import PendingBudgetError
from controller.budget.carbon import IntensityFeed, IntensityPoint

WAIT_S = 0.5
"""The most the step that asks waits for a feed that has never answered (at start, two such feeds stay within a
one-second fast tick)."""
PENDING_RETRY_S = 1.0
"""When a step asks again for an answer still pending."""


class Prefetching:
    """`feed`'s fetch run in a worker thread (one at a time), waited for at most `wait_s` until it first answers."""

    def __init__(self, feed: IntensityFeed, wait_s: float = WAIT_S) -> None:
        self.feed, self.wait_s = feed, wait_s
        self.name = feed.name
        self._worker: threading.Thread | None = None
        self._points: Sequence[IntensityPoint] = ()
        self._error: Exception | None = None
        self._asked_s = 0.0
        self._answered = False
        """Whether the feed has answered once (since then no step waits for it)."""

    def fetch(self, now: float) -> Sequence[IntensityPoint]:
        """The feed's answer for `now`, or that of a fetch asked earlier and just done (its points are absolute
        times); PendingBudgetError while none has come (waited for `wait_s` only by the step that asks)."""
        if self._worker is None:
            worker = threading.Thread(target=self._fetch, args=(now,), name=f"wattscale-{self.name}", daemon=True)
            self._points, self._error, self._asked_s = (), None, time.monotonic()
            worker.start()  # kept once started: one that failed to start would be joined for ever
            self._worker = worker
            worker.join(0.0 if self._answered else self.wait_s)
        if self._worker.is_alive():
            raise PendingBudgetError(f"{self.name}: its answer is pending (asked {time.monotonic() - self._asked_s:.0f}"
                                     " s ago)", PENDING_RETRY_S)
        self._worker, self._answered = None, True
        if self._error is not None:
            raise self._error
        return self._points

    def _fetch(self, now: float) -> None:
        try:
            self._points = self.feed.fetch(now)
        except Exception as exc:  # handed to the step that takes the answer, as the feed raised it
            self._error = exc
