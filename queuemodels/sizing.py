"""Sizing: the largest arrival rate one replica takes within its targets.

Every latency figure of the chain grows with the arrival rate, so the largest feasible rate is found
by bisection on [0.001 mu(1), 0.999 of the saturation rate] (REFERENCE.md section 1), with the law rebuilt at each rate
(the continuous-batching law depends on it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace

from scipy.optimize import brentq

from queuemodels.operating_point import meets
from queuemodels.service_time import LawFn, capped_law
from queuemodels.stacked import solve_together
from queuemodels.types import Load, ModelInputError, Point, PowerProfile, ServerShape, ServiceParams, Targets

SATURATION_SHARE = 0.999
"""Share of the saturation rate a replica is ever sized to take: past it a bounded queue turns the excess
away, with latencies that would pass a percentile target."""


def _feasible(
    law_fn: LawFn, params: ServiceParams, load: Load, profile: PowerProfile | None, shape: ServerShape,
    rate_rps: float, targets: Targets,
) -> bool:
    """Targets met at this rate; a rate the model has no steady state for is not feasible."""
    try:
        return meets(law_fn(params, load.at_rate(rate_rps), profile, shape), shape, rate_rps,
                     targets)
    except ModelInputError:
        return False


def within_targets(
    params: ServiceParams,
    load: Load,
    shape: ServerShape,
    targets: Targets,
    profile: PowerProfile | None = None,
    law_fn: LawFn = capped_law,
) -> bool:
    """One replica meets `targets` at `load.rate_rps`, below the share of its saturation sizing allows: the
    test `max_rate` bisects on (rate <= max_rate, to its tolerance), one chain solve where it costs ~15."""
    if _surplus(law_fn, params, load, shape, profile, load.rate_rps / SATURATION_SHARE) < 0.0:
        return False
    return _feasible(law_fn, params, load, profile, shape, load.rate_rps, targets)


def within_targets_many(points: Sequence[Point], targets: Targets, law_fn: LawFn = capped_law) -> list[bool]:
    """`within_targets` at many points (parameters, load with its rate, shape, profile): under a mean target the
    points' chains are solved together (queuemodels.stacked), a percentile target or a point the stacked solve
    leaves out is checked on its own."""
    if targets.statistic != "mean":
        return [within_targets(p, load, shape, targets, profile, law_fn) for p, load, shape, profile in points]
    out = [False] * len(points)
    carried = [i for i, (params, load, shape, profile) in enumerate(points)
               if _surplus(law_fn, params, load, shape, profile, load.rate_rps / SATURATION_SHARE) >= 0.0]
    rows, laws, together = solve_together(law_fn, [points[i] for i in carried], draws=False)
    for j, (row, law) in enumerate(zip(rows, laws, strict=True)):
        _, load, shape, _ = points[carried[row]]
        if together.covered[j]:
            out[carried[row]] = bool(together.ttft_ms[j] <= targets.ttft_ms and together.itl_ms[j] <= targets.itl_ms)
        else:  # as `_feasible` checks it, on the law built above
            with contextlib.suppress(ModelInputError):
                out[carried[row]] = meets(law, shape, load.rate_rps, targets)
    return out


def _surplus(law_fn: LawFn, params: ServiceParams, load: Load, shape: ServerShape, profile: PowerProfile | None,
             rate_rps: float) -> float:
    """What a full batch completes beyond `rate_rps` at the law that rate makes (rps; below 0 past saturation)."""
    try:
        law = law_fn(params, load.at_rate(rate_rps), profile, shape)
    except ModelInputError:  # prompts alone would fill the GPU
        return -rate_rps
    return 1000.0 * shape.max_batch / float(law.tau(float(shape.max_batch))) - rate_rps


def saturation_rps(
    params: ServiceParams,
    load: Load,
    shape: ServerShape,
    profile: PowerProfile | None = None,
    law_fn: LawFn = capped_law,
    rel_tol: float = 1e-6,
) -> float:
    """The shape's capacity: the rate r at which a full batch completes exactly r requests per second.
    Under continuous batching the prompts of the arrivals themselves slow decoding, so this is the root of
    r = mu(N) at rate r, below the capacity quoted at any lighter load (Brent's method: a handful of law
    evaluations, as the optimizer sizes every candidate through it). Slightly low rather than high."""

    def surplus(rate_rps: float) -> float:
        return _surplus(law_fn, params, load, shape, profile, rate_rps)

    trickle = surplus(0.0)
    if surplus(trickle) >= 0.0:
        return trickle  # the law does not depend on the rate
    root = float(brentq(surplus, 0.0, trickle, xtol=rel_tol * trickle, rtol=max(rel_tol, 4.5e-16)))
    return root if surplus(root) >= 0.0 else root - rel_tol * trickle


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
    low = 0.001 * 1000.0 / float(law.tau(1.0))
    # Not the capacity at a trickle: under continuous batching the arrivals' own prompts lower it, and a
    # bounded queue past it turns the excess away, with latencies that would pass a percentile target.
    high = SATURATION_SHARE * saturation_rps(params, load, shape, profile, law_fn, rel_tol=rel_tol)

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
