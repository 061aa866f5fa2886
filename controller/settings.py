"""Typed, validated settings; every field documented (a service's in controller/service_settings.py). Parsed
from TOML at the edge (config_loader); each field's bounds are checked by its class, what fields say together
by controller/settings_checks.py."""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from controller.budget.settings import BudgetSettings, budget_settings
from controller.config_loader import ConfigError, build, check_positive, check_range, read_toml
from controller.optimizer.problem import AcceleratorType
from controller.power_settings import PowerDomainSettings, PowerSettings, check_domain_lines, check_domains_nest
from controller.service_settings import PriorSettings, ServiceSettings, SimWorkloadSettings, VariantSettings
from controller.settings_checks import MAX_BATCH, MAX_CHOICES, MAX_GPUS, MAX_SHAPES, MAX_SIM_SPEED, check_settings
from queuemodels import DEFAULT_MODEL, MODELS
from queuemodels.accelerators import CATALOG
from simulator.personality import PERSONALITIES

__all__ = [
    "AcceleratorSettings", "ActuatorSettings", "DaemonSettings", "MetricsSettings", "OptimizerSettings",
    "PowerDomainSettings", "PowerSettings", "PriorSettings", "ServiceSettings", "Settings", "SimWorkloadSettings",
    "SimulatorSettings", "StabilitySettings", "TelemetrySettings", "check_choices", "check_domain_lines",
    "check_domains_nest", "load_settings",
]

GpuSource = Literal["sim", "nvml", "dcgm", "kepler"]
VllmSource = Literal["sim", "prometheus", "scrape"]
PowerBackend = Literal["sim", "nvml", "dry-run"]
ClockBackend = Literal["none", "sim", "nvml", "dry-run"]
BatchBackend = Literal["sim", "vllm", "dry-run"]
ReplicaBackend = Literal["sim", "kubernetes", "dry-run"]


@dataclass(frozen=True)
class DaemonSettings:
    fast_interval_s: float = 1.0
    """Period of the fast loop: GPU sampling and the power governor (s, 0.1..3600)."""
    slow_interval_s: float = 30.0
    """Period of the slow loop: observations, tuner, optimizer, actuation (s, up to a day)."""
    state_dir: str = "var/state"
    """Where the tuner state lives (relative paths are relative to the config file)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log verbosity."""
    failsafe_after_ticks: int = 3
    """Fast ticks in a row without GPU readings after which the governor sets limits whose sum fits the
    budget by construction (it cannot see the draw it would otherwise steer)."""
    decision_log: str = "decisions.jsonl"
    """File (in `state_dir`) that gets one JSON line per slow cycle: inputs, plan, what the gate held back,
    what was applied, errors; empty: to the log at DEBUG only."""

    def check(self, where: str) -> None:
        check_range(self, where, ("fast_interval_s",), 0.1, 3600.0)
        check_range(self, where, ("slow_interval_s",), 0.1, 86400.0)
        if not 1 <= self.failsafe_after_ticks <= 3600:
            raise ConfigError(f"{where}.failsafe_after_ticks", f"must be in 1..3600, got {self.failsafe_after_ticks}")
        if self.slow_interval_s < self.fast_interval_s:
            raise ConfigError(f"{where}.slow_interval_s", f"must not be shorter than fast_interval_s "
                              f"({self.slow_interval_s:g} s < {self.fast_interval_s:g} s)")


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = "127.0.0.1"
    """IP address of the own /metrics endpoint (loopback by default); it must be one of this host's."""
    port: int = 9464
    """Port of the own /metrics endpoint; 0 disables it."""

    def check(self, where: str) -> None:
        try:
            ipaddress.ip_address(self.listen)
        except ValueError:
            raise ConfigError(f"{where}.listen", f"must be an IP address, got {self.listen!r}") from None
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{where}.port", f"must be in 0..65535, got {self.port}")


