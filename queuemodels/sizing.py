"""Sizing: the largest arrival rate one replica takes within its targets.

Every latency figure of the chain grows with the arrival rate, so the largest feasible rate is found
by bisection on [0.001 mu(1), 0.999 of the saturation rate] (as llm-inferno's queue-analysis sizes), with the
law rebuilt at each rate (the continuous-batching law depends on it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from queuemodels.law_arrays import ManyLawFn, Points, laws_of
from queuemodels.operating_point import meets
from queuemodels.params import ServiceParams
from queuemodels.service_time import LawFn, StepLaw, capped_law
from queuemodels.stacked import solve_together
from queuemodels.step_arrays import Bools, Floats
from queuemodels.targets import Targets
from queuemodels.types import Load, ModelInputError, PowerProfile, ServerShape

SATURATION_SHARE = 0.999
"""Share of the saturation rate a replica is ever sized to take: past it a bounded queue turns the excess
away, with latencies that would pass a percentile target."""
RATE_REL_TOL = 1e-4
"""Relative width to which a max rate is found: two rates closer than this are the same rate."""


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


def within_targets_of(points: Points, targets: Sequence[Targets], law_fn: LawFn = capped_law,
                      many: ManyLawFn | None = None) -> Bools:
    """`within_targets` at every point, `targets` per base: the points' chains solved together (queuemodels.stacked)
    and read for their means or, under a percentile target, the shares over it (queuemodels.stacked_tails); a point
    the stacked solve leaves out is checked on its own."""
    out = np.zeros(len(points.rates_rps), dtype=bool)
    carried = np.flatnonzero(_surpluses(points, law_fn, many) >= 0.0)
    some = points.take(carried)
    per_base = np.array([t.limits() for t in targets], dtype=float)
    ttft_ms, itl_ms, allowed = per_base.reshape(len(targets), 3)[some.base].T
    mean = allowed >= 1.0  # a mean target (a percentile's allows less than all)
    built, has, together = solve_together(law_fn, many, some, draws=False, limits=(
        np.where(mean, np.nan, ttft_ms), itl_ms) if not mean.all() else None)
    out[carried] = together.covered & np.where(
        mean, (together.ttft_ms <= ttft_ms) & (together.itl_ms <= itl_ms),
        (together.ttft_over <= allowed) & (together.itl_over <= allowed))
    for j in np.flatnonzero(has & ~together.covered).tolist():  # as `_feasible` checks it, one by one
        params, load, shape, profile = some.point(j)
        with contextlib.suppress(ModelInputError):
            law = built[j] if j in built else law_fn(params, load, profile, shape)
            out[carried[j]] = meets(law, shape, load.rate_rps, targets[some.base[j]])
    return out


def _surpluses(points: Points, law_fn: LawFn, many: ManyLawFn | None) -> Floats:
    """`_surplus` at every point at the rate sizing allows it (its rate over SATURATION_SHARE)."""
    return _surplus_at(points.at_rates(points.rates_rps / SATURATION_SHARE), law_fn, many)[0]


def _surplus_at(points: Points, law_fn: LawFn, many: ManyLawFn | None, one: bool = False) -> tuple[Floats, Floats]:
    """`_surplus` at every point at its rate, and where `one` is asked its law's step time at batch 1 (NaN where
    it has no law, or was not asked)."""
    tops = points.tops()
    laws, built = laws_of(many, points, tops)
    out: Floats = 1000.0 * tops / laws.tau(tops) - points.rates_rps
    at_one: Floats = laws.tau(np.ones(len(tops))) if one else np.full(len(tops), np.nan)
    for i in np.flatnonzero(~built & np.isnan(laws.p0)).tolist():  # no array form (inf: no law, -rate above)
        params, load, shape, profile = points.point(i)
        law = _law(law_fn, params, load, shape, profile)
        out[i] = _full_batch_surplus(law, shape, load.rate_rps)
        if one and law is not None:
            at_one[i] = float(law.tau(1.0))
    return out, at_one


def _law(law_fn: LawFn, params: ServiceParams, load: Load, shape: ServerShape,
         profile: PowerProfile | None) -> StepLaw | None:
    """The law at this load, None where the model has none (prompts alone would fill the GPU)."""
    try:
        return law_fn(params, load, profile, shape)
    except ModelInputError:
        return None


def _full_batch_surplus(law: StepLaw | None, shape: ServerShape, rate_rps: float) -> float:
    """What a full batch completes beyond `rate_rps` under `law` (rps; -rate where there is no law)."""
    if law is None:
        return -rate_rps
    return 1000.0 * shape.max_batch / float(law.tau(float(shape.max_batch))) - rate_rps


def _surplus(law_fn: LawFn, params: ServiceParams, load: Load, shape: ServerShape, profile: PowerProfile | None,
             rate_rps: float) -> float:
    """What a full batch completes beyond `rate_rps` at the law that rate makes (rps; below 0 past saturation)."""
    return _full_batch_surplus(_law(law_fn, params, load.at_rate(rate_rps), shape, profile), shape, rate_rps)


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
    from scipy.optimize import brentq  # here: scipy.optimize is 0.3 s of every command's start

    root = float(brentq(surplus, 0.0, trickle, xtol=rel_tol * trickle, rtol=max(rel_tol, 4.5e-16)))
    return root if surplus(root) >= 0.0 else root - rel_tol * trickle


def _bracket(params: ServiceParams, load: Load, shape: ServerShape, profile: PowerProfile | None, law_fn: LawFn,
             rel_tol: float) -> tuple[float, float]:
    """Where a max rate is searched: a trickle (a thousandth of one request's service rate), and just below the
    saturation rate. Not the capacity at a trickle: under continuous batching the arrivals' own prompts lower it,
    and a bounded queue past it turns the excess away, with latencies that would pass a percentile target."""
    law = law_fn(params, replace(load, rate_rps=0.0), profile, shape)
    return (0.001 * 1000.0 / float(law.tau(1.0)),
            SATURATION_SHARE * saturation_rps(params, load, shape, profile, law_fn, rel_tol=rel_tol))


SATURATION_ROUNDS = 60
"""Rounds `_brackets` takes at most: regula falsi settles most points in under 10; past SECANT_ROUNDS the rest
are bisected, so all are within tolerance well before the last."""
SECANT_ROUNDS = 20
"""Rounds of regula falsi before bisection: enough for a smooth surplus, a bound for one that is not."""


def _brackets(points: Points, law_fn: LawFn, many: ManyLawFn | None, rel_tol: float) -> tuple[Floats, Floats]:
    """`_bracket` at every point (rates not read), its saturation rate found for all at once: the Illinois
    variant of regula falsi on the surplus, each round one stacked build of the laws, where Brent's method
    built them one by one (most of a cold cycle's planning). As `saturation_rps`, the rate returned is one where
    the surplus is not negative, within `rel_tol` of the trickle's capacity of the root."""
    k = len(points.rates_rps)
    trickle, one_ms = _surplus_at(points.at_rates(np.zeros(k)), law_fn, many, one=True)
    trickle = np.nan_to_num(trickle, nan=0.0)
    low = np.where(one_ms > 0.0, 1.0 / np.where(one_ms > 0.0, one_ms, 1.0), 0.0)
    lo, hi, f_lo = np.zeros(k), trickle.copy(), trickle.copy()
    f_hi = _surplus_at(points.at_rates(trickle), law_fn, many)[0]
    lo[f_hi >= 0.0] = trickle[f_hi >= 0.0]  # the law does not depend on the rate
    side = np.zeros(k)  # which end the last round moved (+1 lo, -1 hi): Illinois halves the other's value
    for n in range(SATURATION_ROUNDS):
        idx = np.flatnonzero((f_hi < 0.0) & (hi - lo > rel_tol * trickle))
        if not idx.size:
            break
        a, b, fa, fb = lo[idx], hi[idx], f_lo[idx], f_hi[idx]
        step = 0.25 * rel_tol * trickle[idx]
        x = np.clip(a - fa * (b - a) / (fb - fa), a + step, b - step) if n < SECANT_ROUNDS else 0.5 * (a + b)
        f = _surplus_at(points.take(idx).at_rates(x), law_fn, many)[0]
        up = f >= 0.0
        lo[idx], f_lo[idx] = np.where(up, x, a), np.where(up, f, np.where(side[idx] < 0, 0.5 * fa, fa))
        hi[idx], f_hi[idx] = np.where(up, b, x), np.where(up, np.where(side[idx] > 0, 0.5 * fb, fb), f)
        side[idx] = np.where(up, 1.0, -1.0)
    return low, SATURATION_SHARE * lo


def max_rate(
    params: ServiceParams,
    load: Load,
    shape: ServerShape,
    targets: Targets,
    profile: PowerProfile | None = None,
    rel_tol: float = RATE_REL_TOL,
    law_fn: LawFn = capped_law,
) -> float:
    """Largest rate (rps) meeting `targets`; 0.0 when even a trickle of load misses them."""
    low, high = _bracket(params, load, shape, profile, law_fn, rel_tol)

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


GRID_RATES = 7
"""Rates checked per point and round by `max_rates_of`: each round narrows a bracket eightfold in one stacked call."""


def max_rates_of(points: Points, targets: Sequence[Targets], law_fn: LawFn = capped_law,
                 many: ManyLawFn | None = None, rel_tol: float = RATE_REL_TOL, fits_rps: Floats | None = None,
                 misses_rps: Floats | None = None) -> Floats:
    """`max_rate` at every point (its rate is not read), `targets` per base, within the same tolerance: each
    point's bracket is narrowed GRID_RATES + 1-fold a round, every point's rates checked in one call of
    `within_targets_of`, so a few calls answer what a bisection per point answers in ~15 solves each. Rates
    known to fit and known not to (`fits_rps`, `misses_rps`, a sizing's brackets) start the brackets narrower."""
    k = len(points.rates_rps)
    low, high = _brackets(points, law_fn, many, rel_tol)
    fits = np.zeros(k) if fits_rps is None else fits_rps
    misses = np.full(k, np.inf) if misses_rps is None else misses_rps
    low_ok, high_ok = fits >= low, fits >= high
    check_low, check_high = np.flatnonzero(~low_ok & (misses > low)), np.flatnonzero(~high_ok & (misses > high))
    asked = np.concatenate([check_low, check_high])
    answers = within_targets_of(points.take(asked).at_rates(np.concatenate([low[check_low], high[check_high]])),
                                targets, law_fn, many)
    low_ok[check_low], high_ok[check_high] = np.split(answers, [len(check_low)])
    none, top = ~low_ok, low_ok & high_ok  # as max_rate: 0 where a trickle misses, else the top where it fits
    lo, hi = np.maximum(fits, low), np.minimum(misses, high)
    steps = np.arange(GRID_RATES)
    while (open_ := np.flatnonzero(~none & ~top & (hi - lo > rel_tol * hi))).size:
        grid = lo[open_, None] + (hi - lo)[open_, None] * (steps + 1.0) / (GRID_RATES + 1)
        ok = within_targets_of(points.take(np.repeat(open_, GRID_RATES)).at_rates(grid.ravel()), targets, law_fn,
                               many).reshape(len(open_), GRID_RATES)
        first_miss = np.where(ok.all(axis=1), GRID_RATES, np.argmin(ok, axis=1))  # the rates before it all fit
        rows = np.arange(len(open_))
        lo[open_] = np.where(first_miss > 0, grid[rows, np.maximum(first_miss - 1, 0)], lo[open_])
        hi[open_] = np.where(first_miss < GRID_RATES, grid[rows, np.minimum(first_miss, GRID_RATES - 1)], hi[open_])
    out: Floats = np.where(none, 0.0, np.where(top, high, lo))
    return out
