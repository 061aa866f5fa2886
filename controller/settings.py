"""Typed, validated settings; every field documented. Parsed from TOML at the edge (config_loader)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from controller.config_loader import ConfigError, build, check_positive, read_toml
from controller.optimizer.problem import AcceleratorType
from queuemodels import DEFAULT_MODEL, FAMILIES, MODELS, STATISTICS, Load, ServiceParams
from queuemodels.accelerators import CATALOG

GpuSource = Literal["sim", "nvml", "dcgm", "kepler"]
VllmSource = Literal["sim", "prometheus", "scrape"]
PowerBackend = Literal["sim", "nvml", "dry-run"]
BatchBackend = Literal["sim", "vllm", "dry-run"]
ReplicaBackend = Literal["sim", "kubernetes", "dry-run"]


@dataclass(frozen=True)
class DaemonSettings:
    fast_interval_s: float = 1.0
    """Period of the fast loop: GPU sampling and the power governor."""
    slow_interval_s: float = 30.0
    """Period of the slow loop: observations, tuner, optimizer, actuation."""
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
        check_positive(self, where, ("fast_interval_s", "slow_interval_s"))
        if self.failsafe_after_ticks < 1:
            raise ConfigError(f"{where}.failsafe_after_ticks", f"must be >= 1, got {self.failsafe_after_ticks}")
        if self.slow_interval_s < self.fast_interval_s:
            raise ConfigError(f"{where}.slow_interval_s", "must not be shorter than fast_interval_s")


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = "127.0.0.1"
    """Address of the own /metrics endpoint (loopback by default)."""
    port: int = 9464
    """Port of the own /metrics endpoint; 0 disables it."""

    def check(self, where: str) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{where}.port", f"must be in 0..65535, got {self.port}")


@dataclass(frozen=True)
class PowerSettings:
    budget_w: float
    """Site power budget for all managed GPUs, in watts."""
    mode: Literal["predicted", "caps"] = "predicted"
    """Budget the optimizer's predicted draw, or (conservative) the sum of the caps."""
    headroom: float = 0.03
    """Share of the budget the governor keeps free against measurement noise."""
    release_below: float = 0.85
    """The governor lifts emergency caps once measured draw is below this share of the budget."""
    plan_margin: float = 0.1
    """In predicted mode, the share of budget x (1 - headroom), where the governor starts cutting, that the
    plan's predicted mean draw leaves free: room for load that grows between plans, rollouts the stability
    gate holds back, 1-s swings and the draw model's error, so that the governor acts on surprises only."""

    def check(self, where: str) -> None:
        check_positive(self, where, ("budget_w",))
        if not 0 <= self.headroom < 0.5:
            raise ConfigError(f"{where}.headroom", f"must be in [0, 0.5), got {self.headroom}")
        if not 0 < self.release_below < 1:
            raise ConfigError(f"{where}.release_below", f"must be in (0, 1), got {self.release_below}")
        if not 0 <= self.plan_margin < 0.5:
            raise ConfigError(f"{where}.plan_margin", f"must be in [0, 0.5), got {self.plan_margin}")

    def planned_w(self) -> float:
        """The budget the optimizer plans against: the whole budget for caps (they cannot be passed), and
        for predicted means the governor's threshold less the plan's margin."""
        if self.mode == "caps":
            return self.budget_w
        return self.budget_w * (1.0 - self.headroom) * (1.0 - self.plan_margin)


