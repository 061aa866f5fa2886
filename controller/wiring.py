"""Builds the plant (when simulated), sources and actuators a settings object names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from actuators import BatchSizer, PowerLimiter, ReplicaScaler
from actuators.dryrun import DryRunBatchSizer, DryRunPowerLimiter, DryRunReplicaScaler
from actuators.sim import SimBatchSizer, SimPowerLimiter, SimReplicaScaler
from controller.config_loader import ConfigError
from controller.settings import Settings
from controller.telemetry.base import GpuSource, VllmSource
from controller.telemetry.sim import SimGpuSource, SimVllmSource
from simulator.host import SimHost
from simulator.workload import TokenDist, Workload, daily_cycle


@dataclass
class Parts:
    host: SimHost | None
    gpus: GpuSource
    vllm: VllmSource
    power: PowerLimiter
    batch: BatchSizer
    replicas: ReplicaScaler


def build_host(settings: Settings) -> SimHost:
    sim = settings.simulator
    host = SimHost(sim.gpu_type, sim.num_gpus, seed=sim.seed, start_delay_s=sim.start_delay_s)
    for k, svc in enumerate(settings.services):
        w = svc.sim
        rng = np.random.default_rng([sim.seed, k])
        workload = Workload(daily_cycle(w.rate_rps, w.cycle_amplitude, w.cycle_period_s),
                            TokenDist(svc.in_tokens, w.in_cv), TokenDist(svc.out_tokens, w.out_cv), rng)
        host.add_service(svc.name, svc.model, workload, svc.min_replicas, svc.initial_max_batch)
    return host


def build_parts(settings: Settings) -> Parts:
    t, a = settings.telemetry, settings.actuators
    if t.gpu_source != "sim" or t.vllm_source != "sim":
        raise ConfigError("telemetry", "only the sim sources are built into this version")
    if a.power not in ("sim", "dry-run") or a.batch not in ("sim", "dry-run") or a.replicas not in ("sim", "dry-run"):
        raise ConfigError("actuators", "only the sim and dry-run backends are built into this version")
    host = build_host(settings)
    power: PowerLimiter = SimPowerLimiter(host) if a.power == "sim" else DryRunPowerLimiter()
    batch: BatchSizer = SimBatchSizer(host) if a.batch == "sim" else DryRunBatchSizer()
    replicas: ReplicaScaler
    if a.replicas == "sim":
        replicas = SimReplicaScaler(host)
    else:
        replicas = DryRunReplicaScaler({s.name: s.min_replicas for s in settings.services})
    return Parts(host, SimGpuSource(host), SimVllmSource(host), power, batch, replicas)
