"""One operating point of a replica: chain, Little's-law means, tails and power in one pass."""

from __future__ import annotations

import math
from contextlib import suppress
from dataclasses import replace

import numpy as np

from queuemodels.chain import Means, Stationary, full_probability, means, stationary, unbounded_capacity
from queuemodels.itl_tails import itl_exceedance, itl_quantiles
from queuemodels.power import Occupancy, mean_draw_w
from queuemodels.service_time import StepLaw
from queuemodels.tails import ttft_exceedance, ttft_quantiles
from queuemodels.targets import Performance, Targets
from queuemodels.types import ModelInputError, PowerProfile, ServerShape

PROBS = (0.95, 0.99)
BLOCK_LIMIT = 1e-3
"""Most of its requests a replica serving a load may turn away (its queue full) and still count as serving it: a
queue of 0 (a client that drops) at batch 8 met its latency targets at a rate it turned 17 % of away, and a plan
sized on it left that share unserved, unsaid."""


def solve_chain(law: StepLaw, shape: ServerShape, rate_rps: float) -> Stationary:
    """The chain up to K = N + Q; a long queue under a stable load stops where the unbounded chain's tail
    mass falls below 1e-12 (the states beyond carry nothing and cost time)."""
    return stationary(law, shape.max_batch, _capacity(law, shape, rate_rps / 1000.0), rate_rps / 1000.0)


def blocking(law: StepLaw, shape: ServerShape, rate_rps: float) -> float:
    """P(full) of `solve_chain`'s chain, in closed form (chain.full_probability)."""
    return full_probability(law, shape.max_batch, _capacity(law, shape, rate_rps / 1000.0), rate_rps / 1000.0)


SLOWED_STEPS = 80
"""Halvings of the bracket `slowed_to` takes at most (in log space, from a doubling search): 1e-6 relative."""


def slowed_to(law: StepLaw, shape: ServerShape, rate_rps: float, served_rps: float) -> StepLaw:
    """`law` slowed by the factor at which the chain at `rate_rps` serves `served_rps`. Where the arrivals' own
    prompts (or a token budget's room) bound what the GPU completes, a law exists only below that bound, and the
    chain of the bound's law, whose batch could complete more, served past it at the offered rate (4.7 rps where
    prompts alone allow 2.5): slowed until it serves the bound, its throughput and blocking are one saturated
    queue's; its latencies are a full batch of very long steps (docs/queue-models.md, "Overload")."""

    def served(k: float) -> float:
        return rate_rps * (1.0 - blocking(law.scaled(k, k), shape, rate_rps))

    low, high = 1.0, 2.0
    while served(high) > served_rps and high < 1e12:
        low, high = high, 2.0 * high
    for _ in range(SLOWED_STEPS):
        if high <= low * (1.0 + 1e-6):
            break
        mid = math.sqrt(low * high)
        low, high = (mid, high) if served(mid) > served_rps else (low, mid)
    return law.scaled(high, high)


def _capacity(law: StepLaw, shape: ServerShape, rate_per_ms: float) -> int:
    mu_full = shape.max_batch / float(law.tau(float(shape.max_batch)))
    if shape.max_queue is None:
        return unbounded_capacity(law, shape.max_batch, rate_per_ms)
    capacity = shape.max_batch + shape.max_queue
    if rate_per_ms < mu_full and capacity > 4 * shape.max_batch:
        with suppress(ModelInputError):  # too near saturation to cut: the bounded queue whole, as it is
            capacity = min(capacity, unbounded_capacity(law, shape.max_batch, rate_per_ms))
    return capacity


def occupancy(law: StepLaw, chain: Stationary, rate_rps: float) -> Occupancy:
    """Share of time at each batch size, and of busy time on prompts (phi = lambda c_p of all time)."""
    share = chain.batch_share
    busy = 1.0 - float(share[0])
    phi = rate_rps * law.prompt_ms / 1000.0
    return Occupancy(share, np.asarray(min(1.0, phi / busy) if busy > 0 else 0.0))


