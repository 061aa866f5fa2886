"""Typed, validated settings; every field documented (a service's in controller/service_settings.py, [optimizer]'s
in controller/optimizer_settings.py, [simulator]'s in controller/simulator_settings.py, [telemetry]'s and
[actuators]' in controller/backend_settings.py). Parsed
from TOML at the edge (config_loader); each field's bounds are checked by its class, what fields say together
by controller/settings_checks.py."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from controller.backend_settings import ActuatorSettings, TelemetrySettings
from controller.budget.settings import BudgetSettings, budget_settings
from controller.config_loader import ConfigError, build, check_listen, check_range, quoted
from controller.optimizer.problem import AcceleratorType
from controller.optimizer_settings import OptimizerSettings
from controller.power_settings import PowerDomainSettings, PowerSettings, check_domain_lines, check_domains_nest
from controller.service_settings import PriorSettings, ServiceSettings, SimWorkloadSettings, VariantSettings
from controller.settings_checks import MAX_GPUS, MAX_SERVICES, check_budget_sources, check_settings
from controller.simulator_settings import SimulatorSettings
from controller.slo_margin import MARGINS_FILE
from controller.state_lock import LOCK_FILE
from controller.toml_file import check_kind, read_toml
from queuemodels.accelerators import CATALOG

__all__ = [
    "AcceleratorSettings", "ActuatorSettings", "DaemonSettings", "MetricsSettings", "OptimizerSettings",
    "PowerDomainSettings", "PowerSettings", "PriorSettings", "ServiceSettings", "Settings", "SimWorkloadSettings",
    "SimulatorSettings", "StabilitySettings", "TelemetrySettings", "check_domain_lines",
    "check_domains_nest", "load_settings",
]


NAME_MAX = 255
"""The longest file name (bytes) Linux file systems take."""


def longest_name_bytes(path: str) -> int:
    """The longest name of `path`'s parts, in the bytes a file system counts (NAME_MAX bounds each)."""
    return max((len(part.encode("utf-8", "surrogateescape")) for part in Path(path).parts), default=0)


LEAST_FAST_S = 0.1
"""Shortest fast-loop period (s)."""
STATE_FILE = "tuner.json"
"""The tuner state's file in state_dir (its set-aside copies and temporary files begin with it too)."""


@dataclass(frozen=True)
class DaemonSettings:
    fast_interval_s: float = 1.0
    """Period of the fast loop: GPU sampling and the power governor (s, 0.1..3600)."""
    slow_interval_s: float = 30.0
    """Period of the slow loop: observations, tuner, optimizer, actuation (s, up to a day)."""
    state_dir: str = "var/state"
    """Where the tuner state lives (relative paths are relative to the config file); one daemon to a folder
    (controller/state_lock.py)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log verbosity."""
    failsafe_after_ticks: int = 3
    """Fast ticks in a row without GPU readings after which the governor sets limits whose sum fits the
    budget by construction (it cannot see the draw it would otherwise steer); at once where the budget falls
    meanwhile."""
    decision_log: str = "decisions.jsonl"
    """File (in `state_dir`) that gets one JSON line per slow cycle: inputs, plan, what the gate held back,
    what was applied, errors; empty: to the log at DEBUG only."""

    def check(self, where: str) -> None:
        check_range(self, where, ("fast_interval_s",), LEAST_FAST_S, 3600.0)
        check_range(self, where, ("slow_interval_s",), 0.1, 86400.0)
        if not 1 <= self.failsafe_after_ticks <= 3600:
            raise ConfigError(f"{where}.failsafe_after_ticks", f"must be in 1..3600, got {self.failsafe_after_ticks}")
        if self.slow_interval_s < self.fast_interval_s:
            raise ConfigError(f"{where}.slow_interval_s", f"must not be shorter than fast_interval_s "
                              f"({self.slow_interval_s:g} s < {self.fast_interval_s:g} s)")
        if not self.state_dir.strip():  # "" read as the config's own folder: state, lock and log beside the config
            raise ConfigError(f"{where}.state_dir", f"must name a directory, got {quoted(self.state_dir)}")
        for name in ("state_dir", "decision_log"):  # `run` failed on it naming no field; check-config only warned
            value = getattr(self, name)
            if (longest := longest_name_bytes(value)) > NAME_MAX:
                raise ConfigError(f"{where}.{name}", f"{quoted(value)} holds a name of {longest} bytes, past the "
                                  f"{NAME_MAX} a file system takes")
        if self.decision_log and (Path(self.decision_log).name != self.decision_log or self.decision_log == ".."):
            # "." named the state dir itself ("Is a directory" every cycle, status with nothing to read), and a path
            # left state_dir
            raise ConfigError(f"{where}.decision_log", f"{quoted(self.decision_log)} must be a file name in "
                              "state_dir, with no directory in it")
        for own, what in ((STATE_FILE, "the tuner state's file"), (MARGINS_FILE, "the SLO margins' file"),
                          (LOCK_FILE, "the daemon's lock")):
            if self.decision_log.lstrip(".").startswith(own):  # its lines would make the file unreadable
                raise ConfigError(f"{where}.decision_log", f"{quoted(self.decision_log)} is {what}")

    def decision_log_path(self, base_dir: Path) -> Path | None:
        """The decision log's file, relative paths from `base_dir` (the config file's directory); None: none."""
        return base_dir / self.state_dir / self.decision_log if self.decision_log else None


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = "127.0.0.1"
    """IP address of the own /metrics and /healthz endpoint (loopback by default); it must be one of this host's."""
    port: int = 9464
    """Port of the own /metrics and /healthz (503 while the fast loop has not ticked for three periods); 0: none."""

    def check(self, where: str) -> None:
        try:
            ipaddress.ip_address(self.listen)
        except ValueError:
            raise ConfigError(f"{where}.listen", f"must be an IP address, got {quoted(self.listen)}") from None
        check_listen(self.listen, f"{where}.listen")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{where}.port", f"must be in 0..65535, got {self.port}")


