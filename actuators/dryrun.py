"""Dry-run backends: log and remember what would change, touch nothing (in-memory defaults).

Each keeps the values it was last asked for and a bounded history of its actions; a change is logged at
INFO once, and asking again for the value already held is logged at DEBUG only.
"""

from __future__ import annotations

import logging
from collections import deque

from actuators.base import Action, BatchInForce, MissingTargetError, PermanentActuatorError, snap_clock_mhz

log = logging.getLogger(__name__)

HISTORY = 256
"""Actions each dry-run backend remembers (the oldest are dropped)."""


class DryRunPowerLimiter:
    name = "dry-run"

    def __init__(self, min_w: float = 0.0, max_w: float = float("inf")) -> None:
        self.min_w, self.max_w = min_w, max_w
        self.limits: dict[int, float] = {}
        self.actions: deque[Action] = deque(maxlen=HISTORY)

    def set_power_limit(self, gpu_index: int, watts: float) -> float:
        if gpu_index < 0:
            raise PermanentActuatorError(f"gpu {gpu_index}: no such GPU")
        applied = min(self.max_w, max(self.min_w, watts))
        if self.limits.get(gpu_index) != applied:
            self.actions.append(Action("power_limit_w", str(gpu_index), applied))
            log.info("dry-run: would set GPU %d power limit to %.0f W", gpu_index, applied)
        self.limits[gpu_index] = applied
        return applied


class DryRunClockLocker:
    name = "dry-run"

    def __init__(self, supported_mhz: tuple[int, ...] = tuple(range(405, 1981, 15))) -> None:
        self.supported_mhz = tuple(sorted(supported_mhz))
        self.locks: dict[int, int] = {}
        self.actions: deque[Action] = deque(maxlen=HISTORY)

    def supported_clocks_mhz(self, gpu_index: int) -> tuple[int, ...]:
        if gpu_index < 0:
            raise PermanentActuatorError(f"gpu {gpu_index}: no such GPU")
        return self.supported_mhz

    def lock_clock(self, gpu_index: int, mhz: int) -> int:
        applied = snap_clock_mhz(self.supported_clocks_mhz(gpu_index), mhz)
        if self.locks.get(gpu_index) != applied:
            self.actions.append(Action("locked_clock_mhz", str(gpu_index), applied))
            log.info("dry-run: would lock GPU %d's SM clock at %d MHz", gpu_index, applied)
        self.locks[gpu_index] = applied
        return applied

    def reset_clock(self, gpu_index: int) -> None:
        self.supported_clocks_mhz(gpu_index)
        if self.locks.pop(gpu_index, None) is not None:
            self.actions.append(Action("locked_clock_mhz", str(gpu_index), 0))
            log.info("dry-run: would unlock GPU %d's SM clock", gpu_index)


class DryRunBatchSizer:
    name = "dry-run"

    def __init__(self, initial: dict[str, int] | None = None) -> None:
        self.batches: dict[str, int] = dict(initial or {})
        self.actions: deque[Action] = deque(maxlen=HISTORY)

    def get_max_batch(self, service: str) -> BatchInForce:
        if service not in self.batches:
            raise PermanentActuatorError(f"{service}: unknown service")
        return BatchInForce(self.batches[service])

    def set_max_batch(self, service: str, max_num_seqs: int) -> None:
        if max_num_seqs < 1:
            raise PermanentActuatorError(f"{service}: max_num_seqs must be >= 1, got {max_num_seqs}")
        if self.batches.get(service) != max_num_seqs:
            self.actions.append(Action("max_num_seqs", service, max_num_seqs))
            log.info("dry-run: would restart %s with --max-num-seqs %d", service, max_num_seqs)
        self.batches[service] = max_num_seqs


class DryRunReplicaScaler:
    name = "dry-run"

    def __init__(self, initial: dict[tuple[str, str], int] | None = None) -> None:
        self.replicas: dict[tuple[str, str], int] = dict(initial or {})
        """(service, variant) -> replicas: the variants it knows are those it starts with."""
        self.actions: deque[Action] = deque(maxlen=HISTORY)

    def get_replicas(self, service: str, variant: str) -> int:
        if (service, variant) not in self.replicas:
            raise MissingTargetError(f"{service} on {variant}: unknown service or variant")
        return self.replicas[service, variant]

    def set_replicas(self, service: str, variant: str, replicas: int) -> int:
        if (service, variant) not in self.replicas:
            raise MissingTargetError(f"{service} on {variant}: unknown service or variant")
        if replicas < 0:
            raise PermanentActuatorError(f"{service}: replicas must be >= 0, got {replicas}")
        if self.replicas[service, variant] != replicas:
            self.actions.append(Action("replicas", f"{service}/{variant}", replicas))
            log.info("dry-run: would scale %s on %s to %d replicas", service, variant, replicas)
        self.replicas[service, variant] = replicas
        return replicas
