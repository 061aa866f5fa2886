"""The workload-allocation planning spec (seed 001): query types, models, GPU tiers and precisions.

A tier is a GPU at a precision (`"A100:int8"`); what a precision changes (weight bytes, throughput, delay,
error) is a factor on the FP16 figures, and so is how far its delay and error may run above nominal (wider at
fewer bits unless the spec says otherwise). Costs are in $ per rental period.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from controller.config_loader import ConfigError, check_keys, check_positive, check_range, quoted
from controller.planner.packing_spec import MAX_CARDS, MAX_TIME_LIMIT_S
from controller.service_settings import MAX_TOKENS
from controller.settings_checks import MAX_REPLICAS

MAX_ROUTES = 20_000
"""Most (query type x model x GPU type x precision) routes the MILP takes, a few variables and rows each: 20,000
built and solved in 7 s and 0.3 GB, 256,000 in 27 s and 2.3 GB (building is outside time_limit_s)."""
HOURS_MAX = 8784.0
"""Longest rental period or retention: a leap year."""
RETENTION_H = 1.0
"""How long a served query's tokens are kept under token_storage "retained" where token_retention_h is not set."""


@dataclass(frozen=True)
class QueryType:
    input_tokens: float
    """Mean prompt tokens."""
    output_tokens: float
    """Mean generated tokens."""
    arrival_rate_qph: float
    """Demand (queries per hour)."""
    compute_gflop_per_token: float
    """Compute per token at FP16."""
    delay_s_per_token: float
    """Processing delay per token with a model and GPU of delay factor 1 at FP16."""
    error_rate: float
    """Error rate with a model of error factor 1 at FP16."""
    delay_threshold_s: float
    """Mean delay of served queries must stay at or below this."""
    error_threshold: float
    """Mean error rate of served queries must stay at or below this."""
    unmet_penalty: float
    """$ per query not served."""
    delay_penalty: float = 0.0
    """$ per query-second of delay."""
    token_size_gb: float = 0.0
    """Storage per token kept (GB), charged at storage_rate for as long as the spec's token_storage says."""

    @property
    def tokens(self) -> float:
        """Prompt plus generated tokens of one query."""
        return self.input_tokens + self.output_tokens

    def check(self, where: str) -> None:
        positive = ("input_tokens", "output_tokens", "delay_s_per_token", "delay_threshold_s")
        check_positive(self, where, positive)
        check_positive(self, where, ("arrival_rate_qph", "compute_gflop_per_token", "error_rate", "error_threshold",
                                "unmet_penalty", "delay_penalty", "token_size_gb"), allow_zero=True)
        check_range(self, where, ("error_rate", "error_threshold"), 0.0, 1.0)  # shares of the queries
        for name, high in QUERY_BOUNDS.items():
            check_range(self, where, (name,), 0.0, high, low_open=name in positive)


QUERY_BOUNDS = {"input_tokens": MAX_TOKENS, "output_tokens": MAX_TOKENS, "arrival_rate_qph": 1e9,
                "compute_gflop_per_token": 1e5, "delay_s_per_token": 60.0, "delay_threshold_s": 86400.0,
                "unmet_penalty": 1e6, "delay_penalty": 1e6, "token_size_gb": 1.0}
"""A query type's figures at most: a million-token query, 1e9 queries an hour (280,000 a second), a minute a
token, a day's delay, $1e6 a query. Past them the solver's rows span more orders of magnitude than HiGHS takes
(1e15 queries an hour was its 'Model error', 1e12 a plan that cost less to serve more), and no workload is
there."""


@dataclass(frozen=True)
class ModelSpec:
    weights_gb: float
    """Weights at FP16 (GB)."""
    kv_gb_per_token: float
    """KV cache per token at FP16 (GB)."""
    delay_factor: float = 1.0
    """Delay relative to the reference model."""
    error_factor: float = 1.0
    """Error rate relative to the reference model."""

    def check(self, where: str) -> None:
        check_positive(self, where, tuple(f.name for f in fields(self)))
        check_range(self, where, ("weights_gb",), 0.0, 1e5, low_open=True)
        check_range(self, where, ("kv_gb_per_token",), 0.0, 10.0, low_open=True)
        check_range(self, where, ("delay_factor", "error_factor"), 0.0, 1e3, low_open=True)