@dataclass(frozen=True)
class OptimizerSettings:
    objective: Literal["cost", "token_speed", "energy"] = "token_speed"
    """Minimum cost, maximum sum of per-request token speed (seed 000), or minimum energy."""
    solver: Literal["auto", "greedy", "milp", "exhaustive"] = "auto"
    """Solver by name. auto: the MILP beside greedy where the problem is small (a host's services), the better
    plan taken; greedy alone at fleet scale."""
    queue_model: str = DEFAULT_MODEL
    """Queue model by name: mm1k-cb (continuous batching, vLLM) or mm1k-batch (llm-inferno)."""
    batch_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    """Candidate `--max-num-seqs` values."""
    power_levels: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9, 1.0)
    """Candidate power caps as shares of each accelerator's maximum limit."""
    clock_levels: tuple[float, ...] = (1.0,)
    """Candidate locked SM clocks as shares of each GPU's maximum (1.0: unlocked); levels below 1 need a clock
    backend (`actuators.clocks`)."""
    energy_weight: float = 0.0
    """With the token_speed objective, what a watt of predicted draw costs, as a share of the fleet's token speed
    per watt of the site's draw (idle included): at 1.0 a plan gives up 1 % of token speed for 1 % less draw (the
    product of token speed and tokens per joule is what it maximises); 0 leaves energy out."""
    clock_min_saving: float = 0.05
    """Least share of a service's energy per request a locked clock must be predicted to save against the best
    plan at the free clock before it is planned: a smaller saving is within the model's own draw errors."""
    transition_penalty: float = 0.05
    """Share of its score a candidate must gain over what runs before a scale is made; a new max batch (a rolling
    restart) or a move to another accelerator must gain twice that. Moving a cap costs nothing."""
    time_limit_s: float = 2.0
    """Time limit of the MILP solver."""
    mip_gap: float = 0.01
    """Relative optimality gap of the MILP solver."""
    resize_tolerance: float = 0.05
    """Relative move of a fitted parameter or token mean below which candidates keep their cached sizing."""
    drain_s: float = 120.0
    """Time within which a queued backlog is to be served: waiting / drain_s joins the demand sized for
    (shorter drains faster, but sizes every transient queue as lasting demand)."""
    slo_margin_step: float = 0.1
    """Margin a service's planning targets gain for each steady window that missed them (controller/slo_margin.py:
    a percentile target allows a smaller share over it, a mean target a smaller value); 0 plans at the targets."""
    slo_miss_share: float = 0.02
    """Share of its steady windows a service may miss its targets in: each window that met them takes
    slo_margin_step x slo_miss_share / (1 - slo_miss_share) off the margin, so it settles at this miss rate."""
    slo_margin_max: float = 0.5
    """Largest margin a service is planned with."""

    def check(self, where: str) -> None:
        if not 0 <= self.resize_tolerance < 0.5:
            raise ConfigError(f"{where}.resize_tolerance", f"must be in [0, 0.5), got {self.resize_tolerance}")
        check_choices(where, self.batch_sizes, self.power_levels)
        check_clock_levels(where, self.clock_levels)
        shapes = len(self.batch_sizes) * len(self.power_levels) * len(self.clock_levels)
        if shapes > MAX_SHAPES:
            raise ConfigError(f"{where}.clock_levels", f"batch_sizes x power_levels x clock_levels give {shapes} "
                              f"shapes to size per service and accelerator each cycle; at most {MAX_SHAPES}")
        check_range(self, where, ("transition_penalty", "mip_gap"), 0.0, 1.0)
        check_range(self, where, ("energy_weight",), 0.0, 10.0)
        check_range(self, where, ("clock_min_saving", "slo_margin_step"), 0.0, 0.5)
        check_range(self, where, ("slo_margin_max",), 0.0, 0.9)
        check_positive(self, where, ("slo_miss_share",))
        check_range(self, where, ("slo_miss_share",), 0.0, 0.5)
        check_positive(self, where, ("time_limit_s", "drain_s"))
        check_range(self, where, ("time_limit_s",), 0.0, 60.0)
        check_range(self, where, ("drain_s",), 0.0, 86400.0)
        if self.queue_model not in MODELS:
            raise ConfigError(f"{where}.queue_model", f"unknown {self.queue_model!r}, expected one of {sorted(MODELS)}")


@dataclass(frozen=True)
class StabilitySettings:
    cooldown_s: float = 120.0
    """Minimum time between two changes of the same service."""
    max_replica_step: int = 2
    """Most replicas added or removed per service per cycle."""
    max_cap_step_w: float = 100.0
    """Most a planned power cap moves per cycle (the governor may cut faster)."""
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
        check_positive(self, where, ("max_cap_step_w",))