@dataclass(frozen=True)
class OptimizerSettings:
    objective: Literal["cost", "token_speed", "energy"] = "token_speed"
    """Minimum cost, maximum sum of per-request token speed (seed 000), or minimum energy."""
    solver: Literal["greedy", "milp", "exhaustive"] = "greedy"
    """Solver by name."""
    queue_model: str = DEFAULT_MODEL
    """Queue model by name: mm1k-cb (continuous batching, vLLM) or mm1k-batch (llm-inferno)."""
    batch_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    """Candidate `--max-num-seqs` values."""
    power_levels: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9, 1.0)
    """Candidate power caps as shares of each accelerator's maximum limit."""
    transition_penalty: float = 0.05
    """Relative gain a change must bring before it is made."""
    time_limit_s: float = 2.0
    """Time limit of the MILP solver."""
    mip_gap: float = 0.01
    """Relative optimality gap of the MILP solver."""
    resize_tolerance: float = 0.05
    """Relative move of a fitted parameter or token mean below which candidates keep their cached sizing."""
    drain_s: float = 120.0
    """Time within which a queued backlog is to be served: waiting / drain_s joins the demand sized for
    (shorter drains faster, but sizes every transient queue as lasting demand)."""

    def check(self, where: str) -> None:
        if not 0 <= self.resize_tolerance < 0.5:
            raise ConfigError(f"{where}.resize_tolerance", f"must be in [0, 0.5), got {self.resize_tolerance}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError(f"{where}.batch_sizes", "must be a non-empty list of integers >= 1")
        if not self.power_levels or not all(0 < p <= 1 for p in self.power_levels):
            raise ConfigError(f"{where}.power_levels", "must be shares in (0, 1]")
        if self.transition_penalty < 0:
            raise ConfigError(f"{where}.transition_penalty", "must be >= 0")
        check_positive(self, where, ("time_limit_s", "drain_s"))
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

    def check(self, where: str) -> None:
        if self.cooldown_s < 0:
            raise ConfigError(f"{where}.cooldown_s", "must be >= 0")
        if self.confirm_cycles < 1:
            raise ConfigError(f"{where}.confirm_cycles", "must be >= 1")
        if self.max_replica_step < 1:
            raise ConfigError(f"{where}.max_replica_step", "must be >= 1")
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
        check_positive(self, where, ("window_s", "timeout_s"))


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

    def check(self, where: str) -> None:
        if self.gpu_type not in CATALOG:
            raise ConfigError(f"{where}.gpu_type", f"unknown {self.gpu_type!r}, expected one of {sorted(CATALOG)}")
        if self.num_gpus < 1:
            raise ConfigError(f"{where}.num_gpus", "must be >= 1")
        check_positive(self, where, ("speed",))


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
        if self.count < 0:
            raise ConfigError(f"{where}.count", f"must be >= 0, got {self.count}")
        if self.cost_per_hour < 0:
            raise ConfigError(f"{where}.cost_per_hour", "must be >= 0")
        if self.gpus_per_replica < 1:
            raise ConfigError(f"{where}.gpus_per_replica", "must be >= 1")

    def offer(self) -> AcceleratorType:
        """This inventory line as the optimizer sees it, with the catalogue's power envelope."""
        return AcceleratorType(self.name, self.count, self.cost_per_hour, CATALOG[self.name], self.gpus_per_replica)


@dataclass(frozen=True)
class PriorSettings:
    family: str = "gen1"
    """Service-time family of the queue model."""
    alpha_ms: float = 20.0
    """Decode step base time (ms)."""
    beta_ms: float = 0.2
    """Decode step time per sequence in the batch (ms)."""
    gamma_ms: float = 20.0
    """Prefill base time (ms)."""
    delta_ms: float = 0.05
    """Prefill time per prompt token and sequence (ms)."""

    def check(self, where: str) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"{where}.family", f"unknown {self.family!r}, expected one of {list(FAMILIES)}")
        check_positive(self, where, ("alpha_ms",))
        for name in ("beta_ms", "gamma_ms", "delta_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name}", "must be >= 0")

    def params(self) -> ServiceParams:
        return ServiceParams(self.family, self.alpha_ms, self.beta_ms, self.gamma_ms, self.delta_ms)


@dataclass(frozen=True)
class SimWorkloadSettings:
    rate_rps: float = 1.0
    """Mean arrival rate of the simulated service."""
    cycle_amplitude: float = 0.0
    """Relative amplitude of a sinusoidal cycle of the rate."""
    cycle_period_s: float = 3600.0
    """Period of that cycle."""
    in_cv: float = 0.6
    """Coefficient of variation of prompt lengths."""
    out_cv: float = 0.6
    """Coefficient of variation of output lengths."""


