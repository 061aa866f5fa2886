"""Many operating points solved together: the means a plan values its candidates by and a fit its windows.

The optimizer values each candidate (a shape and a replica count, so a rate per replica) by the mean number
of requests in a replica and its mean draw, sizing checks mean targets, and the tuner's fits predict mean TTFT
and ITL at every window many times over; solved one by one, each point costs a chain and a draw curve built
through the interpreter, and a fleet has tens of thousands of candidates. Here the chains of many points are
solved at once, whatever their step law (affine, or the step family's roofline, whose tau grows with the
batch): the states up to each point's batch laid end to end, and the queue beyond it in closed form, since
every state past the batch serves at the full batch's rate (a truncated geometric tail). The figures are those
`analyze` gives, to rounding; a point the closed form does not cover (utilisation of the full batch within 1 %
of 1, a bounded queue that turns more than a negligible share away, no arrivals) is marked for the caller to
solve on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from queuemodels.chain import BLOCKING_NEGLIGIBLE, MAX_STATES, TAIL_MASS
from queuemodels.law_arrays import ManyLawFn, Points, laws_of
from queuemodels.service_time import LawFn, StepLaw
from queuemodels.stacked_itl import itl_exceedances
from queuemodels.stacked_tails import Chains, ttft_exceedances
from queuemodels.step_arrays import Bools, Floats, LawArrays
from queuemodels.types import ModelInputError

Limits = tuple[Floats, Floats]
"""TTFT and ITL limits (ms) per point, for the shares of requests and tokens over them (a NaN TTFT: not asked)."""
HEAD_MASS = 1e-17
"""Share of a chain's mass the states left out of a light point's span may hold: below a float's resolution."""
BLOCK_STATES = 1 << 17
"""States solved in one block (a few MB an array): a fleet's candidates hold tens of millions."""
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
    ttft_over: Floats
    """P(TTFT > the point's limit), where limits were asked (queuemodels.stacked_tails)."""
    itl_over: Floats
    """P(ITL > the point's limit), likewise."""


def solve_together(law_fn: LawFn, many: ManyLawFn | None, points: Points, draws: bool = True,
                   limits: Limits | None = None) -> tuple[dict[int, StepLaw], Bools, Figures]:
    """The points' laws at their offered rates, built as arrays by `many` where it can and by `law_fn` one by
    one otherwise (those returned, by point), which points have one (a rate the model cannot take has none),
    and their figures solved together; `draws=False` leaves the draw NaN (a latency check needs none); `limits`
    (TTFT and ITL ms per point) asks for the shares of requests and tokens over them."""
    tops = points.tops()
    laws, has = laws_of(many, points, tops)
    built = {}
    for i in np.flatnonzero(~has & np.isnan(laws.p0)).tolist():  # rows with no array form (inf: no law at all)
        params, load, shape, profile = points.point(i)
        try:
            built[i] = law_fn(params, load, profile, shape)
        except ModelInputError:
            continue
        laws.put(i, built[i])
        has[i] = True
    return built, has, mean_figures(laws, has, points, tops, draws, limits)


def mean_figures(laws: LawArrays, has: Bools, points: Points, tops: Floats, draws: bool = True,
                 limits: Limits | None = None) -> Figures:
    """The means of `analyze(..., tails=False)` at each point with a law (`has`), at its KV-bound batch `tops`,
    the draw at its base's profile, and the exceedances of `limits` where given."""
    k = len(tops)
    queue = points.queues
    top, lam = tops, points.rates_rps / 1000.0
    full = laws.tau(top)
    positive = has & (np.minimum(laws.tau(np.ones(k)), full) > 0.0) & (lam > 0.0)
    rho = np.where(positive, lam * full / np.where(positive, top, 1.0), 1.0)
    light = positive & (rho < RHO_COVERED)
    # K as queuemodels.operating_point.solve_chain sets it: where the unbounded tail's mass falls below TAIL_MASS,
    # or the bounded queue's end if that comes first or the queue is short
    tail = top + np.ceil(math.log(TAIL_MASS) / np.log(np.where(light, rho, 0.5)))
    short = (queue >= 0) & (top + queue <= 4 * top)
    capacity = np.where(queue < 0, tail, np.where(short, top + queue, np.minimum(top + queue, tail)))
    covered = light & (short | (tail <= MAX_STATES))
    nan = np.full(k, np.nan)
    out = Figures(nan, nan.copy(), nan.copy(), nan.copy(), nan.copy(), covered, nan.copy(), nan.copy())
    if not covered.any():
        return out
    covered_idx = np.flatnonzero(covered)
    # an affine tau(n) = t0 + t1 n; a roofline's is that plus a bend and chunks that grow with n, so below the
    # batch it is at most t0 + t1 n plus what they add at the batch: the same bound with t0 raised by that
    t1 = laws.t1
    t0 = np.where(laws.affine, laws.t0, full - t1 * top)
    span = np.zeros(k)
    span[covered_idx] = _span((lam * t0)[covered_idx], (lam * t1)[covered_idx], top[covered_idx])
    ends = np.cumsum(span[covered_idx])  # a block of states at a time: a fleet's are many times the caches
    moments = np.full((4, k), np.nan)
    for idx in np.split(covered_idx, np.searchsorted(ends, np.arange(BLOCK_STATES, ends[-1], BLOCK_STATES))):
        _solve_block(out, moments, laws, points, idx, lam[idx], top[idx], span[idx], rho[idx],
                     capacity[idx] - top[idx], queue[idx], draws, limits)
    done = np.flatnonzero(out.covered)  # the latencies of every block's rows at once: fewer, longer array passes
    out.ttft_ms[done], out.itl_ms[done], out.prefill_ms[done] = _latencies(laws.rows(done), top[done],
                                                                           *moments[:, done])
    return out


