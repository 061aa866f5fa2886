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
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from queuemodels.chain import BLOCKING_NEGLIGIBLE, MAX_STATES, TAIL_MASS
from queuemodels.clock import clock_draw_scale
from queuemodels.power import limit_w
from queuemodels.service_time import LawFn, StepLaw
from queuemodels.types import ModelInputError, Point, PowerProfile, ServerShape

RHO_COVERED = 0.99
"""Utilisation of the full batch up to which the tail's closed form is used (nearer 1 it loses digits)."""

Floats = NDArray[np.float64]


class Figures(NamedTuple):
    """Each point's means (NaN where `covered` is False: the caller solves those alone)."""

    in_system: Floats
    ttft_ms: Floats
    itl_ms: Floats
    prefill_ms: Floats
    """The prompt's own steps at the batch it joins: TTFT less the queueing."""
    power_w: Floats
    covered: NDArray[np.bool_]


def solve_together(law_fn: LawFn, points: Sequence[Point], draws: bool = True) -> tuple[list[int], list[StepLaw],
                                                                                        Figures]:
    """The points the model has a law for (their indices, and their laws at the offered rate: a rate it cannot
    take has none) and those laws' figures solved together, in the same order; `draws=False` leaves the draw NaN
    (a latency check needs none)."""
    rows, laws = [], []
    for i, (params, load, shape, profile) in enumerate(points):
        try:
            laws.append(law_fn(params, load, profile, shape))
        except ModelInputError:
            continue
        rows.append(i)
    return rows, laws, mean_figures(laws, [points[i][2] for i in rows], [points[i][1].rate_rps for i in rows],
                                    [points[i][3] if draws else None for i in rows])


def mean_figures(laws: Sequence[StepLaw], shapes: Sequence[ServerShape], rates_rps: Sequence[float],
                 profiles: Sequence[PowerProfile | None]) -> Figures:
    """The means of `analyze(..., tails=False)` at each (law, shape, rate), the draw at each point's profile."""
    k = len(laws)
    affine = np.array([law.roofline is None for law in laws], dtype=bool)
    t0 = np.array([law.t0 for law in laws], dtype=float)
    t1 = np.array([law.t1 for law in laws], dtype=float)
    top = np.array([s.max_batch for s in shapes], dtype=float)
    queue = np.array([-1 if s.max_queue is None else s.max_queue for s in shapes], dtype=float)
    lam = np.asarray(rates_rps, dtype=float) / 1000.0
    full = t0 + t1 * top
    positive = (np.minimum(t0 + t1, full) > 0.0) & (lam > 0.0)
    rho = np.where(positive, lam * full / np.where(positive, top, 1.0), 1.0)
    light = positive & (rho < RHO_COVERED)
    # K as queuemodels.operating_point.solve_chain sets it: where the unbounded tail's mass falls below TAIL_MASS,
    # or the bounded queue's end if that comes first or the queue is short
    tail = top + np.ceil(math.log(TAIL_MASS) / np.log(np.where(light, rho, 0.5)))
    short = (queue >= 0) & (top + queue <= 4 * top)
    capacity = np.where(queue < 0, tail, np.where(short, top + queue, np.minimum(top + queue, tail)))
    covered = affine & light & (short | (tail <= MAX_STATES))
    nan = np.full(k, np.nan)
    out = Figures(nan, nan.copy(), nan.copy(), nan.copy(), nan.copy(), covered)
    if not covered.any():
        return out
    idx = np.flatnonzero(covered)
    t0, t1, lam, top, rho = t0[idx], t1[idx], lam[idx], top[idx], rho[idx]
    tail_len = capacity[idx] - top
    rows = idx.tolist()
    # states 1..N of every row laid end to end (rows differ in N: padding to the largest would cost more)
    sizes = top.astype(np.int64)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    row = np.repeat(np.arange(len(rows)), sizes)
    b = (np.arange(int(ends[-1])) - starts[row] + 1).astype(float)
    steps = np.log(lam)[row] - np.log(b) + np.log(t0[row] + t1[row] * b)
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
    ttft, itl, prefill = _latencies([laws[i] for i in rows], t0, t1, top, accepted, in_system, in_service, idle / total)
    prompt = np.array([laws[i].prompt_ms for i in rows], dtype=float)
    power = _draws([profiles[i] for i in rows], [shapes[i] for i in rows], row, b, head / total[row],
                   idle / total, tail0 / total, accepted * prompt, starts, ends - 1)
    for column, values in zip(out[:5], (in_system, ttft, itl, prefill, power), strict=True):
        column[idx] = np.where(fine, values, np.nan)
    covered[idx[~fine]] = False
    return out


