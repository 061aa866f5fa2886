"""wattscale's own Prometheus metrics, on a registry passed in (tests use their own)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import PLATFORM_COLLECTOR, CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

from queuemodels import Performance

ERROR_KINDS = ("bad_window", "batch_actuator", "batch_read", "budget_source", "clock_actuator", "custom_resources",
               "decision_log", "deployments", "fast_error", "fast_late", "fast_tick", "gpu_limits", "gpu_missing",
               "gpu_power", "gpu_source", "log_dropped", "metrics_client", "node_plan", "node_plans", "node_status",
               "operator_step", "optimizer", "over_budget_at_floor", "owners_overrun", "pods", "power_actuator",
               "prometheus", "replica_actuator", "replicas_read", "scrape", "signal_client", "slo_margins",
               "slow_error", "slow_late", "slow_overrun", "slow_tick", "tuner_state", "vllm_source")
"""The `wattscale_errors_total` kinds the daemon and the operator count where a GPU, an actuator, a source, the
cluster's API or their own state fails, exported at 0 from the start (each process exports them all): a counter's
first sample at 1 is no increase to `increase()` or `rate()`, so an alert on them missed the first failure of each
kind."""


def process_registry() -> CollectorRegistry:
    """A process's registry: beside its own metrics, the process's (`process_start_time_seconds`, resident memory,
    CPU, open files: a restart under systemd or memory that grows shows there), Python's, and
    `wattscale_build_info{version}`."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    registry.register(PLATFORM_COLLECTOR)
    try:
        release = version("wattscale")
    except PackageNotFoundError:  # run from a tree that was never installed
        release = "unknown"
    Info("wattscale_build", "The wattscale release this process runs.", registry=registry).info({"version": release})
    return registry


class OwnMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.gpu_power = Gauge("wattscale_gpu_power_watts", "Measured GPU power draw.", ["gpu", "service"], registry=r)
        self.gpu_limit = Gauge("wattscale_gpu_power_limit_watts", "GPU power limit in force.", ["gpu"], registry=r)
        self.gpu_energy = Gauge("wattscale_gpu_energy_joules", "GPU energy counter.", ["gpu"], registry=r)
        self.gpu_clock = Gauge("wattscale_gpu_sm_clock_mhz", "GPU SM clock.", ["gpu"], registry=r)
        self.gpu_capped = Gauge("wattscale_gpu_power_capped_ratio", "Share of the time since the GPU's last read that "
                                "its power limit held its clock down (NVML's power violation time); NaN: unknown.",
                                ["gpu"], registry=r)
        self.budget = Gauge("wattscale_power_budget_watts", "Site power budget.", registry=r)
        self.draw = Gauge("wattscale_power_draw_watts", "Measured draw of all managed GPUs.", registry=r)
        self.emergency = Gauge("wattscale_power_emergency", "1 from a draw over the governor's threshold (or a "
                               "domain's line) until the draw is back under budget x release_below: its cuts held, "
                               "whatever the draw now.", registry=r)
        self.failsafe = Gauge("wattscale_power_failsafe", "1 while GPU readings are lost and limits that fit the "
                              "budget by construction are in force.", registry=r)
        self.plan_version = Gauge("wattscale_plan_version", "Version of the plan the governor steers to.", registry=r)
        self.degradation = Gauge("wattscale_power_degradation", "The degradation ladder under a tight budget: "
                                 "step caps = GPUs the governor holds below the plan's cap (seconds); step clocks = "
                                 "GPUs whose SM clock the governor holds below the plan's to shed draw the same tick; "
                                 "step shape = services a budget-bound plan gives fewer replicas or a smaller max "
                                 "batch than run (minutes); step shed = services the plan leaves short for budget.",
                                 ["step"], registry=r)
        self.predicted_draw = Gauge("wattscale_power_predicted_watts", "Draw the plan predicts at the load it "
                                    "planned for (a service no window has told the demand of yet counts at no load).",
                                    registry=r)
        self.empty_power = Gauge("wattscale_gpu_empty_power_watts", "What a GPU of this type draws with no process, "
                                 "read off the GPUs no replica holds (absent until read).", ["accelerator"], registry=r)
        lat = ["service", "stat"]
        self.ttft_pred = Gauge("wattscale_service_ttft_predicted_ms", "Predicted TTFT.", lat, registry=r)
        self.itl_pred = Gauge("wattscale_service_itl_predicted_ms", "Predicted ITL, token-weighted (rare long steps "
                              "that carry prompts can put the mean above the p95).", lat, registry=r)
        self.slo_margin = Gauge("wattscale_service_slo_margin_ratio", "Share taken off the service's targets in "
                                "planning, learned from the windows that missed them.", ["service"], registry=r)
        self.ttft_obs = Gauge("wattscale_service_ttft_observed_ms", "Observed TTFT (NaN: no window "
                              "now).", lat, registry=r)
        self.itl_obs = Gauge("wattscale_service_itl_observed_ms", "Observed ITL (NaN: no window now).", lat, registry=r)
        self.rate_obs = Gauge("wattscale_service_rate_rps", "Observed request rate (NaN: no window "
                              "now).", ["service"], registry=r)
        self.draft_tokens = Gauge("wattscale_service_draft_tokens", "Tokens drafted a step for a decoding request in "
                                  "the last window (vLLM's spec_decode counter over the ITL samples).", ["service"],
                                  registry=r)
        self.tokens_per_step = Gauge("wattscale_service_tokens_per_step", "Tokens a decoding request gained per engine "
                                     "step in the last window (1 without speculative decoding; 1 + the drafts "
                                     "accepted with it).", ["service"], registry=r)
        self.replicas = Gauge("wattscale_service_replicas", "Replicas in place.", ["service"], registry=r)
        self.desired_replicas = Gauge(
            "wattscale_desired_replicas", "Replicas the optimizer wants (for HPA/KEDA).", ["service"], registry=r
        )
        self.max_batch = Gauge("wattscale_service_max_batch", "--max-num-seqs in place.", ["service"], registry=r)
        self.cap = Gauge("wattscale_service_power_cap_watts", "Planned per-GPU cap.", ["service"], registry=r)
        self.short = Gauge("wattscale_service_shortfall_rps", "Load the plan cannot serve.", ["service", "reason"],
                           registry=r)
        self._short_reason: dict[str, str] = {}
        """Each service's reason in its shortfall series (`show_short`)."""
        self.cycle = Histogram("wattscale_cycle_duration_seconds", "Duration of a control cycle.", ["loop"],
                               buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10), registry=r)
        self.errors = Counter("wattscale_errors", "Errors survived, by kind.", ["kind"], registry=r)
        self.actuations = Counter("wattscale_actuations", "Actuations by backend, kind and result.",
                                  ["backend", "kind", "result"], registry=r)
        self.tuner_param = Gauge("wattscale_tuner_parameter", "Fitted queue-model parameter.", ["pair", "param"],
                                 registry=r)
        self.tuner_trace = Gauge("wattscale_tuner_covariance_trace", "Trace of the filter covariance.", ["pair"],
                                 registry=r)
        self.tuner_nis = Gauge("wattscale_tuner_nis", "Normalised innovation squared of the last update.", ["pair"],
                               registry=r)
        self.tuner_updates = Counter("wattscale_tuner_updates", "Tuner updates by result.", ["pair", "result"],
                                     registry=r)
        self.budget_changes = Counter("wattscale_power_budget_changes", "Changes of the budget in force, by the "
                                      "source that sets it (fallback: the safe budget; config: a reload).",
                                      ["source"], registry=r)
        self.reloads = Counter("wattscale_config_reloads", "Config reloads by result.", ["result"], registry=r)
        for result in ("ok", "refused"):  # at 0 from the start: increase() sees the first of each
            self.reloads.labels(result)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        self.plant_cpu = Counter("wattscale_sim_plant_cpu_seconds", "CPU time of stepping the simulated host "
                                 "(the plant; absent on real hardware, so not the daemon's own overhead).",
                                 registry=r)

    def stand_down(self) -> None:
        """An operator that stops leading: the gauges it set say nothing now, and the standby's page had kept the
        last leadership's draw, budget, replicas and caps beside the new leader's. Labelled series are removed and
        the rest read NaN until it leads again; counters and histograms keep counting."""
        self._short_reason.clear()
        for metric in vars(self).values():
            if isinstance(metric, Gauge):
                if metric._labelnames:
                    metric.clear()
                else:
                    metric.set(math.nan)

    def show_applied(self, service: str, replicas: int, max_batch: int, cap_w: float,
                     predicted: Performance | None) -> None:
        """What a cycle applied to a service, and what the plan predicts of it (None: no prediction)."""
        self.replicas.labels(service).set(replicas)
        self.max_batch.labels(service).set(max_batch)
        self.cap.labels(service).set(cap_w)
        if predicted is not None:
            self.ttft_pred.labels(service, "mean").set(predicted.ttft_ms)
            self.itl_pred.labels(service, "mean").set(predicted.itl_ms)
            self.ttft_pred.labels(service, "p95").set(predicted.ttft_p95_ms)
            self.itl_pred.labels(service, "p95").set(predicted.itl_p95_ms)

    def show_short(self, service: str, reason: str | None, short_rps: float) -> None:
        """The load a service's plan cannot serve, under its reason ("none" with none): one series a service, so an
        alert on a shortfall the last plan left stops when the shortfall does."""
        label = reason or "none"
        before = self._short_reason.get(service)
        if before is not None and before != label:
            self.short.remove(service, before)
        self._short_reason[service] = label
        self.short.labels(service, label).set(short_rps)


@dataclass
class GpuSeries:
    """One GPU's exported series: limit, energy, clock and capped share, and its power under the service that owns
    it (one series a GPU: as owners change, the old one is removed)."""

    limit: Gauge
    energy: Gauge
    clock: Gauge
    capped: Gauge
    owner: str | None = None
    power: Gauge | None = None

    def power_of(self, family: Gauge, gpu: str, owner: str) -> Gauge:
        """The power series under `owner`, the one under a former owner removed."""
        if self.power is None or self.owner != owner:
            if self.owner is not None:
                family.remove(gpu, self.owner)
            self.owner, self.power = owner, family.labels(gpu, owner)
        return self.power
