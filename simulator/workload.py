"""Request arrivals: Poisson with a rate that may follow a trace or a daily cycle, and token counts."""

from __future__ import annotations

import csv
import math
from bisect import bisect_left
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

RateFn = Callable[[float], float]
PEAK_PROBES = 9
"""Points of a block where the rate is read for the thinning bound (a rate that climbs above it between
them makes the block redrawn at a higher bound)."""


class TokenSampler(Hashable, Protocol):
    """Draws `n` token counts (a prompt or an output length each); hashable, so a load test of it is cached."""

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray: ...


CONTEXT_TOKENS = 32768
"""Longest prompt or output a simulated engine holds: draws past it are clipped, as a context window clips them."""


@dataclass(frozen=True)
class TokenDist:
    """Log-normal token counts with a mean and a coefficient of variation, clipped to [1, max]."""

    mean: float
    cv: float = 0.5
    maximum: int = CONTEXT_TOKENS

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.cv <= 0:
            return np.full(n, max(1, round(self.mean)), dtype=np.int64)
        sigma2 = math.log1p(self.cv**2)
        mu = math.log(self.mean) - sigma2 / 2
        values = rng.lognormal(mu, math.sqrt(sigma2), n)
        return np.minimum(np.maximum(np.rint(values), 1), self.maximum).astype(np.int64)


def constant(rate_rps: float) -> RateFn:
    return lambda _t: rate_rps


def daily_cycle(mean_rps: float, amplitude: float, period_s: float = 86400.0, phase_s: float = 0.0) -> RateFn:
    """mean * (1 + amplitude sin(2 pi (t - phase) / period)), never negative."""
    return lambda t: max(0.0, mean_rps * (1 + amplitude * math.sin(2 * math.pi * (t - phase_s) / period_s)))


def trace(path: Path, loop: bool = True) -> RateFn:
    """Piecewise-constant rate from a CSV with columns `time_s,rate_rps` (sorted by time)."""
    times: list[float] = []
    rates: list[float] = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            times.append(float(row["time_s"]))
            rates.append(float(row["rate_rps"]))
    if not times:
        raise ValueError(f"{path}: trace has no rows")
    t_arr, r_arr = np.array(times), np.array(rates)
    span = t_arr[-1] + (t_arr[-1] - t_arr[-2] if len(t_arr) > 1 else 1.0)

    def rate(t: float) -> float:
        if loop:
            t = t % span
        return float(r_arr[max(0, int(np.searchsorted(t_arr, t, side="right")) - 1)])

    return rate


class Workload:
    """Arrivals of one service; `take(t0, t1)` returns those in [t0, t1) in time order.

    Arrivals are drawn a block ahead (`block_s` of simulated time in one set of vectorised draws, by
    thinning a Poisson process at a bound of the rate) and handed out slice by slice: the host takes
    them every 50 ms, and drawing that often cost more than the engines' steps."""

    def __init__(
        self, rate: RateFn, tokens_in: TokenSampler, tokens_out: TokenSampler, rng: np.random.Generator,
        block_s: float = 2.0,
    ) -> None:
        self.rate = rate
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
        self.rng = rng
        self.block_s = block_s
        self._start = self._end = 0.0
        self._times: list[float] = []
        self._n_in: list[int] = []
        self._n_out: list[int] = []
        self._next = 0
        """The first arrival not handed out yet (the lists keep a block's: slicing a list is cheaper than
        trimming arrays every 50 ms)."""

    def take(self, t0: float, t1: float) -> list[tuple[float, int, int]]:
        if t1 <= t0:
            return []
        if not self._start <= t0 <= self._end:
            self._start = self._end = t0
            self._times, self._n_in, self._n_out, self._next = [], [], [], 0
        if self._end < t1:
            self._extend(max(t1, self._end + self.block_s))
        lo = bisect_left(self._times, t0, self._next)
        hi = bisect_left(self._times, t1, lo)
        out = list(zip(self._times[lo:hi], self._n_in[lo:hi], self._n_out[lo:hi], strict=True))
        self._next = hi
        self._start = t1
        return out

    def _extend(self, end: float) -> None:
        """Draw the arrivals of [self._end, end) and append them."""
        t0 = self._end
        peak = max(self.rate(float(t)) for t in np.linspace(t0, end, PEAK_PROBES))
        times = np.zeros(0)
        if peak > 0:
            bound = peak * 1.25
            while True:
                n = self.rng.poisson(bound * (end - t0))
                times = np.sort(self.rng.uniform(t0, end, n))
                rates = np.array([self.rate(float(t)) for t in times])
                if not len(rates) or rates.max() <= bound:
                    break
                bound = 1.5 * float(rates.max())  # the rate rose above the bound inside the block: redraw
            times = times[self.rng.random(len(times)) * bound < rates]
        n_in = self.tokens_in.draw(self.rng, len(times))
        n_out = self.tokens_out.draw(self.rng, len(times))
        keep = self._next
        self._times = self._times[keep:] + times.tolist()
        self._n_in = self._n_in[keep:] + n_in.tolist()
        self._n_out = self._n_out[keep:] + n_out.tolist()
        self._next = 0
        self._end = end
