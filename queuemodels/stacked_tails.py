"""Percentile targets of many stacked chains at once: P(TTFT > t) as queuemodels.tails reads it (P(ITL > t):
queuemodels.stacked_itl).

Sizing a service with a p95 or p99 target asks, per candidate share of its load, whether the share of requests
over each target is within 1 - q. One by one that is a chain and two survival functions built through the
interpreter (~0.25 ms); a fleet asks it hundreds of times a cycle. Here the chains queuemodels.stacked has laid
end to end are read for both exceedances in a few array passes: the same mixtures as queuemodels.tails (the
free slots' Erlang mixture over at most GROUPS runs of states, the waiting block's closed form, the
token-weighted ITL of queuemodels.itl_tails), equal to them to rounding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray
from scipy.special import gammaincc

from queuemodels.step_arrays import Floats, LawArrays
from queuemodels.tails import ERLANG_MAX, GROUPS, NEGLIGIBLE, waiting_start_ms

Ints = NDArray[np.int64]


class Chains(NamedTuple):
    """Covered points' chains as queuemodels.stacked solves them: states 1..span of each row end to end (`head`,
    p(n) scaled per row, at state `b`), p(0) (`idle`) and the geometric queue past the batch in closed form, all
    over each row's `total`."""

    laws: LawArrays
    """The rows' laws (already taken at the rows)."""
    row: Ints
    b: Floats
    head: Floats
    starts: Ints
    idle: Floats
    total: Floats
    last: Floats
    """p(N) on the rows' scale (0 where the span ends short of the batch)."""
    tail0: Floats
    """What the queue past the batch adds to p(N)'s state, over the rows' scale."""
    top: Floats
    rho: Floats
    tail_len: Floats
    """Waiting places past the batch (K - N)."""
    lam: Floats
    """Offered rate per ms."""
    block: Floats


def ttft_exceedances(c: Chains, ttft_ms: Floats) -> Floats:
    """P(TTFT > ttft_ms) per row for accepted arrivals (tails.ttft_exceedance): a free slot's prefill, or the wait
    for the step in flight and departures at the full batch's rate, then a prefill in a full batch."""
    laws = c.laws
    accepted = c.total * (1.0 - c.block)
    free = _free_exceedance(c, ttft_ms, accepted)
    waiting_states = c.last * np.where(c.tail_len > 0, (1.0 - c.rho**c.tail_len) / (1.0 - c.rho), 0.0)
    waiting_mass = waiting_states / accepted
    waits = waiting_mass >= NEGLIGIBLE
    shifted = (ttft_ms - waiting_start_ms(laws, c.top)) / laws.wait_scale
    mu = c.top / laws.tau(c.top)
    wait = np.where(shifted <= 0.0, waiting_mass, 0.0)
    later = np.flatnonzero(waits & (shifted > 0.0))
    if len(later):
        wait[later] = _waiting_survival(c.last[later] / accepted[later], c.rho[later], mu[later],
                                        c.tail_len[later], shifted[later])
    out: Floats = free + np.where(waits, wait, 0.0)
    return out


def _waiting_survival(q_first: Floats, rho: Floats, mu: Floats, n_wait: Floats, t: Floats) -> Floats:
    """tails._waiting_survival at one time per row (a stable load: rho < 1)."""
    log_scale = np.log(q_first) - np.log(1.0 - rho)
    short = log_scale + n_wait * np.log(rho) < math.log(1e-12)  # the queue's end carries nothing: M/M/1's tail
    out: Floats = np.minimum(np.exp(log_scale - mu * (1.0 - rho) * t), 1.0)
    long = np.flatnonzero(~short)
    if len(long):
        ls, r, m, k, s = log_scale[long], rho[long], mu[long], n_wait[long], t[long]
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            first = np.exp(ls - m * s * (1.0 - r) + np.log(gammaincc(k, m * s * r)))
            second = np.exp(ls + k * np.log(r) + np.log(gammaincc(k, m * s)))
        both = np.minimum(np.maximum(first - second, 0.0), 1.0)
        out[long] = np.where(np.isnan(both), 0.0, both)
    return out


def _free_states(c: Chains, accepted: Floats) -> tuple[Ints, Floats, Floats, Ints]:
    """States 0..N-1 of each row (an arrival that finds a free slot): their row, state and q(n), end to end, and
    where each row's start."""
    sizes = np.minimum(np.diff(np.append(c.starts, len(c.b))), c.top - 1.0).astype(np.int64) + 1
    starts = np.cumsum(sizes) - sizes
    row = np.repeat(np.arange(len(sizes)), sizes)
    n = np.arange(int(sizes.sum())) - starts[row]
    q = np.where(n == 0, c.idle[row], c.head[np.maximum(c.starts[row] + n - 1, 0)]) / accepted[row]
    return row, n.astype(float), q, starts


