"""What a service asks of a replica and what a replica delivers: latency targets and predicted performance."""

from __future__ import annotations

from dataclasses import dataclass, field

from queuemodels.types import QUANTILE_OF, STATISTICS, ModelInputError, check_number


@dataclass(frozen=True)
class Targets:
    """Latency objectives of a service class, on the mean or a tail (`statistic`)."""

    ttft_ms: float
    itl_ms: float
    statistic: str = "mean"
    margin: float = 0.0
    """Share taken off what the targets allow when planning: a percentile target then allows (1 - q)(1 - margin)
    of requests and tokens over it, a mean target (1 - margin) of its value."""

    def __post_init__(self) -> None:
        check_number("ttft_ms", self.ttft_ms, positive=True)
        check_number("itl_ms", self.itl_ms, positive=True)
        if self.statistic not in STATISTICS:
            raise ModelInputError(f"statistic: unknown {self.statistic!r}, expected one of {STATISTICS}")
        check_number("margin", self.margin)
        if self.margin >= 1.0:
            raise ModelInputError(f"margin: must be below 1, got {self.margin!r}")

    def limits(self) -> tuple[float, float, float]:
        """(TTFT ms, ITL ms, share allowed over them) as planned: a mean target's values less the margin and a
        share of 1 (a mean allows any share over it); a percentile's values and (1 - q)(1 - margin)."""
        if self.statistic == "mean":
            keep = 1.0 - self.margin
            return self.ttft_ms * keep, self.itl_ms * keep, 1.0
        return self.ttft_ms, self.itl_ms, (1.0 - QUANTILE_OF[self.statistic]) * (1.0 - self.margin)


@dataclass(frozen=True)
class Performance:
    """What a replica delivers at a load (means unless named otherwise)."""

    ttft_ms: float
    itl_ms: float
    ttft_p95_ms: float
    itl_p95_ms: float
    ttft_p99_ms: float
    itl_p99_ms: float
    throughput_rps: float
    mean_batch: float
    mean_in_system: float
    utilization: float
    block_probability: float
    power_w: float
    extra: dict[str, float] = field(default_factory=dict)

    def meets(self, targets: Targets) -> bool:
        """At the targets' own values (a planning margin is the sizing's: queuemodels.sizing)."""
        ttft, itl = self.latency_at(targets.statistic)
        return ttft <= targets.ttft_ms and itl <= targets.itl_ms

    def latency_at(self, statistic: str) -> tuple[float, float]:
        """(TTFT, ITL) at the statistic a target names."""
        if statistic == "p95":
            return self.ttft_p95_ms, self.itl_p95_ms
        if statistic == "p99":
            return self.ttft_p99_ms, self.itl_p99_ms
        return self.ttft_ms, self.itl_ms
