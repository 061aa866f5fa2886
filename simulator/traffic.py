"""Scenario traffic beyond a smooth cycle: bursts on top of a rate, and a heavy-tailed prompt mix.

Production LLM traffic is neither Poisson at a smooth rate nor log-normal in length: a launch or a batch
job multiplies the rate for minutes, and a few prompts (whole documents, long chat histories) are tens of
times the median. Both are ground truth the controller must survive, not model.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simulator.workload import CONTEXT_TOKENS, RateFn, TokenDist


@dataclass(frozen=True)
class Burst:
    """The rate times `factor` over [start_s, start_s + duration_s)."""

    start_s: float
    duration_s: float
    factor: float


def burst_steps(bursts: Sequence[Burst]) -> tuple[list[float], list[float]]:
    """The bursts as a step function: its edges (every start and end, sorted) and the factor in force from each edge
    to the next (overlapping bursts multiply; 1 before the first edge), so that reading it costs a search, not a
    pass over every burst (40,000 bursts took a scenario's load quadratic time)."""
    starts: dict[float, list[float]] = {}
    ends: dict[float, list[float]] = {}
    for b in bursts:
        starts.setdefault(b.start_s, []).append(b.factor)
        ends.setdefault(b.start_s + b.duration_s, []).append(b.factor)
    active: Counter[float] = Counter()
    edges = sorted(starts.keys() | ends.keys())
    factors = []
    for t in edges:
        active.subtract(ends.get(t, ()))
        active.update(starts.get(t, ()))
        live = [f for f, n in active.items() for _ in range(n)]
        factors.append(0.0 if 0.0 in live else math.prod(live))  # inf past a float (f**n raised), never 0 x inf
    return edges, factors


def with_bursts(rate: RateFn, bursts: Sequence[Burst]) -> RateFn:
    """`rate` multiplied by every burst in force at t (overlapping bursts multiply)."""
    if not bursts:
        return rate
    edges, factors = burst_steps(bursts)

    def bursty(t: float) -> float:
        k = bisect.bisect_right(edges, t) - 1
        base = rate(t)
        return base * factors[k] if k >= 0 and base else base  # a rate of 0 stays 0 under any burst

    return bursty


def diurnal(mean_rps: float, amplitude: float, period_s: float, phase_s: float = 0.0) -> RateFn:
    """A day compressed into `period_s`: lowest at t = phase, highest half a period later (a night, then a
    working day), mean * (1 - amplitude cos(2 pi (t - phase) / period))."""
    return lambda t: max(0.0, mean_rps * (1 - amplitude * math.cos(2 * math.pi * (t - phase_s) / period_s)))


@dataclass(frozen=True)
class HeavyTail:
    """A log-normal body with a Pareto tail: a share `tail_share` of draws is `tail_min * U^(-1/alpha)`
    (alpha <= 2: infinite variance), clipped to `maximum` as a context window clips prompts."""

    body: TokenDist
    tail_share: float
    tail_min: float
    alpha: float
    maximum: int = CONTEXT_TOKENS

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        values = self.body.draw(rng, n)
        tail = rng.random(n) < self.tail_share
        k = int(tail.sum())
        if k:
            pareto = self.tail_min * (1.0 - rng.random(k)) ** (-1.0 / self.alpha)  # in (0, 1]: finite
            values[tail] = np.minimum(np.rint(pareto), self.maximum).astype(np.int64)
        clipped: np.ndarray = np.minimum(values, self.maximum)
        return clipped
