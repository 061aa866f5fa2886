"""The custom resources and how they become the daemon's `Settings`.

A `PowerPolicy` (cluster-scoped) holds what a config file's site-wide tables hold: the budget, the inventory,
the loops, the optimizer, the stability gate, Prometheus. An `LLMService` (namespaced) holds what one
`[[services]]` entry holds. Their specs use the settings' own field names and are built by the config loader
itself (`build`), so a resource is checked exactly as the same TOML is, and every error names its field.
A bad service is reported on its own resource and left out; the others are still controlled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from controller.budget.settings import DemandResponseSettings, budget_settings
from controller.config_loader import ConfigError, build, check_positive, check_range, quoted
from controller.endpoint_checks import DNS_SUBDOMAIN
from controller.service_settings import PriorSettings, ServiceSettings
from controller.settings import (
    AcceleratorSettings,
    ActuatorSettings,
    DaemonSettings,
    OptimizerSettings,
    PowerDomainSettings,
    PowerSettings,
    Settings,
    StabilitySettings,
    TelemetrySettings,
    check_domain_lines,
    check_domains_nest,
)
from controller.settings_checks import MAX_POWER_W
from controller.telemetry.base import shortened
from queuemodels.accelerators import CATALOG

GROUP = "wattscale.dev"
VERSION = "v1alpha1"
PLAN_TTL_RANGE_S = (5.0, 86400.0)
"""A node plan's TTL: under 5 s an agent could not renew in time, over a day a lost operator goes unnoticed."""
POLICIES, SERVICES, PLANS = "powerpolicies", "llmservices", "nodepowerplans"


LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
"""A label's name, and a value where it is not empty (Kubernetes: 63 characters at most)."""
LABEL_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
"""A label key's prefix, a DNS subdomain (253 characters at most)."""


def check_labels(labels: Mapping[str, str], where: str) -> None:
    """Keys and values as Kubernetes labels have them: they are joined into a label selector (`key=value,...`), where
    a comma or `!=` in a value would have chosen other nodes than the ones named."""
    for key, value in labels.items():
        prefix, slash, name = key.rpartition("/")
        prefixed = not slash or (len(prefix) <= 253 and LABEL_PREFIX.fullmatch(prefix))  # "/gpu": an empty prefix
        if not (LABEL_NAME.fullmatch(name) and prefixed):
            raise ConfigError(where, f"{quoted(key)} is no label key ([prefix/]name: letters, digits, '-', '_', "
                              "'.', 63 characters at most)")
        if not isinstance(value, str) or (value and not LABEL_NAME.fullmatch(value)):
            raise ConfigError(f"{where}.{key}", f"{quoted(value)} is no label value (letters, digits, '-', '_', '.', "
                              "63 characters at most, or empty)")


@dataclass(frozen=True)
class NodeDomain:
    """A group of GPU nodes with a power limit of its own (a rack, a PDU, a row), held by the governor as the
    site is: lowest priority first within it, even where the site has room."""

    name: str
    """Names the domain in logs and errors."""
    limit_w: float
    """What the domain's GPUs may draw together (W); the governor keeps the policy's headroom under it too."""
    node_selector: dict[str, str]
    """Labels of the nodes in the domain (their GPUs are its GPUs)."""

    def check(self, where: str) -> None:
        if not self.name:
            raise ConfigError(f"{where}.name", "must not be empty")
        check_positive(self, where, ("limit_w",))
        check_range(self, where, ("limit_w",), 0.0, MAX_POWER_W, low_open=True)
        if not self.node_selector:
            raise ConfigError(f"{where}.node_selector", "must name at least one label")
        check_labels(self.node_selector, f"{where}.node_selector")


