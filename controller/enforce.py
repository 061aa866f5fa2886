"""The enforcer: reads back what is in force, and carries out what the gate admitted.

Replicas (per variant) and max batch are read from the actuators each cycle, so the controller plans
from, and the tuner learns from, what really runs: a rollout counts once every replica runs its value, a
rolled-back one never. A move to another accelerator type scales the new variant up first; the old one is
scaled to zero only once a later cycle reads the new one at its replicas and the service's vLLM metrics
show every replica it runs serving (a Deployment's count is what was asked, not what is up). Changes go
through a retry
record per target (transient errors wait their delay, permanent ones stop tries until the service's
config changes); a rollout in flight is not asked for again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

from actuators import ActuatorError, BatchInForce, BatchSizer, MissingTargetError, ReplicaScaler
from controller.optimizer import Assignment
from controller.own_metrics import OwnMetrics
from controller.retry import RetryBook
from queuemodels.accelerators import CATALOG

log = logging.getLogger("wattscale.controller")


@dataclass(frozen=True)
class Enforced:
    """What one service's enforcement did: the changes asked for, and those held by an error or a rollout."""

    asked: tuple[str, ...] = ()
    held: tuple[str, ...] = ()


@dataclass(frozen=True)
class InForce:
    """A service as it runs: the planned variant's assignment, replicas on every variant, and whether its max
    batch and its variants held still since the last read (a window that spans a change teaches nothing)."""

    assignment: Assignment
    running: dict[str, int]
    still: bool
    read: bool = True
    """Every variant's replicas were read this cycle, but those gone (a count that was not is no evidence to drain
    on)."""
    gone: frozenset[str] = frozenset()
    """Variants whose target was not there this cycle (a deleted Deployment: its count is kept at its last)."""

    @property
    def live(self) -> dict[str, int]:
        """Replicas per variant but those gone: a deleted Deployment's count, kept at its last, had held a move's new
        variant from growing for good (the gate's `admit`), its GPUs counted as held and its windows as unsteady. A
        count another error hid (a timeout, a refusal) still counts: ignored, it let an urgent gate add a replica
        beside what still ran."""
        return {v: n for v, n in self.running.items() if v not in self.gone}

    @property
    def one_variant(self) -> bool:
        """No other variant runs (`live`)."""
        return sum(n > 0 for n in self.live.values()) <= 1


