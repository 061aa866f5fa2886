"""Builds the plant (when simulated), sources and actuators a settings object names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from actuators import ActuatorError, BatchSizer, PowerLimiter, ReplicaScaler
from actuators.dryrun import DryRunBatchSizer, DryRunPowerLimiter, DryRunReplicaScaler
from actuators.nvml import NvmlDevices, NvmlPowerLimiter
from actuators.sim import SimBatchSizer, SimPowerLimiter, SimReplicaScaler
from controller.config_loader import ConfigError
from controller.settings import Settings
from controller.telemetry.base import GpuSource, VllmSource
from controller.telemetry.nvml import NvmlGpuSource
from controller.telemetry.prometheus import PrometheusVllmSource
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


def build_parts(settings: Settings, nvml: Any = None) -> Parts:
    """The parts the settings name; `nvml` is the NVML module to use (None: the real `pynvml`)."""
    t, a = settings.telemetry, settings.actuators
    if t.vllm_source == "scrape":
        raise ConfigError("telemetry.vllm_source", "'scrape' is not built into this version yet")
    if a.batch not in ("sim", "dry-run") or a.replicas not in ("sim", "dry-run"):
        raise ConfigError("actuators", "only the sim and dry-run batch and replica backends are built in yet")
    host = build_host(settings)
    devices = None
    if t.gpu_source == "nvml" or a.power == "nvml":
        try:
            devices = NvmlDevices(nvml)
        except ActuatorError as exc:
            where = "telemetry.gpu_source" if t.gpu_source == "nvml" else "actuators.power"
            raise ConfigError(where, str(exc)) from exc
    power: PowerLimiter
    if a.power == "nvml" and devices is not None:
        power = NvmlPowerLimiter(devices)
    else:
        power = SimPowerLimiter(host) if a.power == "sim" else DryRunPowerLimiter()
    batch: BatchSizer = SimBatchSizer(host) if a.batch == "sim" else DryRunBatchSizer()
    replicas: ReplicaScaler
    if a.replicas == "sim":
        replicas = SimReplicaScaler(host)
    else:
        replicas = DryRunReplicaScaler({s.name: s.min_replicas for s in settings.services})
    gpus: GpuSource = SimGpuSource(host)
    if t.gpu_source == "nvml" and devices is not None:
        gpus = NvmlGpuSource(devices, {g: s.name for s in settings.services for g in s.gpus})
    vllm: VllmSource = SimVllmSource(host)
    if t.vllm_source == "prometheus":
        vllm = PrometheusVllmSource(t.prometheus_url, {s.name: s.model for s in settings.services}, t.window_s,
                                    t.timeout_s)
    return Parts(host, gpus, vllm, power, batch, replicas)
