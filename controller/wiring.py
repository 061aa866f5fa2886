"""Builds the plant (when simulated), sources and actuators a settings object names."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from actuators import ActuatorError, BatchSizer, ClockLocker, PowerLimiter, ReplicaScaler
from actuators.dryrun import DryRunBatchSizer, DryRunClockLocker, DryRunPowerLimiter, DryRunReplicaScaler
from actuators.nvml import NvmlDevices
from actuators.nvml_clocks import NvmlClockLocker
from actuators.nvml_limits import NvmlPowerLimiter
from actuators.sim import SimBatchSizer, SimClockLocker, SimPowerLimiter, SimReplicaScaler
from actuators.vllm import VllmBatchSizer
from actuators.vllm_servers import ChildRunner, Replica, ServerRunner, SystemdRunner
from controller.config_loader import ConfigError, svc_path
from controller.http_fetch import healthy_within
from controller.preflight import kube_client
from controller.settings import Settings
from controller.telemetry.base import GpuSource, VllmSource
from controller.telemetry.cluster_power import PrometheusGpuSource
from controller.telemetry.deadline import SampleDeadline
from controller.telemetry.nvml import NvmlGpuSource
from controller.telemetry.prometheus import PrometheusVllmSource
from controller.telemetry.scrape import OnError, ScrapeVllmSource
from controller.telemetry.sim import SimGpuSource, SimVllmSource
from queuemodels.accelerators import CATALOG
from simulator.host import SimHost
from simulator.workload import TokenDist, Workload, daily_cycle

log = logging.getLogger("wattscale.daemon")


@dataclass
class Parts:
    host: SimHost | None
    gpus: GpuSource
    vllm: VllmSource
    power: PowerLimiter
    batch: BatchSizer
    replicas: ReplicaScaler
    starts: tuple[Callable[[Callable[[], bool]], None], ...] = ()
    """Run before the daemon's loops: vLLM servers it supervises come up first. Each is given a callable it polls
    while it waits (minutes, for vLLM): whether the daemon was asked to stop, when it returns at once."""
    stops: tuple[Callable[[], None], ...] = ()
    """Run on exit, in order: supervised servers stopped, default power limits restored where the config
    asks, the NVML session shut down. Each logs what it fails at and returns."""
    plant_lock: threading.Lock = field(default_factory=threading.Lock)
    """Held by every call into the simulated host, whichever loop makes it (the fast loop advances it)."""
    clocks: ClockLocker | None = None
    """Locks SM clocks (None: `actuators.clocks = "none"`, caps alone)."""

    def start(self, stopping: Callable[[], bool] = lambda: False) -> None:
        for step in self.starts:
            if stopping():
                return
            step(stopping)

    def close(self) -> None:
        for step in self.stops:
            step()


def _restore_limits(limiter: NvmlPowerLimiter) -> None:
    for failure in limiter.restore_defaults():
        log.warning("restoring the default power limit: %s", failure)


def _reset_clocks(locker: NvmlClockLocker) -> None:
    for failure in locker.reset_all():
        log.warning("unlocking a GPU clock: %s", failure)


def _unlock_all(locker: DryRunClockLocker) -> None:
    for index in list(locker.locks):
        locker.reset_clock(index)


def _shut_down(devices: NvmlDevices) -> None:
    try:
        devices.close()
    except ActuatorError as exc:
        log.warning("%s", exc)  # it names the call: "NVML shutdown: ..."


def build_host(settings: Settings) -> SimHost:
    sim = settings.simulator
    host = SimHost(sim.gpu_type, sim.num_gpus, seed=sim.seed, start_delay_s=sim.start_delay_s,
                   personalities=sim.personalities, gpu_types=sim.gpu_types, shutdown_timeout_s=sim.shutdown_timeout_s,
                   power_laws=sim.power_laws)
    for k, svc in enumerate(settings.services):
        w = svc.sim
        rng = np.random.default_rng([sim.seed, k])
        workload = Workload(daily_cycle(w.rate_rps, w.cycle_amplitude, w.cycle_period_s),
                            TokenDist(svc.in_tokens, w.in_cv), TokenDist(svc.out_tokens, w.out_cv), rng)
        host.add_service(svc.name, svc.model, workload, svc.min_replicas, svc.initial_max_batch,
                         accelerator=settings.variants_of(svc)[0].accelerator)
    return host


def _nvml_devices(settings: Settings, nvml: Any) -> NvmlDevices | None:
    t, a = settings.telemetry, settings.actuators
    if "nvml" not in (t.gpu_source, a.power, a.clocks):
        return None
    try:
        return NvmlDevices(nvml)
    except ActuatorError as exc:
        field = "telemetry.gpu_source" if t.gpu_source == "nvml" else "actuators.power" if a.power == "nvml" \
            else "actuators.clocks"
        raise ConfigError(field, f'{exc}; off a GPU host, "sim" (as config/sim.toml)') from exc


def probe_nvml(settings: Settings, nvml: Any = None) -> None:
    """NVML started and shut down where a setting names it, so `check-config` fails as `run` would (no driver,
    no library, no permission; with the `nvml` source, a service's GPU not on this host or a GPU no service owns),
    the field named."""
    devices = _nvml_devices(settings, nvml)
    if devices is None:
        return
    try:
        if settings.telemetry.gpu_source == "nvml":
            _owners(settings, devices)
    finally:
        _shut_down(devices)


def _owners(settings: Settings, devices: NvmlDevices) -> dict[int, tuple[str, str]]:
    """GPU index -> its service and variant. Every GPU on the host must belong to a service: the governor would
    hold an unowned one at its minimum, so a forgotten `gpus` list would pin every GPU at its floor unsaid."""
    owners = {g: (s.name, v.accelerator) for s in settings.services for v in settings.variants_of(s) for g in v.gpus}
    try:
        count = devices.count()
    except ActuatorError as exc:
        raise ConfigError("telemetry.gpu_source", str(exc)) from exc
    places = [(svc_path(s.name) + (f".variants[{v.accelerator}]" if s.variants else "") + ".gpus", v.gpus)
              for s in settings.services for v in settings.variants_of(s)]
    for where, gpus in [*places, *((f"power.domains[{d.name}].gpus", d.gpus) for d in settings.power.domains)]:
        if unknown := sorted(g for g in gpus if g >= count):  # named where it is written: a rack's, a service's
            raise ConfigError(where, f"GPU {', '.join(map(str, unknown))} not on this host ({count} GPUs)")
    unowned = [g for g in range(count) if g not in owners]
    if unowned:
        raise ConfigError("services.gpus", f"GPU {', '.join(map(str, unowned))} belong(s) to no service; list each "
                          "GPU under the service whose replicas run on it")
    return owners


def _kubernetes_scaler(settings: Settings, kube: Any) -> ReplicaScaler:
    from actuators.kubernetes import DeploymentRef, KubernetesReplicaScaler

    a = settings.actuators
    refs = {key: DeploymentRef(a.kubernetes_namespace, name) for key, name in deployments(settings).items()}
    return KubernetesReplicaScaler(kube_client(settings) if kube is None else kube, refs, a.kubernetes_timeout_s)


def deployments(settings: Settings) -> dict[tuple[str, str], str]:
    """(service, variant) -> its Deployment (`Settings.deployment_of`)."""
    return {(s.name, v.accelerator): settings.deployment_of(s, v) for s in settings.services
            for v in settings.variants_of(s)}


def _vllm_sizer(settings: Settings) -> VllmBatchSizer:
    a = settings.actuators
    runner: ServerRunner = (ChildRunner() if a.vllm_runner == "child"
                            else SystemdRunner(Path(settings.base_dir) / a.systemd_batch_dir))
    replicas = {}
    for s in settings.services:
        units = s.systemd_units or tuple(f"{s.name}-{i}" for i in range(len(s.vllm_ports)))
        replicas[s.name] = tuple(
            Replica(unit, f"http://127.0.0.1:{port}/health", (*s.vllm_command, "--port", str(port)))
            for unit, port in zip(units, s.vllm_ports, strict=True))
    return VllmBatchSizer(runner, replicas, {s.name: s.initial_max_batch for s in settings.services}, healthy_within,
                          a.health_timeout_s)


def build_parts(settings: Settings, nvml: Any = None, on_error: OnError | None = None, kube: Any = None) -> Parts:
    """The parts the settings name; `nvml` is the NVML module to use (None: the real `pynvml`); `on_error`
    counts failures a source survives by itself (a scraped page); `kube`: the kubernetes client preflight built
    (None: built here). The simulated host is built only when
    some part is simulated: nothing steps a plant no part reads."""
    t, a = settings.telemetry, settings.actuators
    host = build_host(settings) if settings.uses_sim else None
    lock = threading.Lock()
    devices = _nvml_devices(settings, nvml)

    def sim() -> SimHost:
        assert host is not None  # uses_sim holds whenever a part names "sim"
        return host

    starts: list[Callable[[Callable[[], bool]], None]] = []
    stops: list[Callable[[], None]] = []
    power: PowerLimiter
    if devices is not None and a.power == "nvml":
        limiter = NvmlPowerLimiter(devices)
        if a.restore_power_limits:
            stops.append(lambda: _restore_limits(limiter))
        power = limiter
    else:
        power = SimPowerLimiter(sim(), lock) if a.power == "sim" else DryRunPowerLimiter()
    clocks: ClockLocker | None = None
    if devices is not None and a.clocks == "nvml":
        locker = NvmlClockLocker(devices)
        if a.reset_clocks_on_exit:
            stops.append(lambda: _reset_clocks(locker))
        clocks = locker
    elif a.clocks == "sim":
        clocks = SimClockLocker(sim(), lock)
    elif a.clocks == "dry-run":
        rehearsal = DryRunClockLocker()
        if a.reset_clocks_on_exit:  # a rehearsal shows the unlock at exit too (it showed the locks alone)
            stops.append(lambda: _unlock_all(rehearsal))
        clocks = rehearsal
    batch: BatchSizer
    if a.batch == "vllm":
        sizer = _vllm_sizer(settings)
        starts.append(sizer.start)
        stops.insert(0, sizer.close)
        batch = sizer
    else:
        batch = SimBatchSizer(sim(), lock) if a.batch == "sim" else DryRunBatchSizer(
            {s.name: s.initial_max_batch for s in settings.services})
    replicas: ReplicaScaler
    if a.replicas == "kubernetes":
        replicas = _kubernetes_scaler(settings, kube)
    elif a.replicas == "sim":
        replicas = SimReplicaScaler(sim(), lock)
    else:
        replicas = DryRunReplicaScaler({(s.name, v.accelerator): s.min_replicas if k == 0 else 0
                                        for s in settings.services for k, v in enumerate(settings.variants_of(s))})
    gpus: GpuSource
    if devices is not None and t.gpu_source == "nvml":
        gpus = NvmlGpuSource(devices, _owners(settings, devices))
    elif t.gpu_source in ("dcgm", "kepler"):
        acc = CATALOG[settings.accelerators[0].name]
        envelopes = {a.name: (CATALOG[a.name].min_power_w, CATALOG[a.name].max_power_w) for a in settings.accelerators}
        gpus = PrometheusGpuSource(t.prometheus_url, t.gpu_source, (acc.min_power_w, acc.max_power_w),
                                   {name: key for key, name in deployments(settings).items()},
                                   # the fast loop waits on it: half a tick, so a slow answer costs no tick its turn
                                   min(t.timeout_s, 0.5 * settings.daemon.fast_interval_s),
                                   envelopes=envelopes)
    else:
        gpus = SimGpuSource(sim(), lock)
    if not isinstance(gpus, SimGpuSource):  # a real read may hang (NVML, a name lookup): a tick waits 0.8 of itself
        gpus = SampleDeadline(gpus, 0.8 * settings.daemon.fast_interval_s)
    vllm: VllmSource
    models = {s.name: s.model for s in settings.services}
    if t.vllm_source == "prometheus":
        vllm = PrometheusVllmSource(t.prometheus_url, models, t.window_s, t.timeout_s, on_error=on_error)
    elif t.vllm_source == "scrape":
        urls = {s.name: s.metrics_urls for s in settings.services}
        vllm = ScrapeVllmSource(urls, models, t.timeout_s, on_error=on_error, clock=time.monotonic)
    else:
        vllm = SimVllmSource(sim(), lock)
    if devices is not None:
        stops.append(lambda: _shut_down(devices))
    return Parts(host, gpus, vllm, power, batch, replicas, tuple(starts), tuple(stops), lock, clocks)
