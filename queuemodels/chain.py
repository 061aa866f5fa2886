"""Stationary distribution of the state-dependent birth-death chain (M/M/1/K with batching).

State n = requests in the replica; service rate mu(n) = B / tau(B) with B = min(n, N).
Computed in log space, so K = 10,000 and heavy loads neither overflow nor underflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from queuemodels.service_time import StepLaw
from queuemodels.types import ModelInputError, Unstable

TAIL_MASS = 1e-12
BLOCKING_NEGLIGIBLE = 1e-6
"""Blocking below which a bounded queue's law is kept at the offered rate (the accepted rate differs by less)."""
MAX_STATES = 2_000_000


@dataclass(frozen=True)
class Stationary:
    """p[n] for n = 0..K, with the rates that produced it (per ms)."""

    p: NDArray[np.float64]
    max_batch: int
    rate_per_ms: float
    mu_full_per_ms: float

    @property
    def capacity(self) -> int:
        return len(self.p) - 1

    @property
    def batch(self) -> NDArray[np.float64]:
        out: NDArray[np.float64] = np.minimum(np.arange(len(self.p), dtype=float), float(self.max_batch))
        return out

    @cached_property
    def batch_share(self) -> NDArray[np.float64]:
        """Share of time with a batch of B running, B = 0 .. max batch (every waiting state runs a full one).
        Read-only, worked out once: the draw and the ITL tail both read it."""
        share = np.zeros(self.max_batch + 1)
        upto = min(self.max_batch, self.capacity)
        share[:upto] = self.p[:upto]
        share[upto] += np.add.reduce(self.p[upto:])
        share.flags.writeable = False
        return share


def unbounded_capacity(law: StepLaw, max_batch: int, rate_per_ms: float) -> int:
    """K at which an unbounded queue's geometric tail carries < TAIL_MASS; error if unstable."""
    mu_full = max_batch / float(law.tau(float(max_batch)))
    rho = rate_per_ms / mu_full
    if rho >= 1.0:
        raise Unstable(
            f"rate_rps: {rate_per_ms * 1000:.6g} has no stationary solution with an unbounded queue "
            f"(capacity {mu_full * 1000:.6g} rps at max_batch {max_batch}); lower it or bound max_queue"
        )
    if rho == 0.0:
        return max_batch
    extra = math.ceil(math.log(TAIL_MASS) / math.log(rho))
    if max_batch + extra > MAX_STATES:
        raise ModelInputError(f"rate_rps: utilisation {rho:.9f} is too close to 1 for an unbounded queue")
    return max_batch + extra


def stationary(law: StepLaw, max_batch: int, capacity: int, rate_per_ms: float) -> Stationary:
    """Solve p(n+1) = p(n) lambda / mu(n+1), normalised, for n = 0..capacity."""
    n = np.arange(1, capacity + 1, dtype=float)
    tau_full = float(law.tau(float(max_batch)))
    if min(float(law.tau(1.0)), tau_full) <= 0:  # tau is affine or convex in the batch
        raise ModelInputError("service time: parameters give a non-positive service time")
    mu_full = max_batch / tau_full
    p = np.zeros(capacity + 1)
    if rate_per_ms <= 0.0:
        p[0] = 1.0
        return Stationary(p, max_batch, 0.0, mu_full)
    served = min(capacity, max_batch)  # every state past the batch serves at the full batch's rate
    log_mu = _log_mu(law, served)
    if capacity > served:
        log_mu = np.concatenate([log_mu, np.full(capacity - served, log_mu[-1])])
    log_p = np.empty(capacity + 1)
    log_p[0] = 0.0
    log_p[1:] = n * math.log(rate_per_ms) - log_mu.cumsum()
    log_p -= np.maximum.reduce(log_p)
    p = np.exp(log_p)
    p /= np.add.reduce(p)
    return Stationary(p, max_batch, rate_per_ms, mu_full)


def _log_mu(law: StepLaw, served: int) -> NDArray[np.float64]:
    """log mu(n) for n = 1..served: a batch of n completes requests at n / tau(n)."""
    out: NDArray[np.float64] = np.log(np.arange(1, served + 1, dtype=float)) - np.log(law.at_batches(served).tau)
    return out


def full_probability(law: StepLaw, max_batch: int, capacity: int, rate_per_ms: float) -> float:
    """p[capacity] of `stationary`'s chain without building it: every state past the batch has the full batch's
    rate, so the block beyond it is geometric and sums in closed form (the accepted-rate bisection asks this
    a dozen times; on a queue of a million states each chain took 40 ms)."""
    if rate_per_ms <= 0.0 or capacity == 0:
        return 0.0 if capacity > 0 else 1.0
    served = min(capacity, max_batch)
    log_mu = _log_mu(law, served)
    log_p = np.empty(served + 1)
    log_p[0] = 0.0
    log_p[1:] = np.arange(1, served + 1) * math.log(rate_per_ms) - log_mu.cumsum()
    m = capacity - served  # states past the batch, each r = lambda / mu(N) times the one before
    g = math.log(rate_per_ms) - float(log_mu[-1])
    last = float(log_p[-1]) + m * g  # log p[capacity], unnormalised
    top = max(float(np.maximum.reduce(log_p)), last)
    head = float(np.add.reduce(np.exp(log_p - top)))
    if m == 0:
        return math.exp(last - top) / head
    # sum_{j=1..m} exp(log_p[served] + j g - top), as exp(x) (1 - exp(m g')) / (1 - exp(g')) from its largest term
    start, step = (float(log_p[-1]) + g, g) if g <= 0.0 else (last, -g)
    ratio = m if step == 0.0 else -math.expm1(m * step) / -math.expm1(step)
    tail = math.exp(start - top) * ratio
    return math.exp(last - top) / (head + tail)


@dataclass(frozen=True)
class Means:
    """Little's-law figures of a stationary chain (ms and per-ms rates)."""

    throughput_per_ms: float
    mean_in_system: float
    mean_batch: float
    block_probability: float
    response_ms: float
    service_ms: float
    wait_ms: float


def means(chain: Stationary) -> Means:
    p = chain.p
    states = np.arange(len(p), dtype=float)
    block = float(p[-1])
    x = chain.rate_per_ms * (1.0 - block)
    in_system = float(states @ p)
    in_service = float(chain.batch @ p)
    if x <= 0.0:
        return Means(0.0, 0.0, 0.0, block, 0.0, 0.0, 0.0)
    response = in_system / x
    service = in_service / x
    return Means(x, in_system, in_service, block, response, service, max(0.0, response - service))
