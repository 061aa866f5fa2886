"""Percentiles of TTFT from the chain's stationary distribution (ITL's: queuemodels/itl_tails.py).

TTFT: an accepted arrival sees state n with probability q(n) = p(n) / (1 - p(K)) (PASTA). With a free
slot (n < N) it is prefilled at once in a batch of n + 1; otherwise it waits for n - N + 1 departures at
rate mu(N), an Erlang time, after the step in flight, then prefills in a full batch. Above N the chain is geometric
(p(n) = p(N) rho^(n-N)), so the Erlang mixture has a closed-form survival function:
  sum_{k=1..M} rho^(k-1) Q(k, mu t) = [e^(-mu t (1-rho)) Q(M, mu t rho) - rho^M Q(M, mu t)] / (1 - rho)
with Q the regularised upper incomplete gamma. Quantiles come from one vectorised pass over a geometric grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from scipy.special import gammaincc

from queuemodels.chain import Stationary
from queuemodels.power import Batch
from queuemodels.service_time import StepLaw

GRID = 96
ERLANG_MAX = 16
GROUPS = 32
NEGLIGIBLE = 1e-9
UNIT = np.linspace(0.0, 1.0, GRID)
STEEP = 2.0
"""Fall of log survival across one grid bracket past which the bracket is searched on a finer grid."""
REFINE = 4
"""Finer grids a steep bracket is searched on at most, each a quarter of GRID across the bracket before (24^4 = 3.3e5
points across the first: a queue of up to a million waits at the analyser's bounds reads its p95 above its mean)."""
Survival = Callable[[NDArray[np.float64]], NDArray[np.float64]]


def _waiting_survival(chain: Stationary, q_first: float) -> Survival:
    """P(wait > t, arrival waits) for the geometric block of waiting states. Where the states past the
    queue's end would carry under 1e-12 (a stable load, a long or unbounded queue cut where its tail
    vanishes), the Erlang mixture is its infinite sum to that precision: M/M/1's exponential tail."""
    n_wait = chain.capacity - chain.max_batch
    mu = chain.mu_full_per_ms
    rho = chain.rate_per_ms / mu
    if abs(1.0 - rho) < 1e-7:
        rho = 1.0 - 1e-7
    if q_first <= 0.0 or rho <= 0.0:
        return lambda t: np.zeros(len(t))
    log_scale = math.log(q_first) - math.log(abs(1.0 - rho))
    sign = 1.0 if rho < 1.0 else -1.0
    if rho < 1.0 and log_scale + n_wait * math.log(rho) < math.log(1e-12):
        return lambda t: np.minimum(np.exp(log_scale - mu * (1.0 - rho) * np.maximum(t, 0.0)), 1.0)

    def survival(t: NDArray[np.float64]) -> NDArray[np.float64]:
        t = np.maximum(t, 0.0)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            first = np.exp(log_scale - mu * t * (1.0 - rho) + np.log(gammaincc(n_wait, mu * t * rho)))
            second = np.exp(log_scale + n_wait * math.log(rho) + np.log(gammaincc(n_wait, mu * t)))
        out: NDArray[np.float64] = np.minimum(np.maximum(sign * (first - second), 0.0), 1.0)
        out[np.isnan(out)] = 0.0
        return out

    return survival


def _overloaded_survival(mu: float, waiting_q: NDArray[np.float64], groups: int = 2 * GROUPS) -> Survival:
    """The waiting block when the load exceeds the capacity: its mass piles up at the queue's end, where the
    closed form subtracts two huge, nearly equal terms. Summed directly instead over the accepted arrivals'
    waiting states (state N + j waits for j + 1 departures, an Erlang), in at most `groups` runs of adjacent
    states, each at its mean number of departures; states under 1e-12 of the heaviest are left out."""
    live = np.flatnonzero(waiting_q > 1e-12 * waiting_q.max(initial=0.0))
    if len(live) == 0:
        return lambda t: np.zeros(len(t))
    span = slice(int(live[0]), int(live[-1]) + 1)
    departures = np.arange(1, len(waiting_q) + 1, dtype=float)[span]
    mass, shape = _grouped(waiting_q[span], groups, departures)[:2]

    def survival(t: NDArray[np.float64]) -> NDArray[np.float64]:
        out: NDArray[np.float64] = gammaincc(shape[None, :], mu * np.maximum(t, 0.0)[:, None]) @ mass
        return np.minimum(out, 1.0)

    return survival


@lru_cache(maxsize=512)
def runs(n: int, groups: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """The first state of each of min(groups, n) runs of adjacent states of equal width over n states, and each
    state's run. Read-only and cached: a chain's length recurs from one analysis to the next."""
    groups = min(groups, n)
    starts = (np.arange(groups) * n) // groups
    owner = np.repeat(np.arange(groups), np.diff(starts, append=n))
    starts.flags.writeable = owner.flags.writeable = False
    return starts, owner


def _grouped(q: NDArray[np.float64], groups: int, *columns: NDArray[np.float64]) -> list[NDArray[np.float64]]:
    """Mass and mass-weighted columns of at most `groups` runs of adjacent states of equal width. Neighbouring
    states differ little (times are affine in the state), so a mixture over groups is a mixture over states
    with far fewer terms; the variance of the first column inside each group is returned last."""
    starts = runs(len(q), groups)[0]
    weighted = np.empty((len(columns) + 2, len(q)))  # one reduceat over the rows: q, q c for each c, q c0^2
    weighted[0] = q
    np.multiply(q, columns, out=weighted[1:-1])
    np.multiply(weighted[1], columns[0], out=weighted[-1])
    sums = np.add.reduceat(weighted, starts, axis=1)
    mass = sums[0]
    keep = mass > 0
    every = bool(keep.all())
    moments = sums[1:] / (mass if every else np.where(keep, mass, 1.0))
    out = [mass, *moments[:-1], np.maximum(moments[-1] - moments[0] ** 2, 0.0)]
    return out if every else [a[keep] for a in out]


def _in_flight_variance(law: StepLaw, step: NDArray[np.float64], residual: NDArray[np.float64],
                        first_empty: bool) -> NDArray[np.float64]:
    """Variance of the wait for the step in flight (`step`: the decode step in each state; `first_empty`: the
    first state is the empty replica's, where nothing is in flight). That wait is uniform over the step, but
    the step is a plain decode step or, for the share phi of the time the GPU spends on prompts, one that
    carries a prompt, longer by the prompt's cost c (spread prompt_cv): a mixture whose second moment the
    prompt steps dominate, where a uniform wait over one mean step has the tail of the decode step alone (p95
    TTFT at 60 % load with long prompts read 25-40 % short). Never below that uniform wait's own variance,
    residual^2 / 3."""
    square = residual**2
    uniform = square / 3.0
    cost = law.prompt_ms
    if cost <= 0.0 or law.residual_share <= 0.0:
        return uniform
    phi = min(law.prompt_share, 0.99)
    spread2 = (law.prompt_cv * cost) ** 2
    long = step + cost
    three_long = 3.0 * long
    second = (1.0 - phi) * step**2 / 3.0 + phi * (long**3 + three_long * spread2) / three_long
    out: NDArray[np.float64] = np.maximum(second - square, uniform)
    if first_empty:
        out[0] = uniform[0]
    return out


def _free_survival(law: StepLaw, free_q: NDArray[np.float64], groups: int = GROUPS) -> Survival:
    """P(TTFT > t, arrival finds a free slot): prefill(n + 1) in state n, fixed under batched prefill.

    Under continuous batching the prompt's own cost (cv prompt_cv) and the wait for the step in flight
    (uniform over a step) vary: their sum is taken as an Erlang variable with its mean and about its
    variance (the shape rounded, at most ERLANG_MAX), on top of the fixed part of the step. States an
    arrival almost never sees are left out, and the rest merged into at most `groups` groups."""
    table = law.at_batches(len(free_q))  # state n admits an arrival into a batch of n + 1
    free_t = table.prefill
    if law.prompt_ms <= 0 and law.residual_share <= 0:
        # Mass whose prefill time exceeds t (prefill is increasing in n).
        tail_mass = np.concatenate([np.cumsum(free_q[::-1])[::-1], [0.0]])
        return lambda t: np.asarray(tail_mass[np.searchsorted(free_t, t, side="right")], dtype=float)
    live = np.flatnonzero(free_q > 1e-12 * free_q.max())  # free_q holds a state at least
    if len(live) == 0:  # every arrival waits (an overloaded bounded queue)
        return lambda t: np.zeros(len(t))
    first, end = int(live[0]), int(live[-1]) + 1
    # the step in flight in state n is the decode step of n (the empty replica's, n = 0, has none in flight)
    decode = table.decode
    step = decode[first - 1:end - 1] if first > 0 else np.concatenate([decode[:1], decode[:end - 1]])
    residual = law.residual_share * step + law.residual_ms
    if first == 0:
        residual[0] = 0.0
    spread = law.prompt_ms + law.budget_wait_ms + residual
    variance = ((law.prompt_cv * law.prompt_ms) ** 2 + law.budget_wait_var
                + _in_flight_variance(law, step, residual, first == 0))
    mean_t = free_t[first:end] - law.prompt_ms - law.budget_wait_ms + spread
    q = free_q[first:end]
    if len(q) > groups:
        q, mean_t, spread, variance, location_var = _grouped(q, groups, mean_t, spread, variance)
        variance = variance + location_var
    shape = np.maximum(np.rint(np.minimum(spread**2 / np.maximum(variance, 1e-300), ERLANG_MAX)), 1.0)
    point = spread <= 0.0  # nothing varies (no prompt cost, no step in flight): the time is its mean exactly
    points = bool(point.any())
    scale = ((np.where(point, 1.0, spread) if points else spread) / shape)[None, :]
    fixed_t = (mean_t - spread)[None, :]
    orders = np.arange(1.0, np.maximum.reduce(shape, initial=1.0))[:, None]
    more_terms = (shape > orders) / orders  # row j - 1: 1 / j where a group's Erlang has a term x^j / j!

    def survival(t: NDArray[np.float64]) -> NDArray[np.float64]:
        over = t[:, None] - fixed_t
        np.maximum(over, 0.0, out=over)
        over /= scale
        tail = np.exp(-over)
        if len(more_terms):  # Erlang survival: e^-x sum_{j < k} x^j / j!
            term = over * more_terms[0]
            total = term + 1.0
            for step in more_terms[1:]:
                term *= over * step
                total += term
            tail *= total
        if points:
            tail[:, point] = t[:, None] < fixed_t[:, point]
        return np.asarray(tail @ q, dtype=float)

    return survival


class StepTimes(Protocol[Batch]):
    """A law's step times, one (StepLaw) or per row (step_arrays.LawArrays)."""

    @property
    def residual_share(self) -> Batch: ...
    @property
    def residual_ms(self) -> Batch: ...
    def decode(self, b: Batch, /) -> Batch: ...
    def prefill(self, b: Batch, /) -> Batch: ...


def waiting_start_ms(law: StepTimes[Batch], full: Batch) -> Batch:
    """The part of a waiting arrival's TTFT besides the wait for departures: the step in flight as the mean TTFT
    charges it (its decode step's residual share and length-biased excess) and a prefill in a full batch. Left out,
    a queue its own prompts saturate (steps long, most arrivals waiting) read its p95 at 0.70 of its mean."""
    out: Batch = law.residual_share * law.decode(full) + law.residual_ms + law.prefill(full)
    return out


def ttft_survival(chain: Stationary, law: StepLaw, groups: int = GROUPS) -> tuple[Survival, float]:
    """Survival function of TTFT (ms) for accepted arrivals, and the probability of waiting. A waiting
    mass below NEGLIGIBLE is left out: the survival is read at 1e-2 and above."""
    p = chain.p
    accepted = p[:-1] / max(1e-300, 1.0 - p[-1])
    n_free = min(chain.max_batch, chain.capacity)
    free_survival = _free_survival(law, accepted[:n_free], groups)
    waiting_mass = float(np.add.reduce(accepted[n_free:]))
    if waiting_mass < NEGLIGIBLE:
        return free_survival, waiting_mass
    start = waiting_start_ms(law, float(chain.max_batch))
    if chain.rate_per_ms > chain.mu_full_per_ms:
        waiting = _overloaded_survival(chain.mu_full_per_ms, accepted[n_free:])
    else:
        waiting = _waiting_survival(chain, float(accepted[n_free]))

    def survival(t: NDArray[np.float64]) -> NDArray[np.float64]:
        shifted = (t - start) / law.wait_scale
        wait: NDArray[np.float64] = np.where(shifted <= 0, waiting_mass, waiting(shifted))
        return free_survival(t) + wait

    return survival, waiting_mass


def quantiles(survival: Survival, low: float, high: float, probs: Sequence[float]) -> list[float]:
    """t with survival(t) = 1 - prob for each prob, from one vectorised pass over a geometric grid
    (dense near `low`, where steep survival curves fall), interpolating log survival between points."""
    levels = [math.log(1.0 - q) for q in probs]
    low = max(low, 1e-6 * high)
    for _ in range(60):
        grid = low * (high / low) ** UNIT
        log_s = _log(survival(grid))
        if log_s[-1] <= min(levels):
            break
        high = low + 2.0 * (high - low)
    out: list[float] = []
    for level, j in zip(levels, _firsts(log_s, levels), strict=True):
        at, at_log = grid, log_s
        t = _between(at, at_log, level, j)
        for _ in range(REFINE):
            if not at_log[j] < at_log[j - 1] - STEEP:
                break
            # A narrow distribution far from zero (an overloaded queue's wait) falls within one bracket, where
            # interpolating its log survival linearly would put the percentile below the mean: read it finer, and
            # finer again where it still falls within one (a million-long queue's wait fell within one of 24 points)
            at = np.linspace(at[j - 1], at[j], GRID // 4)
            at_log = _log(survival(at))
            j = _firsts(at_log, [level])[0]
            t = _between(at, at_log, level, j)
        out.append(t)
    return out


def _firsts(log_s: NDArray[np.float64], levels: Sequence[float]) -> list[int]:
    """Per level, the first point at or below it (log survival falls along the grid), within 1..len - 1 so a
    bracket [j - 1, j] exists: one search for all levels."""
    found = np.searchsorted(-log_s, -np.asarray(levels), side="left")
    return np.minimum(np.maximum(found, 1), len(log_s) - 1).tolist()  # type: ignore[no-any-return]


def _log(s: NDArray[np.float64]) -> NDArray[np.float64]:
    """log s, -inf where s is 0 (without numpy's warning machinery, which costs more than the log); NaN stays NaN."""
    out: NDArray[np.float64] = np.log(s, out=np.full(len(s), -np.inf), where=~(s <= 0.0))
    return out


def _between(grid: NDArray[np.float64], log_s: NDArray[np.float64], level: float, j: int) -> float:
    """Where log survival falls to `level` between grid points j - 1 and j, interpolated."""
    s0, s1 = float(log_s[j - 1]), float(log_s[j])
    g0, g1 = float(grid[j - 1]), float(grid[j])
    frac = min(max((s0 - level) / (s0 - s1), 0.0), 1.0) if s0 > s1 else 0.0
    return g0 + frac * (g1 - g0)


def ttft_quantiles(
    chain: Stationary, law: StepLaw, wait_ms: float, probs: Sequence[float], groups: int = GROUPS
) -> list[float]:
    survival, waiting_mass = ttft_survival(chain, law, groups)
    low = law.prefill(1.0) - law.prompt_ms - law.budget_wait_ms
    mean_wait = law.wait_scale * wait_ms / waiting_mass if waiting_mass > 1e-15 else 0.0
    high = (waiting_start_ms(law, float(chain.max_batch)) + 10.0 * mean_wait + 5.0 / chain.mu_full_per_ms
            + 5.0 * law.prompt_ms)
    return quantiles(survival, low, max(high, low * 1.01 + 1e-9), probs)


def ttft_exceedance(chain: Stationary, law: StepLaw, t_ms: float) -> float:
    """P(TTFT > t_ms) for accepted arrivals: one survival evaluation instead of a quantile search."""
    survival, _ = ttft_survival(chain, law)
    return float(survival(np.array([t_ms]))[0])