@dataclass(frozen=True)
class PowerPolicySpec:
    """A site's power policy: what the operator plans and the governor holds for every LLMService."""

    power: PowerSettings
    """The site budget the governor holds (W), how it is planned against (mode, headroom, plan_margin) and the
    ramp limit."""
    accelerators: tuple[AcceleratorSettings, ...]
    """The GPU inventory the plan may use, by catalogue type."""
    node_selector: dict[str, str] = field(default_factory=dict)
    """Labels of the GPU nodes this policy governs (the node agent's DaemonSet runs on the same); empty: every
    node with a NodePowerPlan's agent reporting."""
    domains: tuple[NodeDomain, ...] = ()
    """Power domains by node labels, each with a limit of its own (`power.domains` by GPU index is the host's)."""
    budget: dict[str, Any] = field(default_factory=dict)
    """The config's `[power.budget]`: safe_budget_w, ttl_s and sources (fixed, schedule, electricitymaps,
    watttime, carbon_csv, demand_response), each with its `kind`; the lowest wins under power.budget_w. Read by
    the loader's own budget_settings; secrets come from the operator's environment."""
    plan_ttl_s: float = 60.0
    """A node agent that has not seen its plan renewed for this long (s) sets the plan's safe caps."""
    safe_cap_share: float = 0.6
    """Until the operator has read a node's GPUs, the safe cap a plan carries is this share of each GPU's
    maximum limit (never below its minimum): written into every NodePowerPlan, read by its agent."""
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    """The loops' periods and the fail-safe (state_dir, log_level and decision_log are the operator's flags)."""
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    """Decisions."""
    stability: StabilitySettings = field(default_factory=StabilitySettings)
    """Damping of decisions."""
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    """The cluster's Prometheus that scrapes the vLLM servers (load and latency)."""

    def check(self, where: str) -> None:
        check_labels(self.node_selector, f"{where}.node_selector")
        check_range(self, where, ("plan_ttl_s",), *PLAN_TTL_RANGE_S)
        check_range(self, where, ("safe_cap_share",), 0.0, 1.0)
        if self.power.domains:
            raise ConfigError(f"{where}.power.domains", "GPU indices are a host's: give `domains` by node_selector")
        check_domain_lines([d.name for d in self.domains], where)
        if self.plan_ttl_s < 3 * self.daemon.fast_interval_s:
            raise ConfigError(f"{where}.plan_ttl_s", f"{self.plan_ttl_s:g} s must be at least three fast ticks "
                              f"({3 * self.daemon.fast_interval_s:g} s): a plan is renewed once a tick")
        locked = sorted(c for c in self.optimizer.clock_levels if c < 1.0)
        if locked:  # before the daemon's settings check, whose advice (actuators.clocks) a policy cannot follow
            raise ConfigError(f"{where}.optimizer.clock_levels", f"{locked}: clocks are not available in cluster "
                              "mode (the node agents set power limits only); keep clock_levels = [1.0]")


@dataclass(frozen=True)
class LlmServiceVariant:
    """One accelerator type the service may run on and the Deployment that runs it there."""

    accelerator: str
    """Accelerator type (one of the policy's accelerators)."""
    deployment: str
    """The Deployment (in the LLMService's namespace) whose replicas run this variant."""
    domain: str = ""
    """The power domain (one of the policy's `domains`) whose nodes the Deployment's nodeSelector keeps its pods
    on: the plan charges this variant's watts to that domain. Empty: its pods may land anywhere, and the
    governor alone holds the domains for it."""


@dataclass(frozen=True)
class LlmServiceSpec:
    """One LLM service: its model, objectives, workload shape, replica bounds and variants."""

    model: str
    """Served model name (vLLM `model_name`)."""
    ttft_ms: float
    """Time-to-first-token objective (ms)."""
    itl_ms: float
    """Inter-token-latency objective (ms), as vLLM's ITL histogram reads it: the gap between a request's outputs, one
    a step (a token; under speculative decoding, the tokens its drafts kept)."""
    variants: tuple[LlmServiceVariant, ...]
    """The accelerator types the service may run on, each with its Deployment; the plan moves it between them."""
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
    """Spread of prompt lengths (std / mean)."""
    out_tokens_cv: float = 1.0
    """Spread of output lengths (std / mean)."""
    initial_max_batch: int = 64
    """`--max-num-seqs` until the plan sets one."""
    prior: PriorSettings = field(default_factory=PriorSettings)
    """Queue-model parameters before any observation."""


def policy_spec(spec: dict[str, Any]) -> PowerPolicySpec:
    """A PowerPolicy's spec, checked; ConfigError names `spec.<field>`."""
    rest = dict(spec)
    table = rest.pop("budget", None)
    table = {} if table is None else table  # 0, "" or [] is no object, as the schema says
    if not isinstance(table, dict):
        raise ConfigError("spec.budget", f"must be an object, got {type(table).__name__}")
    policy = replace(build(PowerPolicySpec, rest, "spec"), budget=table)
    if table:
        budget = budget_settings(table, "spec.budget")
        for name, source in budget.sources:
            if isinstance(source, DemandResponseSettings) and source.port:  # the daemon's, on a host
                raise ConfigError(f"spec.budget.sources[{name}].port", "the operator serves no signal endpoint: "
                                  "write the signal to its `path` (a mounted ConfigMap or volume)")
    return policy


