"""Failures the loops survive: each counted, recorded in the next decision, and logged once while it repeats.

Sources, the budget thread and the operator report from their own threads, so the book is locked; the lock is
held for the bookkeeping alone (the fast loop reports here too), never while logging.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter

log = logging.getLogger("wattscale.controller")

SAID_ONE_BY_ONE = 5
"""New failures of one kind logged one by one in a cycle (GPUs gone missing at once, likewise); the rest in one line:
an exporter listing 5,000 GPUs made some 10,000 lines in seconds."""


class Failures:
    """The failure book of one controller: what it counts, what the next decision records, what is logged."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        """wattscale_errors_total, by kind."""
        self._since: list[str] = []
        """Failures reported since the last decision (`kind: message`)."""
        self._before: set[tuple[str, str]] = set()
        """Failures of the cycle before: one repeated now is not logged again."""
        self._now: set[tuple[str, str]] = set()
        """Failures of this cycle."""
        self._said: dict[str, int] = {}
        """New failures of each kind this cycle (`SAID_ONE_BY_ONE` of them logged one by one)."""
        self._lock = threading.Lock()

    def report(self, kind: str, message: str) -> None:
        """Count a failure, record it for the next decision (once a cycle: a plan solved twice failed twice alike),
        and log the first of a run: the same failure again logs once a slow cycle has passed without it (another
        endpoint's, another message, logs at once). The fast loop reports the first tick of each of its runs here
        (and counts the rest itself): a source that fails every other tick starts a run each time, logged once too
        (it had logged 300 lines in ten minutes)."""
        self.counter.labels(kind).inc()
        with self._lock:
            first = (kind, message) not in self._before
            self._record(kind, message)
            self._before.add((kind, message))
            said = first and self._said.get(kind, 0) < SAID_ONE_BY_ONE
            if first:
                self._said[kind] = self._said.get(kind, 0) + 1
        if said:
            log.warning("%s: %s (logged once while it repeats; counted in wattscale_errors_total)", kind, message)

    def _record(self, kind: str, message: str) -> None:
        """For the next decision, once a cycle (the lock held)."""
        if (kind, message) not in self._now:
            self._since.append(f"{kind}: {message}")
        self._now.add((kind, message))

    def take(self) -> list[str]:
        """The failures reported since the last decision, handed to this one; a failure not repeated in it ends
        its run (the next of it is logged)."""
        with self._lock:
            since, self._since = self._since, []
            self._before, self._now = self._now, set()
            said, self._said = self._said, {}
        for kind, n in said.items():
            if n > SAID_ONE_BY_ONE:
                log.warning("%s: %d more new failures of this kind, not logged one by one (each counted in "
                            "wattscale_errors_total)", kind, n - SAID_ONE_BY_ONE)
        return since
