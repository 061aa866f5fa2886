"""Backends that act on the simulated host (the sim twin of nvml, vllm and kubernetes).

The host is one plant that the fast loop advances and the slow loop acts on from another thread: every
call takes the plant's lock, held for an in-memory change only.
"""

from __future__ import annotations

import threading
from collections import Counter

from actuators.base import BatchInForce, PermanentActuatorError, snap_clock_mhz
from simulator.host import SimHost


class SimPowerLimiter:
    name = "sim"

    def __init__(self, host: SimHost, lock: threading.Lock | None = None) -> None:
        self.host, self.lock = host, lock or threading.Lock()

    def set_power_limit(self, gpu_index: int, watts: float) -> float:
        if not 0 <= gpu_index < len(self.host.gpus) or gpu_index in self.host.lost:
            raise PermanentActuatorError(f"gpu {gpu_index}: no such GPU")
        with self.lock:
            return self.host.set_power_limit(gpu_index, watts)


class SimClockLocker:
    name = "sim"

    def __init__(self, host: SimHost, lock: threading.Lock | None = None) -> None:
        self.host, self.lock = host, lock or threading.Lock()

    def supported_clocks_mhz(self, gpu_index: int) -> tuple[int, ...]:
        if not 0 <= gpu_index < len(self.host.gpus) or gpu_index in self.host.lost:
            raise PermanentActuatorError(f"gpu {gpu_index}: no such GPU")
        return tuple(self.host.gpus[gpu_index].supported_clocks_mhz())

    def lock_clock(self, gpu_index: int, mhz: int) -> int:
        target = snap_clock_mhz(self.supported_clocks_mhz(gpu_index), mhz)
        with self.lock:
            self.host.lock_clock(gpu_index, target)
            return int(self.host.gpus[gpu_index].locked_clock_mhz or 0)

    def reset_clock(self, gpu_index: int) -> None:
        self.supported_clocks_mhz(gpu_index)
        with self.lock:
            self.host.lock_clock(gpu_index, None)


class SimBatchSizer:
    name = "sim"

    def __init__(self, host: SimHost, lock: threading.Lock | None = None) -> None:
        self.host, self.lock = host, lock or threading.Lock()

    def get_max_batch(self, service: str) -> BatchInForce:
        """What most replicas run (the new value once half have restarted), and the rollout's target while
        any replica still runs another value."""
        if service not in self.host.services:
            raise PermanentActuatorError(f"{service}: unknown service")
        with self.lock:
            svc = self.host.services[service]
            running = Counter(r.engine.max_num_seqs for r in svc.counted())
            planned = svc.max_num_seqs
        if not running:
            return BatchInForce(planned)
        most = running.most_common(1)[0][0]
        rolling = len(running) > 1 or most != planned
        return BatchInForce(most, planned if rolling else None)

    def set_max_batch(self, service: str, max_num_seqs: int) -> None:
        if service not in self.host.services:
            raise PermanentActuatorError(f"{service}: unknown service")
        if max_num_seqs < 1:
            raise PermanentActuatorError(f"{service}: max_num_seqs must be >= 1, got {max_num_seqs}")
        with self.lock:
            self.host.restart_with_batch(service, max_num_seqs)


class SimReplicaScaler:
    name = "sim"

    def __init__(self, host: SimHost, lock: threading.Lock | None = None) -> None:
        self.host, self.lock = host, lock or threading.Lock()

    def _check(self, service: str, variant: str) -> None:
        if service not in self.host.services:
            raise PermanentActuatorError(f"{service}: unknown service")
        if variant not in self.host.gpu_types:
            raise PermanentActuatorError(f"{service}: the simulated host has no {variant} GPUs")

    def get_replicas(self, service: str, variant: str) -> int:
        self._check(service, variant)
        with self.lock:
            return self.host.services[service].count(variant)

    def set_replicas(self, service: str, variant: str, replicas: int) -> int:
        self._check(service, variant)
        if replicas < 0:
            raise PermanentActuatorError(f"{service}: replicas must be >= 0, got {replicas}")
        with self.lock:
            return self.host.scale(service, replicas, gpu_type=variant)
