"""The fast loop's clock step: each GPU's SM clock locked at its service's planned share, beside the limits.

The governor's limits still bound the draw whatever the clock, so a lock is never a budget risk; the power
limits are set first each tick and nothing here can hold them back. A GPU that cannot lock its clock at all
(NotSupported, NoPermission: a permanent error) turns clocks off for the whole daemon: it unlocks what it
locked, logs and counts it once, and the slow loop plans caps alone from then on. A transient error is
retried per GPU with the fast loop's backoff. Where the governor lowers a GPU's limit under its draw, the
clock lever (controller/clock_shed.py) may hold its clock below the plan's so the draw falls the same tick.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from actuators import ActuatorError, ClockLocker, PermanentActuatorError, TransientActuatorError, snap_clock_mhz
from controller.clock_shed import ClockShed
from controller.own_metrics import OwnMetrics
from controller.plan import Plan
from controller.retry import RetryBook
from controller.telemetry.base import GpuSample

log = logging.getLogger("wattscale.governor")


class ClockSteer:
    def __init__(self, locker: ClockLocker, metrics: OwnMetrics, on_error: Callable[[str, str], None]) -> None:
        self.locker, self.metrics, self.on_error = locker, metrics, on_error
        self.locked: dict[int, tuple[int, int]] = {}
        """GPU index -> (lock in force, the GPU's maximum clock), both MHz."""
        self.known: set[int] = set()
        """GPUs whose clock this steer has set or reset since it started: any other may still carry a lock from an
        earlier run (a crash, a kill) or from a lock whose read-back failed, and is reset before it counts as free."""
        self.off: str | None = None
        """Why clocks are off (the daemon runs on caps alone); None while they are on."""
        self.retry = RetryBook(base_delay_s=1.0, max_delay_s=10.0)
        self.suspect: set[int] = set()
        """GPUs seen whose lock state is not known (see `known`)."""
        self.held_series = metrics.degradation.labels("clocks")
        """GPUs the clock lever holds below the plan's clock."""
        self.shed = ClockShed()
        """The governor's fast lever: clocks held below the plan's where a limit falls under a GPU's draw."""

    def share(self, index: int) -> float:
        """The GPU's clock share in force (1.0 unlocked)."""
        if index not in self.locked:
            return 1.0
        mhz, top = self.locked[index]
        return mhz / top

    def step(self, now: float, samples: list[GpuSample], plan: Plan, limits_w: dict[str, float],
             cut: frozenset[str], missing: frozenset[str]) -> None:
        """Lock each GPU at its service's planned clock, or lower where the clock lever holds it: given the limits
        in force after this tick (by UUID), the GPUs the governor cuts below their draw (controller/clock_shed.py),
        and those `missing` from the listing or of unknown limits (the governor sets nothing on them: the lever keeps
        their holds, and sets nothing either)."""
        if self.off is not None:
            return
        self.suspect |= {g.index for g in samples if g.uuid not in missing} - self.known

        def planned(g: GpuSample) -> float | None:
            return None if g.service is None else plan.clock_fraction(g.service, g.variant)

        holds = self.shed.step(samples, limits_w, cut, lambda g: self.share(g.index), lambda g: planned(g) or 1.0)
        self.held_series.set(len(holds))
        for g in samples:
            if g.uuid in missing:
                continue
            want = planned(g)
            if g.index in holds:
                want = min(want or 1.0, holds[g.index])
            target = f"clock:{g.uuid}"
            if (want is None and g.index in self.known and g.index not in self.locked) \
                    or not self.retry.may_try(target, now):
                continue
            try:
                self._steer(g.index, want)
                self.known.add(g.index)
                self.suspect.discard(g.index)
                self.retry.succeeded(target)
            except PermanentActuatorError as exc:
                self._fall_back(_about(g.index, exc))
                return
            except Exception as exc:  # any other failure of a backend is survived as a transient one
                error = exc if isinstance(exc, ActuatorError) else \
                    TransientActuatorError(_about(g.index, repr(exc)), delay_s=1.0)
                self.metrics.actuations.labels(self.locker.name, "locked_clock", "error").inc()
                self.metrics.errors.labels("clock_actuator").inc()
                self.known.discard(g.index)  # a lock may have been set and failed its read-back
                self.suspect.add(g.index)
                self.locked.pop(g.index, None)
                self.retry.failed(target, now, error)

    def _steer(self, index: int, want: float | None) -> None:
        if want is None:
            self.locker.reset_clock(index)
            self.locked.pop(index, None)
            self.metrics.actuations.labels(self.locker.name, "locked_clock", "ok").inc()
            return
        supported = self.locker.supported_clocks_mhz(index)
        if not supported:
            raise PermanentActuatorError(f"GPU {index}: lists no clocks to lock at")
        mhz = snap_clock_mhz(supported, want * supported[-1])
        if self.locked.get(index, (None, 0))[0] == mhz:
            return
        self.locked[index] = (self.locker.lock_clock(index, mhz), supported[-1])
        self.metrics.actuations.labels(self.locker.name, "locked_clock", "ok").inc()

    def _fall_back(self, why: str) -> None:
        """Clocks off for good: unlock what was locked, or may be (best effort), and say so once."""
        self.off = why
        self.on_error("clock_actuator", f"{why}; locked clocks are off, running on power caps alone")
        for index in sorted(set(self.locked) | self.suspect):
            try:
                self.locker.reset_clock(index)
            except ActuatorError as exc:
                log.warning("unlocking GPU %d's clock: %s", index, exc)
        self.locked.clear()
        self.shed.holds.clear()
        self.held_series.set(0)


def _about(index: int, error: object) -> str:
    """An error's message naming its GPU once (a backend's own messages may already: "GPU 5 lock clocks: ...")."""
    text = str(error)
    return text if re.match(rf"gpu {index}\b", text, re.IGNORECASE) else f"GPU {index}: {text}"