@dataclass(frozen=True)
class StabilitySettings:
    cooldown_s: float = 120.0
    """Minimum time between two changes of the same service."""
    max_replica_step: int = 2
    """Most replicas added or removed per service per cycle."""
    max_cap_step_w: float = 100.0
    """Most a planned power cap moves up per cycle (the governor may cut faster, and grows a GPU the cap held lower
    holds down toward the plan's cap)."""
    confirm_cycles: int = 3
    """Cycles in a row a plan must ask for the same new max batch, or for fewer replicas, before it is
    made: a rolling restart or a scale-down costs minutes of capacity, more than one noisy cycle gains."""
    short_restart_hold_s: float = 300.0
    """How long a new max batch waits while the plan leaves its service short of capacity with no replica to
    add (at `max_replicas`, or no free GPU): a rolling restart takes each replica out in turn, which a burst
    cannot spare; a shortfall that outlasts this is a load the batch must follow."""

    def check(self, where: str) -> None:
        check_range(self, where, ("cooldown_s", "short_restart_hold_s"), 0.0, 86400.0)
        check_range(self, where, ("confirm_cycles", "max_replica_step"), 1, 1000)
        check_range(self, where, ("max_cap_step_w",), 1.0, 1e6)  # a limit is set to the watt: 1e-300 froze caps


@dataclass(frozen=True)
class AcceleratorSettings:
    name: str
    """Accelerator type (a catalogue name, e.g. H100-SXM)."""
    count: int
    """GPUs of this type available."""
    cost_per_hour: float = 1.0
    """Cost of one GPU-hour, in any currency."""
    gpus_per_replica: int = 1
    """GPUs one vLLM replica occupies (tensor parallelism)."""

    def check(self, where: str) -> None:
        if self.name not in CATALOG:
            raise ConfigError(f"{where}.name", f"unknown accelerator {quoted(self.name)}, expected one of "
                                               f"{sorted(CATALOG)}")
        if not 0 <= self.count <= MAX_GPUS:
            raise ConfigError(f"{where}.count", f"must be in 0..{MAX_GPUS}, got {self.count}")
        check_range(self, where, ("cost_per_hour",), 0.0, 1e6)
        if not 1 <= self.gpus_per_replica <= 64:
            raise ConfigError(f"{where}.gpus_per_replica", f"must be in 1..64, got {self.gpus_per_replica}")

    def offer(self) -> AcceleratorType:
        """This inventory line as the optimizer sees it, with the catalogue's power envelope."""
        return AcceleratorType(self.name, self.count, self.cost_per_hour, CATALOG[self.name], self.gpus_per_replica)