@dataclass(frozen=True)
class TelemetrySettings:
    gpu_source: GpuSource = "sim"
    """Where GPU power, energy and limits come from."""
    vllm_source: VllmSource = "sim"
    """Where vLLM load and latency come from."""
    prometheus_url: str = "http://127.0.0.1:9090"
    """Prometheus that scrapes the vLLM servers (`vllm_source = "prometheus"`)."""
    window_s: float = 60.0
    """Window of the rate() queries; at least four scrape intervals."""
    timeout_s: float = 5.0
    """HTTP timeout of one query or page."""

    def check(self, where: str) -> None:
        if not self.prometheus_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.prometheus_url", f"must be an http(s) URL, got {self.prometheus_url!r}")
        check_positive(self, where, ("window_s", "timeout_s"))
        check_range(self, where, ("window_s",), 0.0, 86400.0)
        check_range(self, where, ("timeout_s",), 0.0, 300.0)


@dataclass(frozen=True)
class ActuatorSettings:
    power: PowerBackend = "sim"
    """Backend that sets GPU power limits."""
    batch: BatchBackend = "sim"
    """Backend that changes `--max-num-seqs`."""
    replicas: ReplicaBackend = "sim"
    """Backend that scales replicas."""
    restore_power_limits: bool = False
    """On exit, put every GPU back at its default power limit (`nvml` power backend)."""
    clocks: ClockBackend = "none"
    """Backend that locks SM clocks (docs/clocks.md); "none" plans and runs on caps alone."""
    reset_clocks_on_exit: bool = True
    """On exit, unlock every GPU clock the daemon locked (`nvml` clock backend)."""
    kubernetes_namespace: str = "default"
    """Namespace of the services' Deployments (`kubernetes` replica backend)."""
    kubeconfig: str = ""
    """Kubeconfig file; empty: in-cluster credentials inside a pod, else ~/.kube/config."""
    kubernetes_timeout_s: float = 5.0
    """Timeout of one API call."""
    vllm_runner: Literal["child", "systemd"] = "child"
    """`vllm` batch backend: servers run as the daemon's children, or as systemd units."""
    systemd_dropin_dir: str = "/etc/systemd/system"
    """Where the `vllm` backend writes `<unit>.d/50-wattscale.conf`."""
    health_timeout_s: float = 300.0
    """How long a restarted vLLM server has to answer /health before the change is rolled back."""

    def check(self, where: str) -> None:
        check_positive(self, where, ("kubernetes_timeout_s", "health_timeout_s"))
        check_range(self, where, ("kubernetes_timeout_s",), 0.0, 300.0)
        check_range(self, where, ("health_timeout_s",), 0.0, 86400.0)


