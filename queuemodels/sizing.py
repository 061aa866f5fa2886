"""Sizing: the largest arrival rate one replica takes within its targets, and the best max batch.

Every latency figure of the chain grows with the arrival rate, so the largest feasible rate is found
by bisection on [0.001 mu(1), 0.999 mu(N)] (REFERENCE.md section 1), with the law rebuilt at each rate
(the continuous-batching law depends on it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from queuemodels.operating_point import evaluate, meets
from queuemodels.service_time import LawFn, capped_law
from queuemodels.types import Load, ModelInputError, Performance, PowerProfile, ServerShape, ServiceParams, Targets


def _feasible(
    law_fn: LawFn, params: ServiceParams, load: Load, profile: PowerProfile | None, shape: ServerShape,
    rate_rps: float, targets: Targets,
) -> bool:
    """Targets met at this rate; a rate the model has no steady state for is not feasible."""
    try:
        return meets(law_fn(params, replace(load, rate_rps=rate_rps), profile, shape), shape, rate_rps,
                     targets)
    except ModelInputError:
        return False


def max_rate(
    params: ServiceParams,
    load: Load,
    shape: ServerShape,
    targets: Targets,
    profile: PowerProfile | None = None,
    rel_tol: float = 1e-4,
    law_fn: LawFn = capped_law,
) -> float:
    """Largest rate (rps) meeting `targets`; 0.0 when even a trickle of load misses them."""
    law = law_fn(params, replace(load, rate_rps=0.0), profile, shape)
    low = 0.001 * 1000.0 / (law.t0 + law.t1)
    high = 0.999 * 1000.0 * shape.max_batch / (law.t0 + law.t1 * shape.max_batch)

    def feasible(rate_rps: float) -> bool:
        return _feasible(law_fn, params, load, profile, shape, rate_rps, targets)

    if not feasible(low):
        return 0.0
    if feasible(high):
        return high
    while high - low > rel_tol * high:
        mid = 0.5 * (low + high)
        if feasible(mid):
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
    law_fn: LawFn = capped_law,
) -> BatchChoice:
    """The max batch that lets one replica take the most load within targets."""
    best = BatchChoice(0, 0.0)
    for n in sorted(batches):
        rate = max_rate(params, load, ServerShape(n, max_queue, power_cap_w), targets, profile, law_fn=law_fn)
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
    law_fn: LawFn = capped_law,
) -> BatchChoice:
    """The max batch that serves `load.rate_rps` within targets at the lowest mean power draw."""
    best: BatchChoice | None = None
    for n in sorted(batches):
        shape = ServerShape(n, max_queue, power_cap_w)
        try:
            perf = evaluate(law_fn(params, load, profile, shape), shape, load.rate_rps, profile)
        except ModelInputError:
            continue
        if not perf.meets(targets) or perf.block_probability > 1e-3:
            continue
        if best is None or perf.power_w < (best.performance.power_w if best.performance else math.inf):
            best = BatchChoice(n, load.rate_rps, perf)
    if best is None:
        raise ModelInputError(f"rate_rps: no max batch in the candidates serves {load.rate_rps} rps within targets")
    return best
