"""Actuator errors sorted by how to recover, and the recovery honoured, per target.

A transient error (a timeout, a conflict, a server restarting) waits its `delay_s`, doubled on each
failure in a row up to a ceiling, before the target is tried again. A permanent one (no permission, no
such target, a rollout the engine could not run) stops tries for that target until its config changes, or,
in a book that sets `permanent_retry_s` (the GPU limits': a driver may refuse through an outage, and it had
blocked every limit write for good), until that has passed. Either is logged once, when the target
first fails, and counted every time; a success after failures is logged once too. Errors of no kind are taken as
transient with the base delay.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from actuators import ActuatorError, PermanentActuatorError, TransientActuatorError

log = logging.getLogger("wattscale.controller")
FORCED_TRIES = 2
"""Forced tries a run of failures allows before a target waits out its delay (`forceable`)."""
PERMANENT_RETRY_S = 300.0
"""How long a GPU's limit refused for good waits before it is tried again, where its config has not changed first."""


@dataclass(frozen=True)
class Failing:
    """A target's run of failures: how many, when it may be tried next, the last error."""

    count: int
    retry_at: float
    error: str
    permanent: bool
    since: float
    """When the run of failures began."""


class RetryBook:
    def __init__(self, base_delay_s: float = 1.0, max_delay_s: float = 300.0,
                 report: Callable[[str], None] | None = None, permanent_retry_s: float = math.inf) -> None:
        self.base_delay_s, self.max_delay_s, self.permanent_retry_s = base_delay_s, max_delay_s, permanent_retry_s
        self.failing: dict[str, Failing] = {}
        self.report = report
        """Where the first failure of a run is said (a loop's failure book: counted, recorded in the next
        decision, logged); None: logged here."""

    def may_try(self, target: str, now: float) -> bool:
        f = self.failing.get(target)
        return f is None or now >= f.retry_at

    def forceable(self, target: str) -> bool:
        """Whether a target waiting out a transient failure may be tried before its delay, where it must be (a
        budget over its line): twice a run at most, so a write that fails slowly holds no tick after tick."""
        f = self.failing.get(target)
        return f is not None and not f.permanent and f.count <= FORCED_TRIES

    def failed(self, target: str, now: float, exc: ActuatorError) -> bool:
        """Record a failure: when to try next, and say it if it starts a run; whether it did."""
        before = self.failing.get(target)
        count = 1 if before is None else before.count + 1
        permanent = isinstance(exc, PermanentActuatorError)
        delay = exc.delay_s if isinstance(exc, TransientActuatorError) else self.base_delay_s
        delay = self.permanent_retry_s if permanent else min(self.max_delay_s, delay * 2 ** min(count - 1, 30))
        self.failing[target] = Failing(count, now + delay, str(exc), permanent, now if before is None else before.since)
        if before is not None:
            return False
        again = "no more tries until its config changes" if math.isinf(delay) else \
            f"tried again in {delay:.0f} s, or once its config changes"
        said = f"{target}: {exc}; {again}" if permanent else f"{target}: {exc}; retrying in {delay:.0f} s"
        if self.report is not None:
            self.report(said)
        else:
            log.log(logging.ERROR if permanent else logging.WARNING, "%s", said)
        return True

    def succeeded(self, target: str) -> None:
        before = self.failing.pop(target, None)
        if before is not None:
            log.info("%s: works again after %d failure(s)", target, before.count)

    def forget(self, target: str = "", since: float = -math.inf) -> None:
        """Start afresh for `target` and its parts (`target/...`), or for every target (their config changed); with
        `since`, only runs of failures that began then or later. The operator's slow worker forgets while its fast
        tick records failures: read from one copy of the items (iterating the dict itself could raise as the other
        thread adds to it)."""
        self.failing = {t: f for t, f in list(self.failing.items())
                        if f.since < since or (target and t != target and not t.startswith(target + "/"))}

    def blocked(self) -> list[str]:
        """Targets refused for good (or for `permanent_retry_s`), for the decision log (read from another thread: one
        copy of the items)."""
        return sorted(t for t, f in list(self.failing.items()) if f.permanent)