@dataclass(frozen=True)
class GpuSpec:
    rental_per_h: float
    """$ per card-hour."""
    memory_gb: float
    """Card memory (GB)."""
    compute_tflops: float
    """Peak dense FP16 TFLOPS."""
    delay_factor: float = 1.0
    """Delay relative to the reference GPU."""
    tp_degrees: tuple[int, ...] = (1, 2, 4, 8)
    """Tensor-parallel degrees a deployment may use."""
    available: int = 64
    """Cards that can be rented."""

    def check(self, where: str) -> None:
        check_positive(self, where, ("rental_per_h", "memory_gb", "compute_tflops", "delay_factor"))
        check_range(self, where, ("rental_per_h",), 0.0, 1e5, low_open=True)
        check_range(self, where, ("memory_gb",), 0.0, 1e4, low_open=True)
        check_range(self, where, ("compute_tflops",), 0.0, 1e6, low_open=True)
        check_range(self, where, ("delay_factor",), 0.0, 1e3, low_open=True)
        if (not self.tp_degrees or any(n not in (1, 2, 4, 8) for n in self.tp_degrees)
                or len(set(self.tp_degrees)) < len(self.tp_degrees)):
            raise ConfigError(f"{where}.tp_degrees", f"must be a subset of [1, 2, 4, 8], each once, got "
                                                     f"{list(self.tp_degrees)}")
        if not 0 <= self.available <= MAX_CARDS:
            raise ConfigError(f"{where}.available", f"must be in 0..{MAX_CARDS}, got {self.available}")


@dataclass(frozen=True)
class Precision:
    weight_factor: float = 1.0
    """Bytes per weight and KV entry relative to FP16."""
    compute_factor: float = 1.0
    """Throughput relative to FP16."""
    delay_factor: float = 1.0
    """Delay relative to FP16."""
    error_factor: float = 1.0
    """Error rate relative to FP16."""
    delay_deviation: float | None = None
    """How far above nominal a tier's delay may run at this precision (share); default by bits, DEVIATIONS."""
    error_deviation: float | None = None
    """How far above nominal a tier's error rate may run at this precision (share); default by bits."""

    def check(self, where: str) -> None:
        check_positive(self, where, ("weight_factor", "compute_factor", "delay_factor", "error_factor"))
        check_range(self, where, ("weight_factor", "compute_factor", "delay_factor", "error_factor"), 0.0, 1e3,
                    low_open=True)
        check_range(self, where, tuple(n for n in ("delay_deviation", "error_deviation")
                                       if getattr(self, n) is not None), 0.0, MAX_DEVIATION)

    def deviations(self) -> Deviation:
        """This precision's deviations: the spec's, else DEVIATIONS by bits per weight (16 x weight_factor)."""
        bits = 16 * self.weight_factor
        default = next(d for floor, d in DEVIATIONS if bits >= floor)
        return Deviation(default.delay_deviation if self.delay_deviation is None else self.delay_deviation,
                         default.error_deviation if self.error_deviation is None else self.error_deviation)


@dataclass(frozen=True)
class Deviation:
    delay_deviation: float
    """How far above nominal the delay may run (share of nominal)."""
    error_deviation: float
    """How far above nominal the error rate may run (share of nominal)."""

    def check(self, where: str) -> None:
        check_range(self, where, ("delay_deviation", "error_deviation"), 0.0, MAX_DEVIATION)


MAX_DEVIATION = 10.0
"""A deviation above ten times nominal is a typo, not a measurement (and would make the big-M in the robust
rows large enough to upset the solver)."""

DEVIATIONS: tuple[tuple[float, Deviation], ...] = (
    (16.0, Deviation(0.10, 0.05)), (8.0, Deviation(0.30, 0.25)), (0.0, Deviation(0.45, 0.50)))
"""Default deviations by bits per weight (at least 16, at least 8, fewer); docs/plan.md cites the figures."""


@dataclass(frozen=True)
class RobustSpec:
    gamma: float = 0.0
    """Fixed budget: how many of a query type's routes may deviate at once, whichever are chosen."""
    protection: float = 0.0
    """Decision-dependent budget: the share of a query type's chosen routes that may deviate at once, in [0, 1];
    the type's budget is gamma + protection x (routes it uses). Both 0: the deterministic model."""
    tiers: dict[str, Deviation] = field(default_factory=dict)
    """Deviations of single tiers ("GPU:precision"), overriding their precision's."""

    def check(self, where: str) -> None:
        check_positive(self, where, ("gamma",), allow_zero=True)
        check_range(self, where, ("gamma",), 0.0, 1e6)  # as the CLI's --gamma (no route count comes near)
        check_range(self, where, ("protection",), 0.0, 1.0)


