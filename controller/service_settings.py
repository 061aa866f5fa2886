"""Per-service settings: objectives, workload shape, queue-model prior, simulated workload."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actuators.vllm_servers import MAX_BATCH
from controller.config_loader import ConfigError, check_http_url, check_name, check_range, quoted
from controller.settings_checks import MAX_GPUS, MAX_QUEUE, MAX_REPLICAS
from queuemodels import (
    DEFAULT_MAX_QUEUE,
    FAMILIES,
    MOST_WEIGHT_SHARE,
    STATISTICS,
    Load,
    ModelInputError,
    ServiceParams,
    default_delta_ms,
    default_prior_ms,
)


def check_service_bounds(s: Any, where: str) -> None:
    """The bounds a service's objectives, token mix, priority, replicas and queue keep, in a config and in an
    optimize spec alike (`s` has those fields)."""
    check_range(s, where, ("ttft_ms", "itl_ms"), 0.0, MAX_SLO_MS, low_open=True)  # analyze's --*-slo-ms's too
    check_range(s, where, ("in_tokens", "out_tokens"), 1.0, MAX_TOKENS)
    check_range(s, where, ("in_tokens_cv", "out_tokens_cv"), 0.0, 10.0)
    if not 1 <= s.priority <= MAX_PRIORITY:
        raise ConfigError(f"{where}.priority", f"must be in 1..{MAX_PRIORITY}, got {s.priority}")
    if not 1 <= s.max_replicas <= MAX_REPLICAS:  # a service no replica may serve is a mistake: remove it instead
        raise ConfigError(f"{where}.max_replicas", f"must be in 1..{MAX_REPLICAS}, got {s.max_replicas}")
    if not 0 <= s.min_replicas <= s.max_replicas:
        raise ConfigError(f"{where}.min_replicas", f"must be between 0 and max_replicas ({s.max_replicas}), "
                          f"got {s.min_replicas}")
    if not 0 <= s.max_queue <= MAX_QUEUE:
        raise ConfigError(f"{where}.max_queue", f"must be in 0..{MAX_QUEUE}, got {s.max_queue}")


MAX_STEP_MS = 60_000.0
"""Largest prior step time (ms): a minute per decode step or prompt is a unit mistake."""
MAX_SLO_MS = 1e7
"""Longest TTFT or ITL objective (ms, some 2.8 hours): a config, an optimize spec and `analyze` hold the same."""
MAX_TOKENS = 1_000_000.0
"""Longest mean prompt or output (tokens)."""
MAX_RHO = 1_000.0
"""Largest step-family rho (a decode sequence's compute over a prompt token's; the tuner keeps it within 10 x its
start of 1)."""
MAX_PRIORITY = 1000
"""Lowest priority level."""
MAX_KV_TOKENS = 1_000_000_000
"""KV-cache tokens of one replica: a billion is a unit mistake (bytes for tokens)."""
MAX_SIM_RATE_RPS = 10_000.0
"""Highest simulated arrival rate of one service (requests/s)."""
MAX_DURATION_S = 7 * 86400.0
"""Longest simulated stretch (a scenario, a cycle's period): a week."""
MIN_RATE_RPS = 1e-6
"""Lowest request rate but 0 (a request in 11.6 days): 1e-310 passed an optimize spec's range, and a plan's values
from it were not finite numbers (the solver raised); `tune` fitted a file of such rows."""


@dataclass(frozen=True)
class PriorSettings:
    family: str = "step"
    """Service-time family of the queue model: step (gen1 in vLLM's tokens per step; the default: it held out
    best on engines it was not tuned on, under the engine laws its terms mirror), gen1 or gen2 (llm-inferno's;
    docs/queue-models.md)."""
    alpha_ms: float = default_prior_ms("step", "alpha_ms")
    """Decode step base time (ms); `tune`'s prior where it is given none, as are beta and gamma."""
    beta_ms: float | None = None
    """Decode step time per sequence in the batch (ms; gen2: per token of a sequence); unset: 0.1 (gen2: 0.01)."""
    gamma_ms: float | None = None
    """Prefill base time (ms; gen2: per sequence per token of context); unset: 10 (gen2: 0.0001)."""
    delta_ms: float | None = None
    """Prefill time per prompt token and sequence (ms); unset: 0.05 (gen1 and step; gen2 has no such term)."""
    kappa_ms: float = 0.0
    """Step family: decode time per sequence per token of context (ms); 0: the tuner starts from 1e-4."""
    epsilon_ms: float = 0.0
    """Step family: fixed time of a step that carries a prompt (ms); 0: the tuner starts from 2."""
    rho: float = 0.0
    """Step family: a decode sequence's compute per step over a prompt token's (`tune` fits it); 0: the tuner starts
    from 1."""
    budget_tokens: float = 0.0
    """Step family: tokens one step schedules, decodes first (vLLM's `max_num_batched_tokens`; `tune` fits it); 0: the
    tuner starts from 2048."""
    expert_weight_share: float = 0.0
    """Step family, a mixture of experts: share of the weights in routed experts (their parameters over all, off
    the model card; read, not fitted): a decode step reads only the experts its tokens route to. 0: a dense model."""
    expert_token_share: float = 0.0
    """Step family, a mixture of experts: share of routed experts one token runs (experts per token over routed
    experts: 8/64 for OLMoE, 2/8 for Mixtral, 8/128 for Qwen3-30B-A3B)."""

    def check(self, where: str) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"{where}.family", f"unknown {quoted(self.family)}, expected one of {list(FAMILIES)}")
        check_range(self, where, ("alpha_ms",), 0.0, MAX_STEP_MS, low_open=True)
        check_range(self, where, ("beta_ms", "gamma_ms", "delta_ms", "kappa_ms", "epsilon_ms"), 0.0, MAX_STEP_MS)
        check_range(self, where, ("rho",), 0.0, MAX_RHO)
        check_range(self, where, ("budget_tokens",), 0.0, MAX_TOKENS)
        if 0 < self.budget_tokens < 1:  # a step schedules whole tokens (analyze answered a TTFT of 7e16 ms)
            raise ConfigError(f"{where}.budget_tokens", f"must be 0 or at least 1, got {self.budget_tokens!r}")
        check_range(self, where, ("expert_weight_share",), 0.0, MOST_WEIGHT_SHARE)
        check_range(self, where, ("expert_token_share",), 0.0, 1.0)
        try:  # the model's own checks (a term between 0 and LEAST_TERM leaves the tuner no room between its bounds)
            self.params()
        except ModelInputError as exc:
            name, _, why = str(exc).partition(": ")
            raise ConfigError(f"{where}.{name}", why) from None

    def params(self) -> ServiceParams:
        """The parameters, each left unset at its family's prior, the one `tune` starts from (gen2's beta and gamma
        are in other units: gen1's 20 ms read as its per-context-token gamma made a 10-second decode step)."""
        delta_ms = self.delta_ms if self.delta_ms is not None else default_delta_ms(self.family)
        beta_ms = self.beta_ms if self.beta_ms is not None else default_prior_ms(self.family, "beta_ms")
        gamma_ms = self.gamma_ms if self.gamma_ms is not None else default_prior_ms(self.family, "gamma_ms")
        return ServiceParams(self.family, self.alpha_ms, beta_ms, gamma_ms, delta_ms, self.kappa_ms,
                             self.epsilon_ms, self.rho, self.budget_tokens,
                             expert_weight_share=self.expert_weight_share, expert_token_share=self.expert_token_share)