def _free_exceedance(c: Chains, t_ms: Floats, accepted: Floats) -> Floats:
    """P(TTFT > t, the arrival finds a free slot) per row (tails._free_survival)."""
    laws = c.laws
    row, n, q, starts = _free_states(c, accepted)
    rows = len(c.top)
    fixed_law = (laws.prompt_ms <= 0.0) & (laws.residual_share <= 0.0)
    prefill_at = laws.prefill(n + 1.0, lambda x: x[row])
    out: Floats = np.bincount(row, q * (fixed_law[row] & (prefill_at > t_ms[row])), minlength=rows).astype(float)
    # the rest: states with more than 1e-12 of the row's heaviest, from its first such to its last
    live = q > 1e-12 * np.maximum.reduceat(q, starts)[row]
    first = np.minimum.reduceat(np.where(live, n, np.inf), starts)
    last = np.maximum.reduceat(np.where(live, n, -np.inf), starts)
    keep = ~fixed_law[row] & (n >= first[row]) & (n <= last[row])
    row, n, q, prefill_at = row[keep], n[keep], q[keep], prefill_at[keep]
    if not len(row):
        return out
    cost, cv, share, residual_ms, phi, budget_wait, budget_var = (getattr(laws, f)[row] for f in (
        "prompt_ms", "prompt_cv", "residual_share", "residual_ms", "prompt_share", "budget_wait_ms", "budget_wait_var"))
    step = laws.decode(np.maximum(n, 1.0), lambda x: x[row])
    residual = (n > 0) * (share * step + residual_ms)
    spread = cost + budget_wait + residual
    variance = ((cv * cost) ** 2 + budget_var
                + _in_flight_variance(n, step, residual, cost, share, phi, cv))
    mean_t = prefill_at - cost - budget_wait + spread
    group, grouped = _groups(row, rows)
    mass = np.bincount(group, q)
    weight = np.where(mass > 0.0, mass, 1.0)
    g_mean, g_spread, g_var, second = (np.bincount(group, q * x) / weight for x in (mean_t, spread, variance,
                                                                                    mean_t**2))
    g_var = g_var + np.where(grouped, np.maximum(second - g_mean**2, 0.0), 0.0)
    g_row = np.zeros(len(mass), dtype=np.int64)
    g_row[group] = row
    held = mass > 0.0
    g_row, mass, g_mean, g_spread, g_var = g_row[held], mass[held], g_mean[held], g_spread[held], g_var[held]
    shape = np.maximum(np.rint(np.minimum(g_spread**2 / np.maximum(g_var, 1e-300), ERLANG_MAX)), 1.0)
    point = g_spread <= 0.0
    fixed = g_mean - g_spread
    t = t_ms[g_row]
    x = np.maximum(t - fixed, 0.0) / (np.where(point, 1.0, g_spread) / shape)
    term = np.ones_like(x)
    total = term.copy()
    for j in range(1, int(shape.max(initial=1.0))):  # Erlang survival: e^-x sum_{j < k} x^j / j!
        term = term * x / j
        total += np.where(shape > j, term, 0.0)
    tail = np.where(point, t < fixed, np.exp(-x) * total)
    out += np.bincount(g_row, mass * tail, minlength=rows)
    return out


def _groups(row: Ints, rows: int) -> tuple[Ints, NDArray[np.bool_]]:
    """Each state's group (tails._grouped): a row of more than GROUPS states in GROUPS runs of equal width, one
    state a group otherwise; and whether its row was grouped, by group."""
    counts = np.bincount(row, minlength=rows)
    starts = np.cumsum(counts) - counts
    i = np.arange(len(row)) - starts[row]
    length = counts[row]
    grouped = length > GROUPS
    # state i of L lies in the last run g whose start (g L) // GROUPS is at most i
    within = np.where(grouped, ((i + 1) * GROUPS + length - 1) // np.maximum(length, 1) - 1, i)
    width = np.minimum(counts, GROUPS)
    group = (np.cumsum(width) - width)[row] + within
    return group, np.bincount(group, grouped) > 0


def _in_flight_variance(n: Floats, step: Floats, residual: Floats, cost: Floats, share: Floats,
                        prompt_share: Floats, cv: Floats) -> Floats:
    """tails._in_flight_variance per state: the wait for the step in flight when some steps carry a prompt."""
    uniform = residual**2 / 3.0
    phi = np.minimum(prompt_share, 0.99)
    long = step + cost
    second = (1.0 - phi) * step**2 / 3.0 + phi * (long**3 + 3.0 * long * (cv * cost) ** 2) / (3.0 * long)
    mixed = (cost > 0.0) & (share > 0.0) & (n > 0)
    out: Floats = np.where(mixed, np.maximum(second - residual**2, uniform), uniform)
    return out
