"""Many operating points solved together: the two figures a plan values its candidates by.

The optimizer values each candidate (a shape and a replica count, so a rate per replica) by the mean number
of requests in a replica and its mean draw; solved one by one, each costs a chain and a draw curve built
through the interpreter, and a fleet has tens of thousands of candidates. For affine step laws (every law but
the step family's roofline) the chains of many points are solved at once: the states up to the batch, padded
to the largest batch, and the queue beyond it in closed form, since every state past the batch serves at the
full batch's rate (a truncated geometric tail). The figures are those `analyze` gives, to rounding; a point
the closed form does not cover (a roofline law, utilisation of the full batch within 1 % of 1, a bounded queue
that turns more than a negligible share away, no arrivals) is marked for the caller to solve on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from queuemodels.chain import MAX_STATES, TAIL_MASS
from queuemodels.clock import clock_draw_scale
from queuemodels.power import limit_w
from queuemodels.service_time import StepLaw
from queuemodels.types import PowerProfile, ServerShape

BLOCKING_NEGLIGIBLE = 1e-6
"""Blocking below which a bounded queue's law is kept at the offered rate (as the single-point path does)."""
RHO_COVERED = 0.99
"""Utilisation of the full batch up to which the tail's closed form is used (nearer 1 it loses digits)."""

Floats = NDArray[np.float64]


def mean_figures(laws: Sequence[StepLaw], shapes: Sequence[ServerShape], rates_rps: Sequence[float],
                 profile: PowerProfile | None) -> tuple[Floats, Floats, NDArray[np.bool_]]:
    """(mean in system, mean draw in W, covered) of each point; figures where `covered` is False are NaN."""
    k = len(laws)
    nan = np.full(k, np.nan)
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
    if not covered.any():
        return nan, nan.copy(), covered
    idx = np.flatnonzero(covered)
    t0, t1, lam, top, rho = t0[idx], t1[idx], lam[idx], top[idx], rho[idx]
    tail_len = capacity[idx] - top
    rows = idx.tolist()
    prompt = np.array([laws[i].prompt_ms for i in rows], dtype=float)
    # states 1..N of every row laid end to end (rows differ in N: padding to the largest would cost more)
    sizes = top.astype(np.int64)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    row = np.repeat(np.arange(len(rows)), sizes)
    b = (np.arange(int(ends[-1])) - starts[row] + 1).astype(float)
    log_p = np.cumsum(np.log(lam)[row] - np.log(b) + np.log(t0[row] + t1[row] * b))
    log_p -= np.concatenate([[0.0], log_p[ends[:-1] - 1]])[row]  # each row's own running sum: log p(n) / p(0)
    shift = np.maximum(np.maximum.reduceat(log_p, starts), 0.0)
    head = np.exp(log_p - shift[row])  # p(n), n = 1..N, each row scaled by its largest
    idle = np.exp(-shift)  # p(0) on the same scale
    last = head[ends - 1]
    rho_m = rho**tail_len
    tail0 = last * rho * (1.0 - rho_m) / (1.0 - rho)  # the sum over j = 1..M of p(N) rho^j
    tail1 = last * rho * (1.0 - (tail_len + 1.0) * rho_m + tail_len * rho_m * rho) / (1.0 - rho) ** 2
    total = idle + np.add.reduceat(head, starts) + tail0
    in_system = (np.add.reduceat(head * b, starts) + top * tail0 + tail1) / total
    block = np.where(tail_len > 0, last * rho_m, last) / total
    fine = ~((queue[idx] >= 0) & (block >= BLOCKING_NEGLIGIBLE))
    power = _draws(profile, [shapes[i] for i in rows], row, b, head / total[row], idle / total, tail0 / total,
                   lam * (1.0 - block) * prompt, starts, ends - 1)
    out_n, out_w = nan, nan.copy()
    out_n[idx], out_w[idx] = in_system, power
    covered[idx[~fine]] = False
    out_n[idx[~fine]] = out_w[idx[~fine]] = np.nan
    return out_n, out_w, covered


def _draws(profile: PowerProfile | None, shapes: list[ServerShape], row: NDArray[np.int64], b: Floats,
           share: Floats, idle_share: Floats, tail_share: Floats, prompt_load: Floats, starts: NDArray[np.int64],
           last: NDArray[np.int64]) -> Floats:
    """Mean draw of each row's occupancy (queuemodels.power.draws_w, each row at its own cap and clock): `share`
    holds states 1..N of the rows end to end, `tail_share` what the queue past each row's batch adds to its N."""
    if profile is None:
        return np.full(len(shapes), np.nan)
    limits = np.array([limit_w(profile, s.power_cap_w) for s in shapes])
    clocks = np.array([1.0 if s.sm_clock_fraction is None else s.sm_clock_fraction for s in shapes])
    busy = 1.0 - idle_share
    phi = np.where(busy > 0.0, np.minimum(1.0, prompt_load / np.where(busy > 0.0, busy, 1.0)), 0.0)
    scale = clock_draw_scale(profile, clocks)
    dynamic = profile.max_power_w - profile.idle_power_w
    compute = b / (b + profile.batch_half) * scale[row]
    natural = profile.idle_power_w + dynamic * (profile.busy_share + (1.0 - profile.busy_share) * compute)
    step_w = np.minimum(natural, limits[row])
    decode = np.add.reduceat(step_w * share, starts) + tail_share * step_w[last]
    knee = profile.knee_fraction * profile.max_power_w
    prompt_w = np.minimum(profile.idle_power_w + (knee - profile.idle_power_w) * scale, limits)
    out: Floats = profile.idle_power_w * idle_share + (1.0 - phi) * decode + phi * prompt_w * busy
    return out