def check_crest(where: str, peak_rps: float, amplitude: float, peak: str) -> None:
    """The daily cycle's crest on the highest rate otherwise reached (`peak` says how that is reached) stays within
    MAX_SIM_RATE_RPS: at amplitude 1 twice the bound had run."""
    if (top := peak_rps * (1.0 + amplitude)) > MAX_SIM_RATE_RPS:
        raise ConfigError(f"{where}.cycle_amplitude", f"{amplitude:g} takes the rate up to {top:.6g} rps ({peak} x "
                          f"(1 + cycle_amplitude)), over {MAX_SIM_RATE_RPS:g}")


@dataclass(frozen=True)
class SimWorkloadSettings:
    rate_rps: float = 1.0
    """Mean arrival rate of the simulated service (requests/s)."""
    cycle_amplitude: float = 0.0
    """Relative amplitude of a sinusoidal cycle of the rate, in [0, 1]."""
    cycle_period_s: float = 3600.0
    """Period of that cycle (s)."""
    in_cv: float = 0.6
    """Coefficient of variation of prompt lengths."""
    out_cv: float = 0.6
    """Coefficient of variation of output lengths."""

    def check(self, where: str) -> None:
        check_range(self, where, ("rate_rps",), 0.0, MAX_SIM_RATE_RPS)
        check_range(self, where, ("cycle_amplitude",), 0.0, 1.0)
        check_range(self, where, ("cycle_period_s",), 1.0, MAX_DURATION_S)  # as a scenario's
        check_crest(where, self.rate_rps, self.cycle_amplitude, "rate_rps")
        check_range(self, where, ("in_cv", "out_cv"), 0.0, 10.0)


