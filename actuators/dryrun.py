"""Dry-run backends: log and remember what would change, touch nothing (in-memory defaults)."""

from __future__ import annotations

import logging

from actuators.base import Action, PermanentActuatorError

log = logging.getLogger(__name__)


class DryRunPowerLimiter:
    name = "dry-run"

    def __init__(self, min_w: float = 0.0, max_w: float = float("inf")) -> None:
        self.min_w, self.max_w = min_w, max_w
        self.limits: dict[int, float] = {}
        self.actions: list[Action] = []

    def set_power_limit(self, gpu_index: int, watts: float) -> float:
        if gpu_index < 0:
            raise PermanentActuatorError(f"gpu {gpu_index}: no such GPU")
        applied = min(self.max_w, max(self.min_w, watts))
        self.limits[gpu_index] = applied
        self.actions.append(Action("power_limit_w", str(gpu_index), applied))
        log.info("dry-run: would set GPU %d power limit to %.0f W", gpu_index, applied)
        return applied


class DryRunBatchSizer:
    name = "dry-run"

    def __init__(self) -> None:
        self.batches: dict[str, int] = {}
        self.actions: list[Action] = []

    def set_max_batch(self, service: str, max_num_seqs: int) -> None:
        if max_num_seqs < 1:
            raise PermanentActuatorError(f"{service}: max_num_seqs must be >= 1, got {max_num_seqs}")
        self.batches[service] = max_num_seqs
        self.actions.append(Action("max_num_seqs", service, max_num_seqs))
        log.info("dry-run: would restart %s with --max-num-seqs %d", service, max_num_seqs)


class DryRunReplicaScaler:
    name = "dry-run"

    def __init__(self, initial: dict[str, int] | None = None) -> None:
        self.replicas: dict[str, int] = dict(initial or {})
        self.actions: list[Action] = []

    def get_replicas(self, service: str) -> int:
        if service not in self.replicas:
            raise PermanentActuatorError(f"{service}: unknown service")
        return self.replicas[service]

    def set_replicas(self, service: str, replicas: int) -> int:
        if replicas < 0:
            raise PermanentActuatorError(f"{service}: replicas must be >= 0, got {replicas}")
        self.replicas[service] = replicas
        self.actions.append(Action("replicas", service, replicas))
        log.info("dry-run: would scale %s to %d replicas", service, replicas)
        return replicas