def _span(lam_t0: Floats, lam_t1: Floats, top: Floats) -> Floats:
    """The states 1..span of each point that carry all but HEAD_MASS of its chain (its max batch, or fewer where
    the load is light for it). Past n, p(n + 1) / p(n) = lambda tau(n + 1) / (n + 1) = x + c / (n + 1) with
    x = lambda t1 < 1 (a covered point's) and c = lambda t0: it falls to r < 1 from n = c / (r - x), and from there
    on every step is r-fold or less, so what lies k steps further is below the largest p times r^k / (1 - r). The
    best of a few r."""
    best = top.copy()
    for share in (0.2, 0.4, 0.6, 0.8):
        r = lam_t1 + (1.0 - lam_t1) * share
        best = np.minimum(best, np.ceil(lam_t0 / (r - lam_t1)) + np.ceil(np.log(HEAD_MASS * (1.0 - r)) / np.log(r)))
    out: Floats = np.maximum(best, 1.0)
    return out


def _solve_block(out: Figures, moments: Floats, laws: LawArrays, points: Points, idx: NDArray[np.intp], lam: Floats,
                 top: Floats, span: Floats, rho: Floats, tail_len: Floats, queue: Floats, draws: bool,
                 limits: Limits | None) -> None:
    """The covered points `idx`'s figures into `out` (those blocking more than a negligible share uncovered) but
    their latencies, and into `moments` what those are read from (mean service and wait, the idle share an accepted
    arrival sees, the wait's scale within what a bounded queue holds); the states past a point's span and its queue
    carry nothing (HEAD_MASS) where the span ends short of its batch."""
    # states 1..span of every row laid end to end (rows differ in length: padding to the longest would cost more);
    # a row's value at each of its states by np.repeat, several times faster than indexing by row
    sizes = span.astype(np.int64)
    ends = np.cumsum(sizes)
    starts = ends - sizes

    def per_state(x: Floats) -> Floats:
        out: Floats = np.repeat(x, sizes)
        return out

    b = np.arange(float(ends[-1])) - np.repeat(starts - 1.0, sizes)
    rows = laws.rows(idx)
    steps = np.log(per_state(lam) * rows.chain_taus(b, sizes, points.base[idx]) / b)  # the chain's step up
    # each row's own running sum, log p(n) / p(0): one cumsum over all rows, each row's steps centred on their mean
    # so the sum returns to about 0 at every row's end and its rounding does not grow from row to row
    mean = np.add.reduceat(steps, starts) / sizes
    log_p = np.cumsum(steps - per_state(mean))
    log_p += b * per_state(mean) - per_state(np.concatenate([[0.0], log_p[ends[:-1] - 1]]))
    shift = np.maximum(np.maximum.reduceat(log_p, starts), 0.0)
    head = np.exp(log_p - per_state(shift))  # p(n), n = 1..N, each row scaled by its largest
    idle = np.exp(-shift)  # p(0) on the same scale
    last = np.where(span < top, 0.0, head[ends - 1])
    rho_m = rho**tail_len
    tail0 = last * rho * (1.0 - rho_m) / (1.0 - rho)  # the sum over j = 1..M of p(N) rho^j
    tail1 = last * rho * (1.0 - (tail_len + 1.0) * rho_m + tail_len * rho_m * rho) / (1.0 - rho) ** 2
    total = idle + np.add.reduceat(head, starts) + tail0
    in_service = (np.add.reduceat(head * b, starts) + top * tail0) / total
    in_system = in_service + tail1 / total
    block = np.where(tail_len > 0, last * rho_m, last) / total
    accepted = lam * (1.0 - block)
    fine = ~((queue >= 0) & (block >= BLOCKING_NEGLIGIBLE))
    service = in_service / accepted
    wait = np.maximum(0.0, in_system / accepted - service)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # operating_point.bounded_wait's scale
        most = np.where(queue >= 0, queue / accepted / wait, np.inf)
    scale = np.where(wait > 0.0, np.minimum(rows.wait_scale, np.maximum(1.0, most)), rows.wait_scale)
    moments[:, idx] = service, wait, idle / total / (1.0 - block), scale
    power = np.full(len(idx), np.nan)
    if draws:
        power = _draws(points, idx, per_state, b, head, total, idle / total, tail0, accepted * laws.prompt_ms[idx],
                       starts, ends - 1)
    out.in_system[idx], out.power_w[idx] = np.where(fine, in_system, np.nan), np.where(fine, power, np.nan)
    out.covered[idx[~fine]] = False
    if limits is not None and (asked := ~np.isnan(limits[0][idx]) & fine).any():  # rows under a percentile target
        states, sizes = np.repeat(asked, sizes), sizes[asked]
        asked_laws = rows.rows(np.flatnonzero(asked))._replace(wait_scale=scale[asked])
        chains = Chains(asked_laws, np.repeat(np.arange(len(sizes)), sizes), b[states], head[states],
                        np.cumsum(sizes) - sizes, *(v[asked] for v in (idle, total, last, tail0, top, rho, tail_len,
                                                                        lam, block)))
        out.ttft_over[idx[asked]] = ttft_exceedances(chains, limits[0][idx[asked]])
        out.itl_over[idx[asked]] = itl_exceedances(chains, limits[1][idx[asked]])