@dataclass(frozen=True)
class VariantSettings:
    accelerator: str
    """Accelerator type this variant runs on (one of `accelerators`)."""
    deployment: str = ""
    """Kubernetes Deployment of this variant's replicas; empty: `<service>-<accelerator>` in lower case."""
    gpus: tuple[int, ...] = ()
    """GPU indices (NVML order) of this variant's replicas, on an nvml host."""


@dataclass(frozen=True)
class ServiceSettings:
    name: str
    """Service name (also the Deployment or unit it maps to)."""
    model: str
    """Served model name (vLLM `model_name`)."""
    ttft_ms: float
    """Time-to-first-token objective (ms)."""
    itl_ms: float
    """Inter-token-latency objective (ms)."""
    statistic: str = "mean"
    """Statistic the objectives apply to: mean, p95 or p99."""
    priority: int = 1
    """1 is most important; higher numbers give way first when power is short."""
    min_replicas: int = 1
    """Never fewer replicas than this."""
    max_replicas: int = 8
    """Never more replicas than this."""
    in_tokens: float = 512.0
    """Expected mean prompt length, until observed."""
    out_tokens: float = 256.0
    """Expected mean output length, until observed."""
    in_tokens_cv: float = 1.0
    """Spread of prompt lengths (std / mean); it widens the TTFT tail. vLLM's 1-2-5 token histograms are
    too coarse to measure it, so it is the operator's to give (1 = exponential, a safe default)."""
    out_tokens_cv: float = 1.0
    """Spread of output lengths (std / mean); queueing delay scales with (1 + cv^2) / 2."""
    max_queue: int = 1024
    """Waiting requests one replica holds before it is counted saturated."""
    initial_max_batch: int = 64
    """`--max-num-seqs` at start."""
    metrics_urls: tuple[str, ...] = ()
    """The `/metrics` URLs of this service's vLLM servers (`vllm_source = "scrape"`)."""
    vllm_command: tuple[str, ...] = ()
    """`vllm` batch backend, child runner: a replica's command line (argv, no shell); wattscale adds
    `--port` and `--max-num-seqs`."""
    vllm_ports: tuple[int, ...] = ()
    """`vllm` batch backend: one port per replica on 127.0.0.1 (its /health is checked after a restart)."""
    systemd_units: tuple[str, ...] = ()
    """`vllm` batch backend, systemd runner: one unit per replica, in `vllm_ports` order."""
    deployment: str = ""
    """Kubernetes Deployment serving this service (`kubernetes` replica backend); empty: the service name."""
    gpus: tuple[int, ...] = ()
    """GPU indices (NVML order) this service's replicas run on, on a host with `gpu_source = "nvml"`; every
    GPU of such a host must belong to one service."""
    prior: PriorSettings = field(default_factory=PriorSettings)
    """Queue-model parameters before any observation."""
    sim: SimWorkloadSettings = field(default_factory=SimWorkloadSettings)
    """Simulated workload (simulator only)."""
    variants: tuple[VariantSettings, ...] = ()
    """The accelerator types the service may run on, each with its own replica target; the plan moves it
    between them (the new one scaled up before the old one down). Empty: one variant on the first
    accelerator, with this service's `deployment` and `gpus`."""

    def load(self, rate_rps: float, in_tokens: float, out_tokens: float) -> Load:
        """A load of this service's workload shape."""
        return Load(rate_rps, in_tokens, out_tokens, self.in_tokens_cv, self.out_tokens_cv)

    def check(self, where: str) -> None:
        check_positive(self, where, ("ttft_ms", "itl_ms"))
        if self.statistic not in STATISTICS:
            raise ConfigError(f"{where}.statistic", f"unknown {self.statistic!r}, expected one of {list(STATISTICS)}")
        if self.priority < 1:
            raise ConfigError(f"{where}.priority", "must be >= 1")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(f"{where}.min_replicas", "must be between 0 and max_replicas")
        check_positive(self, where, ("in_tokens",))
        if self.out_tokens < 1:
            raise ConfigError(f"{where}.out_tokens", "must be >= 1")
        for name in ("in_tokens_cv", "out_tokens_cv"):
            if not 0 <= getattr(self, name) <= 10:
                raise ConfigError(f"{where}.{name}", f"must be between 0 and 10, got {getattr(self, name)}")
        if any(g < 0 for g in self.gpus):
            raise ConfigError(f"{where}.gpus", f"GPU indices must be >= 0, got {list(self.gpus)}")
        for url in self.metrics_urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{where}.metrics_urls", f"must be http(s) URLs, got {url!r}")


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
    base_dir: str = "."
    """Directory relative paths resolve against (set by the loader to the config file's)."""

    def check(self, where: str) -> None:
        if not self.services:
            raise ConfigError("services", "at least one service is required")
        if not self.accelerators:
            raise ConfigError("accelerators", "at least one accelerator type is required")
        names = [s.name for s in self.services]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError("services", f"duplicate service name {sorted(dup)[0]!r}")
        if self.actuators.batch == "vllm":
            for k, svc in enumerate(self.services):
                if not svc.vllm_ports:
                    raise ConfigError(f"services[{k}].vllm_ports", 'required with batch = "vllm"')
                if self.actuators.vllm_runner == "child" and not svc.vllm_command:
                    raise ConfigError(f"services[{k}].vllm_command", 'required with vllm_runner = "child"')
                if self.actuators.vllm_runner == "systemd" and len(svc.systemd_units) != len(svc.vllm_ports):
                    raise ConfigError(f"services[{k}].systemd_units", "needs one unit per entry of vllm_ports")
        if self.telemetry.vllm_source == "scrape":
            for k, svc in enumerate(self.services):
                if not svc.metrics_urls:
                    raise ConfigError(f"services[{k}].metrics_urls", 'required with vllm_source = "scrape"')
        if self.uses_sim and self.simulator.gpu_type not in {a.name for a in self.accelerators}:
            raise ConfigError("simulator.gpu_type", "must be one of the configured accelerators")
        known = {a.name for a in self.accelerators}
        for svc in self.services:
            where = f"services[{svc.name}].variants"
            kinds = [v.accelerator for v in svc.variants]
            if svc.variants and (svc.gpus or svc.deployment):
                raise ConfigError(where, "give `gpus` and `deployment` per variant, not for the service")
            for v in svc.variants:
                if v.accelerator not in known:
                    raise ConfigError(where, f"accelerator {v.accelerator!r} is not among the accelerators")
                if kinds.count(v.accelerator) > 1:
                    raise ConfigError(where, f"accelerator {v.accelerator!r} twice")

    def variants_of(self, svc: ServiceSettings) -> tuple[VariantSettings, ...]:
        """The service's variants, the first accelerator's with its own targets where it names none."""
        return svc.variants or (VariantSettings(self.accelerators[0].name, svc.deployment, svc.gpus),)

    @property
    def uses_sim(self) -> bool:
        """Some source or actuator is the simulated host's (so the daemon builds and steps one)."""
        return "sim" in (self.telemetry.gpu_source, self.telemetry.vllm_source, self.actuators.power,
                         self.actuators.batch, self.actuators.replicas)

    @property
    def state_path(self) -> Path:
        return Path(self.base_dir) / self.daemon.state_dir / "tuner.json"

    @property
    def decision_log_path(self) -> Path | None:
        d = self.daemon
        return Path(self.base_dir) / d.state_dir / d.decision_log if d.decision_log else None


def load_settings(path: Path) -> Settings:
    """Read and validate a config file; raises ConfigError naming the field and the reason."""
    data = read_toml(path)
    data.setdefault("base_dir", str(path.resolve().parent))
    return build(Settings, data)