@dataclass(frozen=True)
class AllocationSpec:
    kind: Literal["allocation"]
    """Selects this model."""
    budget: float
    """Rental plus storage per period ($)."""
    storage_rate: float
    """$ per GB-hour."""
    storage_capacity_gb: float
    """SSD for model weights (GB)."""
    queries: dict[str, QueryType]
    """Query types by name."""
    models: dict[str, ModelSpec]
    """Models by name."""
    gpus: dict[str, GpuSpec]
    """GPU types by name."""
    precisions: dict[str, Precision]
    """Precisions by name (e.g. fp16, int8)."""
    rental_period_h: float = 1.0
    """Hours the plan is rented for."""
    compute_efficiency: float = 0.4
    """Share of peak compute a deployment achieves."""
    mem_util: float = 0.9
    """Share of card memory usable for weights and KV cache."""
    tp_speedup: dict[str, float] = field(default_factory=lambda: {"1": 1.0, "2": 1.9, "4": 3.6, "8": 6.6})
    """Throughput of one replica at TP degree n relative to one card."""
    max_replicas: int = 16
    """Replicas per (model, tier) deployment at most."""
    robust: RobustSpec = field(default_factory=RobustSpec)
    """Budgeted uncertainty on delay and error (off with gamma and protection at 0)."""
    token_storage: Literal["whole_period", "retained"] = "retained"
    """How served queries' tokens are stored: "retained" (each kept token_retention_h hours, billed for that
    long, and the tokens held at once counted against storage_capacity_gb), or "whole_period" (the seed's
    reading: every token billed for the whole rental period, on storage apart from storage_capacity_gb).
    "retained" is the default as the only reading in which the storage paid for must also exist (docs/plan.md,
    "Token storage"); `wattscale plan` prints which reading a plan used."""
    token_retention_h: float | None = None
    """Hours a served query's tokens are kept (token_storage "retained" only; unset: RETENTION_H)."""
    time_limit_s: float = 10.0
    """Solver time limit."""

    @property
    def retention_h(self) -> float:
        """How long a served query's tokens are kept under "retained"."""
        return RETENTION_H if self.token_retention_h is None else self.token_retention_h

    def check(self, where: str) -> None:
        check_positive(self, "", ("budget", "rental_period_h", "time_limit_s"))
        check_range(self, "", ("time_limit_s",), 0.0, MAX_TIME_LIMIT_S, low_open=True)
        check_positive(self, "", ("storage_rate", "storage_capacity_gb"), allow_zero=True)
        check_range(self, "", ("budget",), 0.0, 1e12, low_open=True)
        check_range(self, "", ("rental_period_h",), 0.0, HOURS_MAX, low_open=True)
        check_range(self, "", ("storage_rate",), 0.0, 1e3)
        check_range(self, "", ("storage_capacity_gb",), 0.0, 1e9)
        for name in ("queries", "models", "gpus", "precisions"):
            if not getattr(self, name):
                raise ConfigError(name, "at least one entry is required")
            check_keys(getattr(self, name), name)
        routes = len(self.queries) * len(self.models) * len(self.tiers())
        if routes > MAX_ROUTES:  # named by its longest table, the one to merge first
            longest = max(("queries", "models", "gpus", "precisions"), key=lambda name: len(getattr(self, name)))
            raise ConfigError(longest, f"{len(self.queries)} query types x {len(self.models)} models x "
                              f"{len(self.gpus)} GPU types x {len(self.precisions)} precisions = {routes} routes, past "
                              f"the {MAX_ROUTES} the planner builds and solves in minutes; merge some")
        for name in ("compute_efficiency", "mem_util"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(name, f"must be in (0, 1], got {quoted(getattr(self, name))}")
        if self.token_retention_h is not None:
            if self.token_storage == "whole_period":  # it was ignored unsaid
                raise ConfigError("token_retention_h", 'applies with token_storage = "retained" only')
            check_range(self, "", ("token_retention_h",), 0.0, HOURS_MAX, low_open=True)
        stray = sorted(set(self.tp_speedup) - {"1", "2", "4", "8"})  # taken and never read
        if stray:
            raise ConfigError(f"tp_speedup.{stray[0]}", "no TP degree: the degrees are 1, 2, 4 and 8")
        for n in ("1", "2", "4", "8"):  # linear scaling is n; 1e12 reached HiGHS as a 'Model error'
            if not 0 < self.tp_speedup.get(n, 0) <= 2 * int(n):
                raise ConfigError(f"tp_speedup.{n}", f"needs a value in (0, {2 * int(n)}] (twice linear scaling) for "
                                  f"each of 1, 2, 4, 8, got {quoted(self.tp_speedup.get(n))}")
        if not 1 <= self.max_replicas <= MAX_REPLICAS:
            raise ConfigError("max_replicas", f"must be in 1..{MAX_REPLICAS}, got {self.max_replicas}")
        tiers = {f"{g}:{p}" for g, p in self.tiers()}
        for name in self.robust.tiers:
            if name not in tiers:
                raise ConfigError(f"robust.tiers.{name}", f"no such tier (expected one of {sorted(tiers)})")

    def tiers(self) -> list[tuple[str, str]]:
        return [(g, p) for g in self.gpus for p in self.precisions]

    def deviation(self, tier: tuple[str, str]) -> Deviation:
        """A tier's deviations: its own under [robust.tiers], else its precision's."""
        return self.robust.tiers.get(f"{tier[0]}:{tier[1]}") or self.precisions[tier[1]].deviations()