def _latencies(laws: LawArrays, top: Floats, service: Floats, wait: Floats, idle: Floats,
               wait_scale: Floats) -> tuple[Floats, Floats, Floats]:
    """(mean TTFT, mean ITL, prefill) as queuemodels.operating_point reads them off a chain's means (service and
    wait per request, the idle share an accepted arrival sees): the batch a request is served in from Little's
    law, its decode step, and the queueing wait before its prefill."""
    n_eff = laws.batch_at(service, top)
    decode = laws.decode(n_eff)
    residual = (1.0 - idle) * (laws.residual_share * decode + laws.residual_ms)
    prefill = laws.prefill(n_eff)
    return wait_scale * wait + prefill + residual, decode, prefill


def _draws(points: Points, idx: NDArray[np.intp], per_state: Callable[[Floats], Floats], b: Floats, head: Floats,
           total: Floats, idle_share: Floats, tail0: Floats, prompt_load: Floats, starts: NDArray[np.int64],
           last: NDArray[np.int64]) -> Floats:
    """Mean draw of each covered point's occupancy (queuemodels.power.draws_w, each at its own cap, clock and
    profile; NaN without one): `head` holds states 1..N of the points `idx` end to end and `tail0` what the queue
    past each one's batch adds to its N, both over each one's `total`."""
    idle, peak, half, busy, knee, exponent = points.profile_fields(
        ("idle_power_w", "max_power_w", "batch_half", "busy_share", "knee_fraction", "clock_draw_exponent"), idx)
    limits = np.minimum(np.nan_to_num(points.caps[idx], nan=np.inf), peak)  # limit_w
    scale = np.minimum(np.nan_to_num(points.clocks[idx], nan=1.0), 1.0) ** exponent  # clock_draw_scale
    # queuemodels.power.natural_draw_w: idle + dynamic (busy + (1 - busy) scale B / (B + half)), per row's terms
    base_w, compute_w = idle + (peak - idle) * busy, (peak - idle) * (1.0 - busy) * scale
    step_w = np.minimum(per_state(base_w) + per_state(compute_w) * (b / (b + per_state(half))), per_state(limits))
    prompt_w = np.minimum(idle + (knee * peak - idle) * scale, limits)
    busy_share = 1.0 - idle_share
    phi = np.where(busy_share > 0.0, np.minimum(1.0, prompt_load / np.where(busy_share > 0.0, busy_share, 1.0)), 0.0)
    decode = (np.add.reduceat(step_w * head, starts) + tail0 * step_w[last]) / total
    out: Floats = idle * idle_share + (1.0 - phi) * decode + phi * prompt_w * busy_share
    return out
