"""The enforcer: reads back what is in force, and carries out what the gate admitted.

Replicas and max batch are read from the actuators each cycle, so the controller plans from, and the tuner
learns from, what really runs: a rollout counts once every replica runs its value, a rolled-back one never.
Changes go through a retry record per target (transient errors wait their delay, permanent ones stop tries
until the service's config changes); a rollout in flight is not asked for again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from actuators import ActuatorError, BatchInForce, BatchSizer, ReplicaScaler
from controller.optimizer import Assignment
from controller.own_metrics import OwnMetrics
from controller.retry import RetryBook


@dataclass(frozen=True)
class Enforced:
    """What one service's enforcement did: the changes asked for, and those held by an error or a rollout."""

    asked: tuple[str, ...] = ()
    held: tuple[str, ...] = ()


class Enforcer:
    def __init__(self, replicas: ReplicaScaler, batch: BatchSizer, metrics: OwnMetrics) -> None:
        self.replicas, self.batch, self.metrics = replicas, batch, metrics
        self.retry = RetryBook(base_delay_s=10.0)
        self.batch_read: dict[str, BatchInForce] = {}
        """Per service, the max batch read at the last cycle."""

    def read_back(self, service: str, believed: Assignment) -> tuple[Assignment, bool]:
        """The service's assignment as it runs (what was believed where a read fails), and whether its max
        batch held still since the last read (no rollout started, ran or ended in between)."""
        replicas, batch = believed.replicas, BatchInForce(believed.max_batch)
        try:
            replicas = self.replicas.get_replicas(service)
            self.retry.succeeded(f"replicas_read:{service}")
        except ActuatorError as exc:
            self._error("replicas_read", service, exc)
        try:
            batch = self.batch.get_max_batch(service)
            self.retry.succeeded(f"batch_read:{service}")
        except ActuatorError as exc:
            self._error("batch_read", service, exc)
        before = self.batch_read.get(service, batch)
        self.batch_read[service] = batch
        still = batch.rolling_to is None and before == batch
        return replace(believed, replicas=replicas, max_batch=batch.max_batch), still

    def apply(self, now: float, service: str, current: Assignment, target: Assignment) -> tuple[Assignment, Enforced]:
        """Apply replica and batch changes; returns what is in place as far as the actuators said."""
        done, asked, held = current, [], []
        m = self.metrics
        if target.replicas != current.replicas:
            key = f"replicas:{service}"
            if not self.retry.may_try(key, now):
                held.append(f"replicas: {self.retry.failing[key].error}")
            else:
                try:
                    done = replace(done, replicas=self.replicas.set_replicas(service, target.replicas))
                    self.retry.succeeded(key)
                    m.actuations.labels(self.replicas.name, "replicas", "ok").inc()
                    asked.append(f"replicas {current.replicas} -> {target.replicas}")
                except ActuatorError as exc:
                    m.actuations.labels(self.replicas.name, "replicas", "error").inc()
                    self.retry.failed(key, now, exc)
                    m.errors.labels("replica_actuator").inc()
                    held.append(f"replicas: {exc}")
        rolling = self.batch_read.get(service, BatchInForce(current.max_batch)).rolling_to
        if target.max_batch != current.max_batch:
            key = f"max_batch:{service}"
            if rolling is not None:
                held.append(f"max batch: rolling out {rolling}")
            elif not self.retry.may_try(key, now):
                held.append(f"max batch: {self.retry.failing[key].error}")
            else:
                try:
                    self.batch.set_max_batch(service, target.max_batch)
                    self.retry.succeeded(key)
                    self.batch_read[service] = BatchInForce(current.max_batch, target.max_batch)
                    m.actuations.labels(self.batch.name, "max_batch", "ok").inc()
                    asked.append(f"max batch {current.max_batch} -> {target.max_batch}")
                except ActuatorError as exc:
                    m.actuations.labels(self.batch.name, "max_batch", "error").inc()
                    self.retry.failed(key, now, exc)
                    m.errors.labels("batch_actuator").inc()
                    held.append(f"max batch: {exc}")
        return replace(done, power_cap_w=target.power_cap_w), Enforced(tuple(asked), tuple(held))

    def _error(self, kind: str, service: str, exc: ActuatorError) -> None:
        """Count a failed read; log it when it starts a run (a read is tried every cycle regardless)."""
        self.metrics.errors.labels(kind).inc()
        if f"{kind}:{service}" not in self.retry.failing:
            self.retry.failed(f"{kind}:{service}", 0.0, exc)