def _mean_latencies(law: StepLaw, chain: Stationary, m: Means) -> tuple[float, float, float]:
    """(effective batch, mean TTFT, mean ITL): the batch a request is served in, from Little's law. A request waits
    out the step in flight where it finds one: the busy share an accepted arrival sees, p(0) / (1 - P(full)) idle
    (the time-average busy share charged a full queue's turned-away load too: with no queue at batch 1, where every
    accepted request finds the GPU idle, the mean TTFT rose with the load above its own p95)."""
    n_eff = 1.0 if m.throughput_per_ms <= 0.0 else law.batch_at(m.service_ms, float(chain.max_batch))
    idle_seen = min(1.0, float(chain.p[0]) / (1.0 - m.block_probability)) if m.block_probability < 1.0 else 1.0
    residual = (1.0 - idle_seen) * (law.residual_share * law.decode(n_eff) + law.residual_ms)
    return n_eff, law.wait_scale * m.wait_ms + law.prefill(n_eff) + residual, law.decode(n_eff)


def bounded_wait(law: StepLaw, shape: ServerShape, m: Means) -> StepLaw:
    """`law` with its wait no longer than a bounded queue holds: (1 + cv^2) / 2 lengthens an open queue's wait
    (Kingman), but at most `max_queue` requests wait, so the mean wait is at most max_queue / throughput (Little)
    whatever the spread (at eight times its saturation an output cv of 10 read 50 times that: a trial)."""
    if shape.max_queue is None or law.wait_scale <= 1.0 or m.wait_ms <= 0.0 or m.throughput_per_ms <= 0.0:
        return law
    most_ms = shape.max_queue / m.throughput_per_ms
    if law.wait_scale * m.wait_ms <= most_ms:
        return law
    return replace(law, wait_scale=max(1.0, most_ms / m.wait_ms))


def meets(law: StepLaw, shape: ServerShape, rate_rps: float, targets: Targets) -> bool:
    """Targets met at this rate, turning at most BLOCK_LIMIT of it away. A percentile target is checked where it is
    set (P(latency > target) <= 1 - q), one survival evaluation per metric, rather than by searching for the
    percentile."""
    chain = solve_chain(law, shape, rate_rps)
    m = means(chain)
    if m.block_probability > BLOCK_LIMIT:
        return False
    law = bounded_wait(law, shape, m)
    ttft_ms, itl_ms, allowed = targets.limits()
    if targets.statistic == "mean":
        _, ttft, itl = _mean_latencies(law, chain, m)
        return ttft <= ttft_ms and itl <= itl_ms
    return (itl_exceedance(chain, law, m.throughput_per_ms, itl_ms) <= allowed
            and ttft_exceedance(chain, law, ttft_ms) <= allowed)


def evaluate(law: StepLaw, chain: Stationary, shape: ServerShape, profile: PowerProfile | None,
             tails: bool = True) -> Performance:
    """All figures of one operating point, `chain` the law's solved chain; `tails=False` skips the percentiles
    (NaN) for speed."""
    m = means(chain)
    law = bounded_wait(law, shape, m)
    n_eff, ttft, itl = _mean_latencies(law, chain, m)
    nan = float("nan")
    ttft_p95 = ttft_p99 = itl_p95 = itl_p99 = nan
    if tails:
        ttft_p95, ttft_p99 = ttft_quantiles(chain, law, m.wait_ms, PROBS)
        itl_p95, itl_p99 = itl_quantiles(chain, law, m.throughput_per_ms, PROBS)
    accepted_rps = m.throughput_per_ms * 1000.0
    busy = occupancy(law, chain, accepted_rps)
    power = mean_draw_w(profile, busy, shape.power_cap_w, shape.sm_clock_fraction) if profile else nan
    return Performance(
        ttft_ms=ttft,
        itl_ms=itl,
        ttft_p95_ms=ttft_p95,
        itl_p95_ms=itl_p95,
        ttft_p99_ms=ttft_p99,
        itl_p99_ms=itl_p99,
        throughput_rps=m.throughput_per_ms * 1000.0,
        mean_batch=m.mean_batch,
        mean_in_system=m.mean_in_system,
        utilization=min(1.0, m.throughput_per_ms / chain.mu_full_per_ms),
        block_probability=m.block_probability,
        power_w=power,
        extra={"n_eff": n_eff, "wait_ms": law.wait_scale * m.wait_ms, "service_ms": m.service_ms,
               "prefill_ms": float(law.prefill(n_eff))},
    )
