"""The operator's slow loop in a thread of its own, and the actuators it drives behind a check of the Lease.

As in the host daemon, the slow tick (PromQL, Deployment and pod reads, the MILP, scale and patch calls, status
writes) runs in a worker woken each slow period, so that while it waits on the network the fast step goes on:
the governor ticks and the node plans are renewed. The Lease is renewed by a worker of its own, woken by the
fast step when it is due; it counts as held until a renewal is refused or it runs past its duration. The Plan
passes from the slow tick to the fast one by reference, as in the daemon; no lock is held across I/O. A slow
tick in flight when the Lease is lost may not act: every scale, patch and status write asks `may_act` first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from actuators import BatchInForce, BatchSizer, ReplicaScaler, TransientActuatorError

log = logging.getLogger("wattscale.operator")


class SlowWorker:
    """Runs `tick(now)` in a daemon thread each time it is woken; a wake-up while the last is not yet picked
    up is an overrun (`on_overrun`). Stopped, it runs no further tick (one in flight ends on its timeouts). A tick
    that fails goes to `on_error` with whether the tick before failed the same way (to log a run of them once)."""

    def __init__(self, tick: Callable[[], object], on_overrun: Callable[[], None],
                 on_error: Callable[[Exception, bool], None]) -> None:
        self.tick, self.on_overrun, self.on_error = tick, on_overrun, on_error
        self.failing: str | None = None
        """The last tick's failure (repr), None where it succeeded."""
        self.due = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="wattscale-operator-slow", daemon=True)
        self.thread.start()

    def wake(self, early: bool = False) -> None:
        """Wake the worker; an `early` wake-up (asked between periods) is no overrun when one is still due."""
        if self.due.is_set() and not early:
            self.on_overrun()
        self.due.set()

    def stop(self) -> None:
        self.stopped.set()
        self.due.set()  # wakes the worker to see it

    def _run(self) -> None:
        while True:
            self.due.wait()
            if self.stopped.is_set():
                return
            self.due.clear()
            try:
                self.tick()
            except Exception as exc:  # a bug or an outage not survived below: counted, the loop goes on
                self.on_error(exc, repr(exc) == self.failing)
                self.failing = repr(exc)
            else:
                self.failing = None


def _refuse(what: str) -> TransientActuatorError:
    return TransientActuatorError(f"{what}: not acted on, this operator no longer holds the Lease")


class GuardedReplicas:
    """A `ReplicaScaler` that scales only while `may_act()`, and only a Deployment its owner `consents` to."""

    def __init__(self, inner: ReplicaScaler, may_act: Callable[[], bool], consents: Callable[[str, str], bool]) -> None:
        self.inner, self.may_act, self.consents = inner, may_act, consents
        self.name = getattr(inner, "name", "replicas")

    def get_replicas(self, service: str, variant: str) -> int:
        return self.inner.get_replicas(service, variant)

    def set_replicas(self, service: str, variant: str, replicas: int) -> int:
        if not self.may_act():
            raise _refuse(f"{service}@{variant} replicas")
        if not self.consents(service, variant):
            raise _unconsented(f"{service}@{variant} replicas")
        return self.inner.set_replicas(service, variant, replicas)


class GuardedBatch:
    """A `BatchSizer` that patches only while `may_act()`, and only Deployments their owners `consent` to."""

    def __init__(self, inner: BatchSizer, may_act: Callable[[], bool], consents: Callable[[str], bool]) -> None:
        self.inner, self.may_act, self.consents = inner, may_act, consents
        self.name = getattr(inner, "name", "batch")

    def get_max_batch(self, service: str) -> BatchInForce:
        return self.inner.get_max_batch(service)

    def set_max_batch(self, service: str, max_num_seqs: int) -> None:
        if not self.may_act():
            raise _refuse(f"{service} --max-num-seqs")
        if not self.consents(service):
            raise _unconsented(f"{service} --max-num-seqs")
        self.inner.set_max_batch(service, max_num_seqs)


def _unconsented(what: str) -> TransientActuatorError:
    """Tried again after its delay: the label may be read back (a permanent error is tried once per config)."""
    return TransientActuatorError(f"{what}: not acted on, its Deployment's wattscale.dev/managed=true label was not "
                                  "read")