@dataclass(frozen=True)
class VariantSettings:
    accelerator: str
    """Accelerator type this variant runs on (one of `accelerators`)."""
    deployment: str = ""
    """Kubernetes Deployment of this variant's replicas; empty: `<service>-<accelerator>` in lower case."""
    gpus: tuple[int, ...] = ()
    """GPU indices (NVML order) of this variant's replicas, on an nvml host."""
    domain: str = ""
    """The power domain (`power.domains`) this variant's replicas run in where it lists no GPUs: in a cluster,
    the node pool its Deployment's nodeSelector keeps it on. The optimizer charges its watts to that domain;
    a variant with neither counts in no domain (the governor alone holds the domains for it)."""
    kv_cache_tokens: int = 0
    """KV-cache tokens of one replica of this variant, as its vLLM reports them (`vllm:cache_config_info`:
    num_gpu_blocks x block_size; the "# GPU blocks" line of its start-up log): the batch the model plans with is
    at most what the cache holds of the service's sequences. 0: not known, the batch is bounded by
    `--max-num-seqs` alone."""


@dataclass(frozen=True)
class ServiceSettings:
    name: str
    """Service name (also the Deployment or unit it maps to)."""
    model: str
    """Served model name (vLLM `model_name`)."""
    ttft_ms: float
    """Time-to-first-token objective (ms)."""
    itl_ms: float
    """Inter-token-latency objective (ms), as vLLM's ITL histogram reads it: the gap between a request's outputs, one
    a step (a token; under speculative decoding, the tokens its drafts kept)."""
    statistic: str = field(default="mean", metadata={"schema": {"enum": list(STATISTICS)}})
    """Statistic the objectives apply to: mean, p95 or p99."""
    priority: int = 1
    """1 is most important; higher numbers give way first when power is short."""
    min_replicas: int = 1
    """Never fewer replicas than this in a plan that serves it; a service shed (budget, inventory, a higher priority
    first) keeps this many where they run, at the floor cap."""
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
    max_queue: int = DEFAULT_MAX_QUEUE
    """Waiting requests one replica holds before it is counted saturated."""
    initial_max_batch: int = 64
    """`--max-num-seqs` at start."""
    metrics_urls: tuple[str, ...] = ()
    """The `/metrics` URLs of this service's vLLM servers (`vllm_source = "scrape"`)."""
    vllm_command: tuple[str, ...] = ()
    """`vllm` batch backend, child runner: a replica's command line (argv, no shell); wattscale adds
    `--port` and `--max-num-seqs`. It runs in the foreground, as the daemon's child: one that forks and exits
    (`docker run -d`) is a server that exited."""
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

    def load(self, rate_rps: float, in_tokens: float, out_tokens: float, tokens_per_step: float = 1.0,
             draft_tokens: float = 0.0) -> Load:
        """A load of this service's workload shape (`tokens_per_step`, `draft_tokens`: as its engines' windows read
        them)."""
        return Load(rate_rps, in_tokens, out_tokens, self.in_tokens_cv, self.out_tokens_cv, tokens_per_step,
                    draft_tokens)

    def check(self, where: str) -> None:
        check_name(self.name, where)
        if not self.model.strip():  # it matched no vLLM's series, and the service planned from its priors for good
            raise ConfigError(f"{where}.model", f"must name the model vLLM serves (its model_name label), got "
                              f"{quoted(self.model)}")
        if self.statistic not in STATISTICS:
            raise ConfigError(f"{where}.statistic", f"unknown {quoted(self.statistic)}, expected one of "
                                                    f"{list(STATISTICS)}")
        check_service_bounds(self, where)
        if not 1 <= self.initial_max_batch <= MAX_BATCH:
            raise ConfigError(f"{where}.initial_max_batch", f"must be in 1..{MAX_BATCH}, got {self.initial_max_batch}")
        if any(not 0 <= g < MAX_GPUS for g in self.gpus):
            raise ConfigError(f"{where}.gpus", f"GPU indices must be in 0..{MAX_GPUS - 1}, got {list(self.gpus)}")
        for v in self.variants:
            if any(not 0 <= g < MAX_GPUS for g in v.gpus):
                raise ConfigError(f"{where}.variants[{v.accelerator}].gpus",
                                  f"GPU indices must be in 0..{MAX_GPUS - 1}, got {list(v.gpus)}")
            check_range(v, f"{where}.variants[{v.accelerator}]", ("kv_cache_tokens",), 0, MAX_KV_TOKENS)
            if 0 < v.kv_cache_tokens < self.in_tokens + self.out_tokens:
                raise ConfigError(f"{where}.variants[{v.accelerator}].kv_cache_tokens",
                                  f"{v.kv_cache_tokens} holds no whole request of this service (in_tokens + out_tokens "
                                  f"= {self.in_tokens + self.out_tokens:g}); 0 leaves the cache unbounded")
        if any(not 1 <= p <= 65535 for p in self.vllm_ports):
            raise ConfigError(f"{where}.vllm_ports", f"must be ports in 1..65535, got {list(self.vllm_ports)}")
        for url in self.metrics_urls:
            check_http_url(url, f"{where}.metrics_urls", query=True)
