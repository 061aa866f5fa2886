"""A loop's period, kept on the monotonic clock in a thread of its own.

The wall clock steps: NTP corrects a drifted host, a VM resumes, an operator runs `date -s`, a board with a dead
battery boots in 2000. A scheduler that times its runs by it (APScheduler 3's interval jobs did) waits out a step
back, the governor with it (40 s back held the fast loop 41 s), and a step forward makes it walk every run it
missed (100 days: 9 s and 600 MB). Here a period is a deadline on `time.monotonic()`, which no step moves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("wattscale.daemon")
QUIET_TICKS = 60
"""On-time ticks in a row that end a run of late ones (the next late tick is logged again): stalls that alternate
late and on-time ticks had logged each late one, 16 lines in 40 s."""


class Ticker:
    """Calls `tick` every `period_s` until `stop` is set. A tick that takes its period or longer is followed by the
    next at once: late, not queued, each such overrun counted through `count(kind)` and the first of a run logged (a
    run ends after QUIET_TICKS on time). A tick that raises is counted and logged once a run, and the ticks go on."""

    def __init__(self, name: str, period_s: float, tick: Callable[[], None], stop: threading.Event,
                 count: Callable[[str], None]) -> None:
        self.name, self.period_s, self.tick, self.stop, self.count = name, period_s, tick, stop, count
        self.on_time = QUIET_TICKS
        """On-time ticks since the last late one (QUIET_TICKS or more: no run of late ticks)."""
        self.failing = False
        self.thread = threading.Thread(target=self.run, name=f"wattscale-{name}", daemon=True)

    def start(self) -> None:
        """Ticks from one period after now (the caller ran the first itself, or wants none yet)."""
        self.thread.start()

    def run(self) -> None:
        due = time.monotonic() + self.period_s
        while not self.stop.wait(max(0.0, due - time.monotonic())):
            self._tick()
            if self.stop.is_set():  # a tick that ended after the stop is no late one
                return
            due += self.period_s
            now = time.monotonic()
            late = now >= due
            if late:
                self.count(f"{self.name}_late")
                if self.on_time >= QUIET_TICKS:
                    log.warning("%s loop: a tick took %.1f s, past its %g-s period; the next runs at once (each "
                                "counted in wattscale_errors_total{kind=\"%s_late\"})", self.name,
                                now - due + self.period_s, self.period_s, self.name)
                due = now
            self.on_time = 0 if late else self.on_time + 1

    def _tick(self) -> None:
        try:
            self.tick()
        except Exception as exc:  # the callers catch their own; a bug here must not end the loop's thread
            self.count(f"{self.name}_error")
            if not self.failing:
                log.exception("%s loop: a tick failed (logged once while it fails): %r", self.name, exc)
            self.failing = True
        else:
            self.failing = False

    def join(self, timeout_s: float) -> bool:
        """Wait for the tick in flight (the stop set); whether the thread has ended."""
        if self.thread.is_alive():
            self.thread.join(timeout_s)
        return not self.thread.is_alive()