@dataclass(frozen=True)
class SimulatorSettings:
    gpu_type: str = "H100-SXM"
    """GPU type of the simulated host."""
    num_gpus: int = 8
    """GPUs on the simulated host."""
    seed: int = 1
    """Seed of the hidden parameters, arrivals and noise."""
    speed: float = 1.0
    """Simulated seconds per wall-clock second."""
    start_delay_s: float = 30.0
    """Time a new or restarted vLLM replica takes to load its model."""
    personalities: dict[str, str] = field(default_factory=dict)
    """Engine personality (hidden step law) per model, or per "model|gpu_type": roofline (default), chunked,
    prefill-overhead, compute-bound-decode, long-context (simulator/personality.py)."""
    gpu_types: tuple[str, ...] = ()
    """Each GPU's type in index order, for a mixed host (e.g. four H100-SXM then four L40S); empty: `num_gpus`
    of `gpu_type`."""

    @property
    def host_types(self) -> list[str]:
        """The simulated host's GPU types, one entry per GPU."""
        return list(self.gpu_types) or [self.gpu_type] * self.num_gpus

    def check(self, where: str) -> None:
        for key, name in self.personalities.items():
            if name not in PERSONALITIES:
                raise ConfigError(f"{where}.personalities.{key}", f"unknown {name!r}, expected one of "
                                  f"{sorted(PERSONALITIES)}")
        if self.gpu_type not in CATALOG:
            raise ConfigError(f"{where}.gpu_type", f"unknown {self.gpu_type!r}, expected one of {sorted(CATALOG)}")
        if not 1 <= self.num_gpus <= MAX_GPUS:
            raise ConfigError(f"{where}.num_gpus", f"must be in 1..{MAX_GPUS}, got {self.num_gpus}")
        if len(self.gpu_types) > MAX_GPUS:
            raise ConfigError(f"{where}.gpu_types", f"must list at most {MAX_GPUS} GPUs, got {len(self.gpu_types)}")
        for i, name in enumerate(self.gpu_types):
            if name not in CATALOG:
                raise ConfigError(f"{where}.gpu_types[{i}]", f"unknown {name!r}, expected one of {sorted(CATALOG)}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"{where}.seed", f"must be in 0..2^63-1, got {self.seed}")
        check_positive(self, where, ("speed",))
        check_range(self, where, ("speed",), 0.0, MAX_SIM_SPEED)
        check_range(self, where, ("start_delay_s",), 0.0, 86400.0)


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
            raise ConfigError(f"{where}.name", f"unknown accelerator {self.name!r}, expected one of {sorted(CATALOG)}")
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
        return Path(self.base_dir) / self.daemon.state_dir / "tuner.json"

    @property
    def decision_log_path(self) -> Path | None:
        d = self.daemon
        return Path(self.base_dir) / d.state_dir / d.decision_log if d.decision_log else None

    def variants_of(self, svc: ServiceSettings) -> tuple[VariantSettings, ...]:
        """The service's variants, the first accelerator's with its own targets where it names none."""
        return svc.variants or (VariantSettings(self.accelerators[0].name, svc.deployment, svc.gpus),)


def check_choices(where: str, batch_sizes: tuple[int, ...], power_levels: tuple[float, ...]) -> None:
    """Candidate batch sizes and power levels: non-empty, short enough to size, each in range."""
    if not 1 <= len(batch_sizes) <= MAX_CHOICES or not all(1 <= b <= MAX_BATCH for b in batch_sizes):
        raise ConfigError(f"{where}.batch_sizes" if where else "batch_sizes",
                          f"must be 1..{MAX_CHOICES} integers in 1..{MAX_BATCH}, got {list(batch_sizes)[:8]}")
    if not 1 <= len(power_levels) <= MAX_CHOICES or not all(0 < p <= 1 for p in power_levels):
        raise ConfigError(f"{where}.power_levels" if where else "power_levels",
                          f"must be 1..{MAX_CHOICES} shares in (0, 1], got {list(power_levels)[:8]}")


def check_clock_levels(where: str, clock_levels: tuple[float, ...]) -> None:
    """Candidate locked clocks: non-empty, short enough to size, each a share in [0.1, 1]."""
    if not 1 <= len(clock_levels) <= MAX_CHOICES or not all(
            isinstance(c, int | float) and 0.1 <= c <= 1 for c in clock_levels):
        raise ConfigError(f"{where}.clock_levels" if where else "clock_levels",
                          f"must be 1..{MAX_CHOICES} shares in [0.1, 1], got {list(clock_levels)[:8]}")


def load_settings(path: Path) -> Settings:
    """Read and validate a config file; raises ConfigError naming the field and the reason."""
    return settings_from(read_toml(path), path.resolve().parent)


def settings_from(data: dict[str, Any], base_dir: Path) -> Settings:
    """Validate a config's TOML tables (relative paths from `base_dir`); raises ConfigError naming the field."""
    data = dict(data)
    if "budget" in data:
        raise ConfigError("budget", "unknown key: budget sources go in [power.budget]")
    if "base_dir" in data:
        raise ConfigError("base_dir", "unknown key: relative paths are read from the config file's directory")
    data["base_dir"] = str(base_dir)
    power = data.get("power")
    if isinstance(power, dict):
        power = data["power"] = dict(power)
    table = power.pop("budget", None) if isinstance(power, dict) else None
    if table is not None and not isinstance(table, dict):
        raise ConfigError("power.budget", "must be a table")
    settings = build(Settings, data)
    if table is None:
        return settings
    budget = budget_settings(table)
    if budget.safe_budget_w > settings.power.budget_w:
        raise ConfigError("power.budget.safe_budget_w", f"{budget.safe_budget_w:g} W is above power.budget_w "
                          f"({settings.power.budget_w:g} W)")
    return dataclasses.replace(settings, budget=budget)
