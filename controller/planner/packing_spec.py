"""The config-packing planning spec (seed 002): GPU specs, request types, availability scenarios and traces.

A *config* is k cards of one GPU type serving requests together; how many requests of each type it holds
follows from the type's memory and compute needs (see docs/plan.md). Prices are per card-hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from controller.config_loader import ConfigError, check_keys, check_positive, check_range, quoted, shown

MAX_REQUESTS = 10_000_000
"""Largest workload (requests) drawn and packed."""
MAX_CARDS = 1_000_000
"""Most cards of one type in a scenario (and most the availability scale multiplies them by)."""
MAX_CONFIG_CARDS = 64
"""Most cards in one config."""
MAX_TIME_LIMIT_S = 600.0
"""Longest MILP time limit per instance."""
MAX_PRICE_PER_H = 1e6
"""Dearest card ($/h): past it a price is a unit mistake, and the MILP's costs would overflow."""
MAX_FLOWS = 100_000
"""Most (GPU type x config size x request type) triples the MILP takes: one variable each (80 x 80 x 64 built for
a minute and ran out its time limit at a 100 % gap)."""
MAX_INSTANCES = 200
"""Most instances (scenarios x traces x scales) --compare solves, each within time_limit_s."""
MAX_SIZE = 1e9
"""Largest memory (GB), compute figure or speedup: far past any card's, and finite in every sum."""
SHARE_SUM_SLACK = 0.05
"""How far a trace's shares may sum from 1 (published shares are rounded; they are normalised)."""


@dataclass(frozen=True)
class GpuSpec:
    price_per_h: float
    """Rental price of one card ($/h)."""
    memory_gb: float
    """Card memory (GB)."""
    compute: float
    """Relative compute capability (the seed uses dense TFLOPS)."""

    def check(self, where: str) -> None:
        check_range(self, where, ("price_per_h",), 0.0, MAX_PRICE_PER_H, low_open=True)
        check_range(self, where, ("memory_gb", "compute"), 0.0, MAX_SIZE, low_open=True)


@dataclass(frozen=True)
class RequestType:
    memory_gb: float
    """Memory one request of this type holds while served (GB)."""
    compute: float
    """Compute one request needs, in the units of GpuSpec.compute divided by compute_adjust."""

    def check(self, where: str) -> None:
        check_range(self, where, ("memory_gb", "compute"), 0.0, MAX_SIZE, low_open=True)


