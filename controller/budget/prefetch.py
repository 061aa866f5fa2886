"""A carbon API's fetch in a thread of its own, so that one slow answer holds no other budget source back.

The budget thread steps every source each fast tick, one after another. An API that answers after its timeout
(up to 60 s, a login and retries more) held the demand-response file and the schedule back all that time: a
signal to cut the site's draw waited for the carbon API. Here the fetch runs in a worker thread, and a step waits
for it at most `wait_s`: past that the feed says its answer is pending, the combiner holds the source's last
reading (within its ttl_s) and the other sources are read on time. The answer is taken at a later step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from controller.budget.base import TransientBudgetError
from controller.budget.carbon import IntensityFeed, IntensityPoint

WAIT_S = 0.5
"""The most a step waits for the API: with two such feeds a step stays within a one-second fast tick."""
PENDING_RETRY_S = 1.0
"""When a step asks again for an answer still pending."""


class Prefetching:
    """`feed`'s fetch run in a worker thread (one at a time), waited for at most `wait_s`."""

    def __init__(self, feed: IntensityFeed, wait_s: float = WAIT_S) -> None:
        self.feed, self.wait_s = feed, wait_s
        self.name = feed.name
        self._worker: threading.Thread | None = None
        self._points: Sequence[IntensityPoint] = ()
        self._error: Exception | None = None
        self._asked_s = 0.0

    def fetch(self, now: float) -> Sequence[IntensityPoint]:
        """The feed's answer for `now`, or the answer to a fetch asked earlier and still running (its points are
        absolute times); TransientBudgetError while none has come within `wait_s`."""
        if self._worker is None:
            self._points, self._error, self._asked_s = (), None, time.monotonic()
            self._worker = threading.Thread(target=self._fetch, args=(now,), name=f"wattscale-{self.name}",
                                            daemon=True)
            self._worker.start()
        self._worker.join(self.wait_s)
        if self._worker.is_alive():
            waited_s = time.monotonic() - self._asked_s
            raise TransientBudgetError(f"{self.name}: its answer is pending (asked {waited_s:.0f} s ago); the other "
                                       "sources are read meanwhile", PENDING_RETRY_S)
        self._worker = None
        if self._error is not None:
            raise self._error
        return self._points

    def _fetch(self, now: float) -> None:
        try:
            self._points = self.feed.fetch(now)
        except Exception as exc:  # handed to the step that takes the answer, as the feed raised it
            self._error = exc
