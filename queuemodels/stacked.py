"""Many operating points solved together: the means a plan values its candidates by and a fit its windows.

The optimizer values each candidate (a shape and a replica count, so a rate per replica) by the mean number
of requests in a replica and its mean draw, sizing checks mean targets, and the tuner's fits predict mean TTFT
and ITL at every window many times over; solved one by one, each point costs a chain and a draw curve built
through the interpreter, and a fleet has tens of thousands of candidates. For affine step laws (every law but
the step family's roofline) the chains of many points are solved at once: the states up to each point's
batch laid end to end, and the queue beyond it in closed form, since every state past the batch serves at the
full batch's rate (a truncated geometric tail). The figures are those `analyze` gives, to rounding; a point
the closed form does not cover (a roofline law, utilisation of the full batch within 1 % of 1, a bounded queue
that turns more than a negligible share away, no arrivals) is marked for the caller to solve on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from queuemodels.chain import BLOCKING_NEGLIGIBLE, MAX_STATES, TAIL_MASS
from queuemodels.law_arrays import Bools, Floats, LawArrays, Points
from queuemodels.service_time import LawFn, StepLaw
from queuemodels.types import ModelInputError

ManyLawFn = Callable[[Points, Floats], tuple[LawArrays, Bools]]
"""Laws of many points at their batches, as arrays, and which it built (queuemodels.law_arrays)."""
RHO_COVERED = 0.99
"""Utilisation of the full batch up to which the tail's closed form is used (nearer 1 it loses digits)."""


class Figures(NamedTuple):
    """Each point's means (NaN where `covered` is False: the caller solves those alone, or has none)."""

    in_system: Floats
    ttft_ms: Floats
    itl_ms: Floats
    prefill_ms: Floats
    """The prompt's own steps at the batch it joins: TTFT less the queueing."""
    power_w: Floats
    covered: NDArray[np.bool_]


def solve_together(law_fn: LawFn, many: ManyLawFn | None, points: Points, draws: bool = True) -> tuple[
        dict[int, StepLaw], Bools, Figures]:
    """The points' laws at their offered rates, built as arrays by `many` where it can and by `law_fn` one by
    one otherwise (those returned, by point), which points have one (a rate the model cannot take has none),
    and their figures solved together; `draws=False` leaves the draw NaN (a latency check needs none)."""
    tops = points.tops()
    laws, has = many(points, tops) if many is not None else (LawArrays.empty(len(tops)), np.zeros(len(tops), bool))
    built = {}
    for i in np.flatnonzero(~has).tolist():
        params, load, shape, profile = points.point(i)
        try:
            built[i] = law_fn(params, load, profile, shape)
        except ModelInputError:
            continue
        laws.put(i, built[i])
        has[i] = True
    return built, has, mean_figures(laws, has, points, tops, draws)


def mean_figures(laws: LawArrays, has: Bools, points: Points, tops: Floats, draws: bool = True) -> Figures:
    """The means of `analyze(..., tails=False)` at each point with a law (`has`), at its KV-bound batch `tops`,
    the draw at its base's profile."""
    k = len(tops)
    queue = np.array([-1 if s.max_queue is None else s.max_queue for s in points.shapes], dtype=float)
    t0, t1, top, lam = laws.t0, laws.t1, tops, points.rates_rps / 1000.0
    full = t0 + t1 * top
    positive = has & (np.minimum(t0 + t1, full) > 0.0) & (lam > 0.0)
    rho = np.where(positive, lam * full / np.where(positive, top, 1.0), 1.0)
    light = positive & (rho < RHO_COVERED)
    # K as queuemodels.operating_point.solve_chain sets it: where the unbounded tail's mass falls below TAIL_MASS,
    # or the bounded queue's end if that comes first or the queue is short
    tail = top + np.ceil(math.log(TAIL_MASS) / np.log(np.where(light, rho, 0.5)))
    short = (queue >= 0) & (top + queue <= 4 * top)
    capacity = np.where(queue < 0, tail, np.where(short, top + queue, np.minimum(top + queue, tail)))
    covered = laws.affine & light & (short | (tail <= MAX_STATES))
    nan = np.full(k, np.nan)
    out = Figures(nan, nan.copy(), nan.copy(), nan.copy(), nan.copy(), covered)
    if not covered.any():
        return out
    idx = np.flatnonzero(covered)
    t0, t1, lam, top, rho = t0[idx], t1[idx], lam[idx], top[idx], rho[idx]
    tail_len = capacity[idx] - top
    # states 1..N of every row laid end to end (rows differ in N: padding to the largest would cost more)
    sizes = top.astype(np.int64)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    row = np.repeat(np.arange(len(idx)), sizes)
    b = (np.arange(int(ends[-1])) - (starts - 1)[row]).astype(float)
    steps = np.log((lam * t0)[row] / b + (lam * t1)[row])  # log of lambda tau(n) / n, the chain's step up
    # each row's own running sum, log p(n) / p(0): one cumsum over all rows, each row's steps centred on their mean
    # so the sum returns to about 0 at every row's end and its rounding does not grow from row to row
    mean = np.add.reduceat(steps, starts) / sizes
    log_p = np.cumsum(steps - mean[row])
    log_p += b * mean[row] - np.concatenate([[0.0], log_p[ends[:-1] - 1]])[row]
    shift = np.maximum(np.maximum.reduceat(log_p, starts), 0.0)
    head = np.exp(log_p - shift[row])  # p(n), n = 1..N, each row scaled by its largest
    idle = np.exp(-shift)  # p(0) on the same scale
    last = head[ends - 1]
    rho_m = rho**tail_len
    tail0 = last * rho * (1.0 - rho_m) / (1.0 - rho)  # the sum over j = 1..M of p(N) rho^j
    tail1 = last * rho * (1.0 - (tail_len + 1.0) * rho_m + tail_len * rho_m * rho) / (1.0 - rho) ** 2
    total = idle + np.add.reduceat(head, starts) + tail0
    in_service = (np.add.reduceat(head * b, starts) + top * tail0) / total
    in_system = in_service + tail1 / total
    block = np.where(tail_len > 0, last * rho_m, last) / total
    accepted = lam * (1.0 - block)
    fine = ~((queue[idx] >= 0) & (block >= BLOCKING_NEGLIGIBLE))
    ttft, itl, prefill = _latencies(laws, idx, t0, t1, top, accepted, in_system, in_service, idle / total)
    power = nan[idx]
    if draws:
        power = _draws(points, idx, row, b, head, total, idle / total, tail0, accepted * laws.prompt_ms[idx], starts,
                       ends - 1)
    for column, values in zip(out[:5], (in_system, ttft, itl, prefill, power), strict=True):
        column[idx] = np.where(fine, values, np.nan)
    covered[idx[~fine]] = False
    return out