def service_settings(namespace: str, name: str, spec: dict[str, Any]) -> ServiceSettings:
    """An LLMService's spec as a `[[services]]` entry named `namespace/name`; ConfigError names `spec.<field>`."""
    s = build(LlmServiceSpec, spec, "spec")
    if not s.variants:  # as the schema says (minItems 1); it read later as "'ns/name' ... is no Deployment name"
        raise ConfigError("spec.variants", "must list at least one variant (accelerator and deployment)")
    for i, v in enumerate(s.variants):
        if v.accelerator not in CATALOG:
            raise ConfigError(f"spec.variants[{i}].accelerator", f"unknown accelerator {quoted(v.accelerator)}, "
                              f"expected one of {sorted(CATALOG)}")
        if not DNS_SUBDOMAIN.fullmatch(v.deployment):  # else asked of the API: "no Deployment", or a 414 retried
            raise ConfigError(f"spec.variants[{i}].deployment", f"{quoted(shortened(v.deployment))} is no Deployment "
                              "name (lowercase letters, digits, '-' and '.', at most 253 characters)")
    data = {k: v for k, v in spec.items() if k != "variants"}
    data["name"] = f"{namespace}/{name}"
    data["variants"] = [{"accelerator": v.accelerator, "deployment": v.deployment, "domain": v.domain}
                        for v in s.variants]
    return build(ServiceSettings, data, "spec")


def settings_of(policy: PowerPolicySpec, services: list[ServiceSettings], state_dir: str,
                domain_gpus: Mapping[str, tuple[int, ...]] | None = None) -> Settings:
    """The daemon's settings for these resources (the operator builds its own parts, so the backends named
    here are only what `check_settings` reads); each node domain held on the GPUs `domain_gpus` gives it (the
    cluster's GPU numbers; a domain none of whose GPUs has reported yet is not held yet). ConfigError names a
    policy field or `services[ns/name]...`."""
    daemon = replace(policy.daemon, state_dir=state_dir, decision_log="decisions.jsonl")
    power = policy_power(policy, domain_gpus or {})
    pools = [pooled(svc, [d.name for d in policy.domains], {d.name for d in power.domains}) for svc in services]
    settings = Settings(power, policy.accelerators, tuple(pools), daemon=daemon,
                        optimizer=policy.optimizer, stability=policy.stability,
                        telemetry=replace(policy.telemetry, gpu_source="dcgm", vllm_source="prometheus"),
                        actuators=ActuatorSettings(power="dry-run", batch="dry-run", replicas="kubernetes"),
                        budget=budget_settings(policy.budget, "spec.budget") if policy.budget else None,
                        base_dir=state_dir)
    settings.check("")
    return settings


def policy_power(policy: PowerPolicySpec, domain_gpus: Mapping[str, tuple[int, ...]]) -> PowerSettings:
    """The policy's power settings, each node domain held on the GPUs `domain_gpus` gives it (a domain none of whose
    GPUs has reported yet is not held yet), checked to nest on them (ConfigError: the caller adds `spec.`)."""
    power = replace(policy.power, domains=tuple(PowerDomainSettings(d.name, d.limit_w, domain_gpus[d.name])
                                                for d in policy.domains if domain_gpus.get(d.name)))
    check_domains_nest(power.domains, "")
    return power


def pooled(svc: ServiceSettings, named: list[str], held: set[str]) -> ServiceSettings:
    """The service with each variant's pool kept where the pool is held: a domain none of whose GPUs has reported
    yet is not held yet, so a variant in it counts in no domain until one does. A pool the policy does not name
    is refused by field."""
    for v in svc.variants:
        if v.domain and v.domain not in named:
            raise ConfigError(f"services[{svc.name}].variants[{v.accelerator}].domain",
                              f"unknown domain {quoted(v.domain)}, expected one of the policy's domains {named}")
    return replace(svc, variants=tuple(v if v.domain in held else replace(v, domain="") for v in svc.variants))


def policy_field(where: str) -> str:
    """The PowerPolicy field a settings error names (not a service's): the settings' power.domains are the policy's
    `spec.domains`, every other field is under `spec` as the settings name it."""
    return "spec." + (where.removeprefix("power.") if where.startswith("power.domains") else where)


def service_field(where: str) -> tuple[str, str] | None:
    """(`namespace/name`, the field under spec) where a settings error names a service, else None."""
    if not where.startswith("services["):
        return None
    name, _, rest = where[len("services["):].partition("]")
    return name, "spec" + rest