@dataclass(frozen=True)
class Settings:
    power: PowerSettings
    """Power budget."""
    accelerators: tuple[AcceleratorSettings, ...]
    """Accelerator inventory."""
    services: tuple[ServiceSettings, ...]
    """LLM services under control."""
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    """Loops, state, logging."""
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    """Own Prometheus endpoint."""
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    """Decisions."""
    stability: StabilitySettings = field(default_factory=StabilitySettings)
    """Damping of decisions."""
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    """Sources."""
    actuators: ActuatorSettings = field(default_factory=ActuatorSettings)
    """Backends."""
    simulator: SimulatorSettings = field(default_factory=SimulatorSettings)
    """The simulated host (used by the `sim` sources and actuators)."""
    budget: BudgetSettings | None = field(default=None, metadata={"key": False})
    """`[power.budget]` (read by `load_settings`, not a table of its own): sources that lower the budget below
    `power.budget_w` over time (a schedule, grid carbon intensity, demand response); the lowest wins. None:
    `power.budget_w` alone."""
    base_dir: str = field(default=".", metadata={"key": False})
    """Directory relative paths resolve against (set by the loader to the config file's)."""

    def check(self, where: str) -> None:
        check_settings(self)

    @property
    def uses_sim(self) -> bool:
        """Some source or actuator is the simulated host's (so the daemon builds and steps one)."""
        return "sim" in (self.telemetry.gpu_source, self.telemetry.vllm_source, self.actuators.power,
                         self.actuators.batch, self.actuators.replicas, self.actuators.clocks)

    @property
    def state_path(self) -> Path:
        return Path(self.base_dir) / self.daemon.state_dir / STATE_FILE

    @property
    def decision_log_path(self) -> Path | None:
        return self.daemon.decision_log_path(Path(self.base_dir))

    def gpu_types(self, gpus: tuple[int, ...]) -> list[str]:
        """Each of these GPUs' type: a simulated host's as built, else the accelerator of the variant that names it,
        else the first accelerator's (a real host's types per index are NVML's)."""
        kinds = dict(enumerate(self.simulator.host_types)) if self.uses_sim else {
            g: v.accelerator for svc in self.services for v in self.variants_of(svc) for g in v.gpus}
        return [kinds.get(g, self.accelerators[0].name) for g in gpus]

    def deployment_of(self, svc: ServiceSettings, v: VariantSettings) -> str:
        """A variant's Deployment: as named, else its service's (no variants listed) or `<service>-<accelerator>`."""
        return v.deployment or (f"{svc.name}-{v.accelerator}".lower() if svc.variants else svc.name)

    def variants_of(self, svc: ServiceSettings) -> tuple[VariantSettings, ...]:
        """The service's variants, the first accelerator's with its own targets where it names none."""
        return svc.variants or (VariantSettings(self.accelerators[0].name, svc.deployment, svc.gpus),)


def load_settings(path: Path, doc: dict[str, Any] | None = None) -> Settings:
    """Read and validate a config file (`doc`: its tables where the caller read them already); raises ConfigError
    naming the field and the reason."""
    if doc is None:
        doc = read_toml(path)
    check_kind(path, doc, "daemon config")
    return settings_from(doc, path.resolve().parent)


def settings_from(data: dict[str, Any], base_dir: Path) -> Settings:
    """Validate a config's TOML tables (relative paths from `base_dir`); raises ConfigError naming the field."""
    data = dict(data)
    if "budget" in data:
        raise ConfigError("budget", "unknown key: budget sources go in [power.budget]")
    if "base_dir" in data:
        raise ConfigError("base_dir", "unknown key: relative paths are read from the config file's directory")
    data["base_dir"] = str(base_dir)
    if "services" in data and not isinstance(data["services"], list):  # `services = "chat"`: not a missing list
        raise ConfigError("services", f"must be a list of [[services]] tables, got {quoted(data['services'])}")
    if not data.get("services"):  # a host's daemon with nothing to serve is a config's mistake
        raise ConfigError("services", "at least one service is required")
    if len(data["services"]) > MAX_SERVICES:  # before checking each, slowly
        raise ConfigError("services", f"{len(data['services'])} listed, more than the {MAX_SERVICES} one daemon plans")
    power = data.get("power")
    if isinstance(power, dict):
        power = data["power"] = dict(power)
    table = power.pop("budget", None) if isinstance(power, dict) else None
    if table is not None and not isinstance(table, dict):
        raise ConfigError("power.budget", "must be a table")
    sim = data.get("simulator")
    if isinstance(sim, dict) and isinstance(n := sim.get("num_gpus"), int) and isinstance(types := sim.get(
            "gpu_types"), list) and types and n != len(types):  # gpu_types was read, num_gpus unsaid
        raise ConfigError("simulator.num_gpus", f"{n} but gpu_types lists {len(types)} GPUs: give one")
    settings = build(Settings, data)
    if table is None:
        return settings
    # a safe budget above budget_w is held to it, as every source's is (refused, it barred lowering budget_w under it
    # by a reload, where the safe budget waits for a restart)
    settings = dataclasses.replace(settings, budget=budget_settings(table))
    check_budget_sources(settings)
    return settings