class Enforcer:
    def __init__(self, replicas: ReplicaScaler, batch: BatchSizer, metrics: OwnMetrics) -> None:
        self.replicas, self.batch, self.metrics = replicas, batch, metrics
        self.retry = RetryBook(base_delay_s=10.0)
        self.batch_read: dict[str, BatchInForce] = {}
        """Per service, the max batch read at the last cycle."""
        self.running: dict[str, dict[str, int]] = {}
        """Per service, replicas per variant at the last read."""
        self.reads_failing: set[str] = set()
        """Reads failing now (logged once a run)."""

    def in_force(self, service: str, variants: tuple[str, ...], believed: Assignment,
                 draining: Mapping[str, float]) -> tuple[InForce, dict[str, float]]:
        """`read_back` with the caps, and the caps of the variants draining after it. Found running on another
        variant than planned, the service runs at that type's own cap (the one it drains with, else full
        power); every other variant still running keeps its cap until drained (the believed one its
        assignment's, one never seen its floor)."""
        got = self.read_back(service, variants, believed)
        acc = got.assignment.accelerator
        if acc != believed.accelerator:
            cap = draining.get(acc, CATALOG[acc].max_power_w)
            got = replace(got, assignment=replace(got.assignment, power_cap_w=cap, sm_clock_fraction=None))
        caps = {**draining, believed.accelerator: believed.power_cap_w}
        return got, {v: caps.get(v, CATALOG[v].min_power_w) for v, n in got.running.items() if n > 0 and v != acc}

    def read_back(self, service: str, variants: tuple[str, ...], believed: Assignment) -> InForce:
        """The service as it runs (what was believed where a read fails). The planned variant stays the one
        the last plan chose while it runs or is starting; a service found running elsewhere only (as
        deployed before the daemon came) is taken where most of its replicas are."""
        before = self.running.get(service, {})
        running, read, gone = {}, True, set[str]()
        for v in variants:
            n = self._read_replicas(service, v, gone)
            read = read and (n is not None or v in gone)  # a gone one's count is no reading to wait for
            running[v] = n if n is not None else believed.replicas if v == believed.accelerator else before.get(v, 0)
        self.running[service] = running
        acc = believed.accelerator
        if running.get(acc, 0) == 0 and any(running.values()):
            acc = max(running, key=lambda v: running[v])
        batch, batch_read = BatchInForce(believed.max_batch), True
        try:
            batch = self.batch.get_max_batch(service)
            self._read_again(f"batch_read:{service}")
        except ActuatorError as exc:
            self._error("batch_read", service, exc)
            batch_read = False
        last = self.batch_read.get(service, batch)
        self.batch_read[service] = batch
        assignment = replace(believed, accelerator=acc, replicas=running.get(acc, 0), max_batch=batch.max_batch)
        got = InForce(assignment, running, False, read, frozenset(gone))
        # the planned variant gone, the windows are another's: they teach its pair nothing
        still = (batch_read and batch.rolling_to is None and not batch.mixed and last == batch and got.one_variant
                 and acc not in gone)
        return replace(got, still=still)

    def _read_replicas(self, service: str, variant: str, gone: set[str]) -> int | None:
        """The variant's replicas; None where the read failed (the variant added to `gone` where its target is not
        there)."""
        try:
            n = self.replicas.get_replicas(service, variant)
        except ActuatorError as exc:
            self._error("replicas_read", f"{service}/{variant}", exc)
            if isinstance(exc, MissingTargetError):
                gone.add(variant)
            return None
        self._read_again(f"replicas_read:{service}/{variant}")
        return n

    def apply(self, now: float, service: str, current: InForce, target: Assignment, serving: int | None = None,
              plan: Assignment | None = None, urgent: bool = False) -> tuple[Assignment, Enforced]:
        """Apply replica, variant and batch changes; returns what is in place as far as the actuators said.
        `serving`: the replicas the service's vLLM metrics show serving (None: no window to say); `plan`: what the
        plan wants, of which the gate admitted `target`: a variant the plan has turned back to is not drained while
        the gate holds the move there (drained, a service of three ran on one replica, then started its three
        again cold), unless `urgent` (over budget with every limit at its floor: the gate moves nothing then, and
        the draw must go)."""
        was = current.assignment
        done, asked, held = was, list[str](), list[str]()
        if target.accelerator != was.accelerator or target.replicas != was.replicas:
            # Moving back onto a variant still draining keeps what it runs: a shrink is the gate's to confirm.
            want = max(target.replicas, current.running.get(target.accelerator, 0)) \
                if target.accelerator != was.accelerator else target.replicas
            n = self._scale(now, service, target.accelerator, want, asked, held)
            if n is not None:
                done = replace(done, accelerator=target.accelerator, replicas=n)
        elif any(n > 0 for v, n in current.live.items() if v != was.accelerator):  # a gone one cannot drain
            up = current.read and was.replicas >= max(1, target.replicas)
            if up and serving is not None and serving >= sum(current.live.values()):
                for v, n in current.live.items():  # the planned variant serves: drain the others
                    if v != was.accelerator and n > 0 and (plan is None or urgent or v != plan.accelerator):
                        self._scale(now, service, v, 0, asked, held)
            else:
                held.append(f"draining waits for {was.accelerator} to serve ({serving} of "
                            f"{sum(current.live.values())} replicas serving)")
        read = self.batch_read.get(service, BatchInForce(was.max_batch))
        rolling = read.rolling_to
        if target.max_batch != was.max_batch or read.mixed:  # servers apart: one value for them all
            key = f"max_batch:{service}"
            if rolling is not None:
                held.append(f"max batch: rolling out {rolling}")
            elif serving is not None and serving < done.replicas and not read.stalled:  # a stall holds one down
                # A rolling restart takes one replica down at a time: it waits for every replica it counts on.
                held.append(f"max batch: waits for {done.replicas} replicas serving ({serving} now)")
            elif not self.retry.may_try(key, now):
                held.append(f"max batch: {self.retry.failing[key].error}")
            else:
                try:
                    self.batch.set_max_batch(service, target.max_batch)
                    self.retry.succeeded(key)
                    self.batch_read[service] = BatchInForce(was.max_batch, target.max_batch)
                    self._count(self.batch.name, "max_batch", "ok")
                    asked.append(f"max batch {'mixed' if read.mixed else was.max_batch} -> {target.max_batch}")
                except ActuatorError as exc:
                    self._count(self.batch.name, "max_batch", "error", "batch_actuator")
                    self.retry.failed(key, now, exc)
                    held.append(f"max batch: {exc}")
        return replace(done, power_cap_w=target.power_cap_w), Enforced(tuple(asked), tuple(held))

    def _scale(self, now: float, service: str, variant: str, replicas: int, asked: list[str],
               held: list[str]) -> int | None:
        """One variant to `replicas`; the count in place, or None where it was not changed."""
        key = f"replicas:{service}/{variant}"
        if not self.retry.may_try(key, now):
            held.append(f"replicas on {variant}: {self.retry.failing[key].error}")
            return None
        try:
            n = self.replicas.set_replicas(service, variant, replicas)
        except ActuatorError as exc:
            self._count(self.replicas.name, "replicas", "error", "replica_actuator")
            self.retry.failed(key, now, exc)
            held.append(f"replicas on {variant}: {exc}")
            return None
        self.retry.succeeded(key)
        self._count(self.replicas.name, "replicas", "ok")
        asked.append(f"{variant} replicas -> {replicas}")
        return n

    def _count(self, backend: str, kind: str, result: str, error_kind: str = "") -> None:
        self.metrics.actuations.labels(backend, kind, result).inc()
        if error_kind:
            self.metrics.errors.labels(error_kind).inc()

    def _error(self, kind: str, target: str, exc: ActuatorError) -> None:
        """Count a failed read; log it when it starts a run (a read is tried every cycle regardless, so it is
        kept apart from the retry record of changes)."""
        self.metrics.errors.labels(kind).inc()
        key = f"{kind}:{target}"
        if key not in self.reads_failing:
            log.warning("%s: %s", key, exc)
        self.reads_failing.add(key)

    def _read_again(self, key: str) -> None:
        if key in self.reads_failing:
            self.reads_failing.discard(key)
            log.info("%s: works again", key)


def draining_caps(held: Mapping[str, float], current: Assignment, applied: Assignment,
                  plan: Assignment) -> dict[str, float]:
    """The caps of the variants a service is leaving, each until drained (`Enforcer.in_force`): a move that begins
    keeps the old variant at its own cap (the plan's is another type's), and a variant the plan has turned back to
    is held to the plan's cap for it as well (kept at its old one, it drew past what the plan counted)."""
    out = dict(held)
    if applied.accelerator != current.accelerator:
        out = {v: w for v, w in out.items() if v != applied.accelerator} | {current.accelerator: current.power_cap_w}
    if plan.accelerator in out:
        out[plan.accelerator] = min(out[plan.accelerator], plan.power_cap_w)
    return out
