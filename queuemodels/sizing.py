"""Sizing: the largest arrival rate one replica takes within its targets, and the best max batch.

Every latency figure of the chain grows with the arrival rate, so the largest feasible rate is found
by bisection on [0.001 mu(1), 0.999 mu(N)] (REFERENCE.md section 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from queuemodels.operating_point import evaluate
from queuemodels.service_time import StepLaw, capped_law
from queuemodels.types import Load, ModelInputError, Performance, PowerProfile, ServerShape, ServiceParams, Targets


def _feasible(law: StepLaw, shape: ServerShape, rate_rps: float, targets: Targets) -> bool:
    perf = evaluate(law, shape, rate_rps, None, tails=targets.statistic != "mean")
    return perf.meets(targets)


def max_rate(
    params: ServiceParams,
    load: Load,
    shape: ServerShape,
    targets: Targets,
    profile: PowerProfile | None = None,
    rel_tol: float = 1e-4,
) -> float:
    """Largest rate (rps) meeting `targets`; 0.0 when even a trickle of load misses them."""
    law = capped_law(params, load, profile, shape.power_cap_w)
    low = 0.001 * 1000.0 / (law.t0 + law.t1)
    high = 0.999 * 1000.0 * shape.max_batch / (law.t0 + law.t1 * shape.max_batch)
    if not _feasible(law, shape, low, targets):
        return 0.0
    if _feasible(law, shape, high, targets):
        return high
    while high - low > rel_tol * high:
        mid = 0.5 * (low + high)
        if _feasible(law, shape, mid, targets):
            low = mid
        else:
            high = mid
    return low


@dataclass(frozen=True)
class BatchChoice:
    """A max batch size and what it gives: the rate it can take, or its power at a given rate."""

    max_batch: int
    max_rate_rps: float
    performance: Performance | None = None


def best_batch_for_rate(
    params: ServiceParams,
    load: Load,
    batches: Iterable[int],
    max_queue: int | None,
    targets: Targets,
    profile: PowerProfile | None = None,
    power_cap_w: float | None = None,
) -> BatchChoice:
    """The max batch that lets one replica take the most load within targets."""
    best = BatchChoice(0, 0.0)
    for n in sorted(batches):
        rate = max_rate(params, load, ServerShape(n, max_queue, power_cap_w), targets, profile)
        if rate > best.max_rate_rps * (1 + 1e-9):
            best = BatchChoice(n, rate)
    return best


def best_batch_for_power(
    params: ServiceParams,
    load: Load,
    batches: Iterable[int],
    max_queue: int | None,
    targets: Targets,
    profile: PowerProfile,
    power_cap_w: float | None = None,
) -> BatchChoice:
    """The max batch that serves `load.rate_rps` within targets at the lowest mean power draw."""
    best: BatchChoice | None = None
    law = capped_law(params, load, profile, power_cap_w)
    for n in sorted(batches):
        shape = ServerShape(n, max_queue, power_cap_w)
        try:
            perf = evaluate(law, shape, load.rate_rps, profile)
        except ModelInputError:
            continue
        if not perf.meets(targets) or perf.block_probability > 1e-3:
            continue
        if best is None or perf.power_w < (best.performance.power_w if best.performance else math.inf):
            best = BatchChoice(n, load.rate_rps, perf)
    if best is None:
        raise ModelInputError(f"rate_rps: no max batch in the candidates serves {load.rate_rps} rps within targets")
    return best
