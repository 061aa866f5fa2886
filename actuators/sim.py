"""Backends that act on the simulated host (the sim twin of nvml, vllm and kubernetes)."""

from __future__ import annotations

from actuators.base import PermanentActuatorError
from simulator.host import SimHost


class SimPowerLimiter:
    name = "sim"

    def __init__(self, host: SimHost) -> None:
        self.host = host

    def set_power_limit(self, gpu_index: int, watts: float) -> float:
        if not 0 <= gpu_index < len(self.host.gpus):
            raise PermanentActuatorError(f"gpu {gpu_index}: no such GPU")
        return self.host.set_power_limit(gpu_index, watts)


class SimBatchSizer:
    name = "sim"

    def __init__(self, host: SimHost) -> None:
        self.host = host

    def set_max_batch(self, service: str, max_num_seqs: int) -> None:
        if service not in self.host.services:
            raise PermanentActuatorError(f"{service}: unknown service")
        if max_num_seqs < 1:
            raise PermanentActuatorError(f"{service}: max_num_seqs must be >= 1, got {max_num_seqs}")
        self.host.restart_with_batch(service, max_num_seqs)


class SimReplicaScaler:
    name = "sim"

    def __init__(self, host: SimHost) -> None:
        self.host = host

    def get_replicas(self, service: str) -> int:
        if service not in self.host.services:
            raise PermanentActuatorError(f"{service}: unknown service")
        return len(self.host.services[service].replicas)

    def set_replicas(self, service: str, replicas: int) -> int:
        if service not in self.host.services:
            raise PermanentActuatorError(f"{service}: unknown service")
        if replicas < 0:
            raise PermanentActuatorError(f"{service}: replicas must be >= 0, got {replicas}")
        return self.host.scale(service, replicas)