def _latencies(laws: list[StepLaw], t0: Floats, t1: Floats, top: Floats, accepted: Floats, in_system: Floats,
               in_service: Floats, idle: Floats) -> tuple[Floats, Floats, Floats]:
    """(mean TTFT, mean ITL, prefill) as queuemodels.operating_point reads them off a chain's means: the batch a
    request is served in from Little's law, its decode step, and the queueing wait before its prefill."""
    p0, p1, d0, d1, residual_share, residual_ms, wait_scale = (
        np.array([getattr(law, f) for law in laws], dtype=float)
        for f in ("p0", "p1", "d0", "d1", "residual_share", "residual_ms", "wait_scale"))
    service = in_service / accepted
    wait = np.maximum(0.0, in_system / accepted - service)
    n_eff = np.where(t1 > 0.0, np.clip((service - t0) / np.where(t1 > 0.0, t1, 1.0), 0.0, top), 1.0)
    decode = d0 + d1 * n_eff
    residual = (1.0 - idle) * (residual_share * decode + residual_ms)
    prefill = p0 + p1 * n_eff
    return wait_scale * wait + prefill + residual, decode, prefill


def _draws(profiles: list[PowerProfile | None], shapes: list[ServerShape], row: NDArray[np.int64], b: Floats,
           share: Floats, idle_share: Floats, tail_share: Floats, prompt_load: Floats, starts: NDArray[np.int64],
           last: NDArray[np.int64]) -> Floats:
    """Mean draw of each row's occupancy (queuemodels.power.draws_w, each row at its own cap, clock and profile;
    NaN without one): `share` holds states 1..N of the rows end to end, `tail_share` what the queue past each
    row's batch adds to its N."""
    n = len(shapes)
    groups: dict[PowerProfile, list[int]] = {}
    for i, profile in enumerate(profiles):
        if profile is not None:
            groups.setdefault(profile, []).append(i)  # equal profiles one group, however many copies
    clocks = np.array([1.0 if s.sm_clock_fraction is None else s.sm_clock_fraction for s in shapes])
    idle_w, prompt_w, limits = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    step_w = np.full(len(b), np.nan)
    for profile, members in groups.items():
        mine = np.array(members)
        limits[mine] = [limit_w(profile, shapes[i].power_cap_w) for i in members]
        scale = np.zeros(n)
        scale[mine] = clock_draw_scale(profile, clocks[mine])
        flat = slice(None) if len(members) == n else np.isin(row, mine)  # mostly one profile for all
        compute = b[flat] / (b[flat] + profile.batch_half) * scale[row[flat]]
        dynamic = profile.max_power_w - profile.idle_power_w
        natural = profile.idle_power_w + dynamic * (profile.busy_share + (1.0 - profile.busy_share) * compute)
        step_w[flat] = np.minimum(natural, limits[row[flat]])
        knee = profile.knee_fraction * profile.max_power_w
        prompt_w[mine] = np.minimum(profile.idle_power_w + (knee - profile.idle_power_w) * scale[mine], limits[mine])
        idle_w[mine] = profile.idle_power_w
    busy = 1.0 - idle_share
    phi = np.where(busy > 0.0, np.minimum(1.0, prompt_load / np.where(busy > 0.0, busy, 1.0)), 0.0)
    decode = np.add.reduceat(step_w * share, starts) + tail_share * step_w[last]
    out: Floats = idle_w * idle_share + (1.0 - phi) * decode + phi * prompt_w * busy
    return out