@dataclass(frozen=True)
class PackingSpec:
    kind: Literal["packing"]
    """Selects this model."""
    gpus: dict[str, GpuSpec]
    """GPU types by name."""
    request_types: dict[str, RequestType]
    """Request types by name."""
    scenarios: dict[str, dict[str, int]]
    """Availability scenarios: cards per GPU type (before availability_scale)."""
    traces: dict[str, dict[str, float]]
    """Traces: the share of requests of each type (summing to 1 within 0.05; normalised)."""
    cards: tuple[int, ...] = (1, 2, 4, 8)
    """Cards per config."""
    speedups: tuple[float, ...] = (1.0, 1.75, 3.2, 5.6)
    """Throughput of a config of `cards[i]` cards relative to one card."""
    mem_util: float = 0.90
    """Share of card memory usable by requests."""
    fit_margin: float = 0.95
    """A type whose one request needs more than this share of a card's memory cannot use the card."""
    compute_adjust: float = 10.0
    """Compute scaling between GpuSpec.compute and RequestType.compute (1e-6 to 1e6)."""
    availability_scale: int = 150
    """Multiplier on the scenarios' card counts."""
    scales: tuple[int, ...] = (1000, 3000, 5000)
    """Workload sizes (requests) that --compare runs."""
    homogeneous: tuple[str, ...] = ()
    """GPU types --compare shows single-type allocations for (default: all)."""
    seed: int = 0
    """Random seed of the workload draws (one draw per trace and scale, shared by every scenario)."""
    time_limit_s: float = 10.0
    """MILP time limit per instance."""
    mip_gap: float = 1e-4
    """MILP relative gap at which a solve stops as optimal, at most 0.1 (the output's `optimal` means within it:
    1.0 let a plan 6x the optimum read as optimal)."""

    def check(self, where: str) -> None:
        for table in ("gpus", "request_types", "scenarios", "traces"):
            if not getattr(self, table):
                raise ConfigError(table, "at least one entry is required")
            check_keys(getattr(self, table), table)
        for sname, avail in self.scenarios.items():
            for gpu, n in avail.items():
                if gpu not in self.gpus:
                    raise ConfigError(f"scenarios.{sname}.{gpu}",
                                      f"unknown GPU type, expected one of {sorted(self.gpus)}")
                if not 0 <= n <= MAX_CARDS:
                    raise ConfigError(f"scenarios.{sname}.{gpu}", f"must be in 0..{MAX_CARDS}, got {n}")
        for tname, shares in self.traces.items():
            for rtype, share in shares.items():
                if rtype not in self.request_types:
                    raise ConfigError(f"traces.{tname}.{rtype}",
                                      f"unknown request type, expected one of {sorted(self.request_types)}")
                if not 0 <= share <= 1:
                    raise ConfigError(f"traces.{tname}.{rtype}", f"must be a share in [0, 1], got {share}")
            total = sum(shares.values())
            if abs(total - 1) > SHARE_SUM_SLACK:  # a typo (5.33 for 0.33) had been normalised away unsaid
                raise ConfigError(f"traces.{tname}", f"shares sum to {total:g}, not 1 (within {SHARE_SUM_SLACK:g}: "
                                  "each is the share of the trace's requests of its type)")
        if not self.cards:
            raise ConfigError("cards", "needs at least one config size, e.g. [1, 2, 4, 8]")
        if len(self.cards) != len(self.speedups):
            raise ConfigError("speedups",
                              f"needs one entry per cards entry ({len(self.cards)}), got {len(self.speedups)}")
        for k, n in enumerate(self.cards):
            if n < 1:
                raise ConfigError(f"cards[{k}]", f"must be >= 1, got {n}")
        for k, x in enumerate(self.speedups):
            if not 0 < x <= MAX_SIZE:
                raise ConfigError(f"speedups[{k}]", f"must be in (0, {MAX_SIZE:g}], got {x}")
        for f in ("mem_util", "fit_margin"):
            if not 0 < getattr(self, f) <= 1:
                raise ConfigError(f, f"must be in (0, 1], got {getattr(self, f)}")
        check_positive(self, "", ("time_limit_s",))  # availability_scale: its range says 1 up
        check_range(self, "", ("availability_scale",), 1, MAX_CARDS)
        check_range(self, "", ("compute_adjust",), 1e-6, 1e6)  # a unit's scale: past it, every config fits or none
        check_range(self, "", ("time_limit_s",), 0.0, MAX_TIME_LIMIT_S, low_open=True)
        check_range(self, "", ("mip_gap",), 0.0, 0.1)
        if not self.scales or any(not 0 <= n <= MAX_REQUESTS for n in self.scales):
            raise ConfigError("scales", f"needs request counts in 0..{MAX_REQUESTS}, got {shown(self.scales)}")
        if any(k > MAX_CONFIG_CARDS for k in self.cards):
            raise ConfigError("cards", f"at most {MAX_CONFIG_CARDS} cards per config, got {shown(self.cards)}")
        for name in ("cards", "scales", "homogeneous"):  # a second speedup for one size halved the cost
            values = getattr(self, name)
            if len(set(values)) < len(values):
                raise ConfigError(name, f"names a value twice: {shown(values)}")
        flows = len(self.gpus) * len(self.cards) * len(self.request_types)
        if flows > MAX_FLOWS:
            raise ConfigError("request_types", f"{len(self.gpus)} GPU types x {len(self.cards)} config sizes x "
                              f"{len(self.request_types)} request types = {flows} flows, past the {MAX_FLOWS} the "
                              "planner solves in minutes; merge some")
        if not 0 <= self.seed < 2**63:  # as simulate's: numpy's generator takes no negative seed
            raise ConfigError("seed", f"must be in 0..2^63-1, got {self.seed}")
        for gpu in self.homogeneous:
            if gpu not in self.gpus:
                raise ConfigError("homogeneous", f"unknown GPU type {quoted(gpu)}, expected one of {sorted(self.gpus)}")