def _latencies(laws: LawArrays, idx: NDArray[np.intp], t0: Floats, t1: Floats, top: Floats, accepted: Floats,
               in_system: Floats, in_service: Floats, idle: Floats) -> tuple[Floats, Floats, Floats]:
    """(mean TTFT, mean ITL, prefill) as queuemodels.operating_point reads them off a chain's means: the batch a
    request is served in from Little's law, its decode step, and the queueing wait before its prefill."""
    p0, p1, d0, d1, residual_share, residual_ms, wait_scale = (
        getattr(laws, f)[idx] for f in ("p0", "p1", "d0", "d1", "residual_share", "residual_ms", "wait_scale"))
    service = in_service / accepted
    wait = np.maximum(0.0, in_system / accepted - service)
    n_eff = np.where(t1 > 0.0, np.clip((service - t0) / np.where(t1 > 0.0, t1, 1.0), 0.0, top), 1.0)
    decode = d0 + d1 * n_eff
    residual = (1.0 - idle) * (residual_share * decode + residual_ms)
    prefill = p0 + p1 * n_eff
    return wait_scale * wait + prefill + residual, decode, prefill


def _draws(points: Points, idx: NDArray[np.intp], row: NDArray[np.int64], b: Floats, head: Floats, total: Floats,
           idle_share: Floats, tail0: Floats, prompt_load: Floats, starts: NDArray[np.int64],
           last: NDArray[np.int64]) -> Floats:
    """Mean draw of each covered point's occupancy (queuemodels.power.draws_w, each at its own cap, clock and
    profile; NaN without one): `head` holds states 1..N of the points `idx` end to end and `tail0` what the queue
    past each one's batch adds to its N, both over each one's `total`."""
    idle, peak, half, busy, knee, exponent = points.profile_fields(
        ("idle_power_w", "max_power_w", "batch_half", "busy_share", "knee_fraction", "clock_draw_exponent"), idx)
    shapes = [points.shapes[i] for i in idx.tolist()]
    limits = np.minimum([np.inf if s.power_cap_w is None else s.power_cap_w for s in shapes], peak)  # limit_w
    clocks = np.array([1.0 if s.sm_clock_fraction is None else s.sm_clock_fraction for s in shapes])
    scale = np.minimum(clocks, 1.0) ** exponent  # clock_draw_scale
    # queuemodels.power.natural_draw_w: idle + dynamic (busy + (1 - busy) scale B / (B + half)), per row's terms
    base_w, compute_w = idle + (peak - idle) * busy, (peak - idle) * (1.0 - busy) * scale
    step_w = np.minimum(base_w[row] + compute_w[row] * (b / (b + half[row])), limits[row])
    prompt_w = np.minimum(idle + (knee * peak - idle) * scale, limits)
    busy_share = 1.0 - idle_share
    phi = np.where(busy_share > 0.0, np.minimum(1.0, prompt_load / np.where(busy_share > 0.0, busy_share, 1.0)), 0.0)
    decode = (np.add.reduceat(step_w * head, starts) + tail0 * step_w[last]) / total
    out: Floats = idle * idle_share + (1.0 - phi) * decode + phi * prompt_w * busy_share
    return out
