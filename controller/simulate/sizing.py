"""The static fleet: what a careful operator without wattscale deploys, sized for the scenario's peak.

They load-test one replica of each service on their own hardware (the same hidden engine the scenario runs,
at the config's max batch, full power), find the highest rate at which it meets the SLO as the report scores it
(ATTAINMENT of the requests meeting both targets, accounting.request_met: each request its own for a mean target,
each window's quantile for a percentile one), and deploy ceil(peak / that) replicas, priority 1 first while GPUs
last. This is the baselines' fleet: a stronger one than a rule of thumb, so that wattscale is compared with the
best of its kind. (Sized on a mean TTFT and ITL at the peak, heavy-tail's chat replica left 15 % of its requests
over their targets.)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from controller.service_settings import ServiceSettings
from controller.simulate.accounting import request_met
from controller.simulate.plant import peak_rps, token_mix
from controller.simulate.scenario import Scenario
from simulator.personality import chosen_for
from simulator.probe import Replica
from simulator.requests import Finished, RequestLog
from simulator.workload import TokenSampler

log = logging.getLogger(__name__)

PROBE_REQUESTS = 800
"""Requests of one load test at least ..."""
PROBE_S = 3600.0
"""... and as many as arrive in the scenario's duration, up to this long. A percentile target is scored per window,
and a rate that met it in the ten windows of a 600-s test missed it in some of an hour's: sized on 600 s, code
(p95) took one replica at 5.4 rps for its 5.0 at the peak and met its targets in 0.982 of tight-budget's requests;
on an hour, 4.4 rps, two replicas."""
WARMUP = 0.15
"""Share of a test's first requests left out of its score: the engine filling from empty."""
ATTAINMENT = 0.99
"""Share of the load test's requests that must meet the targets: what the report asks of `wattscale` wherever
`static` reaches it."""
DRAIN_S = 300.0
"""How long after the last arrival the load test waits for the requests in flight (any left count as misses)."""
BISECTIONS = 6
"""Halvings of the rate bracket once a failing rate is found (to within 1/64 of it)."""
SHORT_PROBE_S = 600.0
"""The tests the bisection runs: ten of the report's windows ..."""
STEP = 1.0 / 32.0
"""... and the share of that answer the rate is lowered by until a test of PROBE_S meets the targets too."""


@lru_cache(maxsize=256)
def capacity_rps(replica: Replica, prompts: TokenSampler, outputs: TokenSampler, max_batch: int, ttft_ms: float,
                 itl_ms: float, statistic: str, probe_s: float = PROBE_S, peak_rps: float = 1024.0) -> float:
    """Highest rate (requests/s) up to `peak_rps` one replica serves within the targets over `probe_s` of load:
    found by doubling then bisection on tests of SHORT_PROBE_S at most, then lowered in steps of STEP until a test of
    `probe_s` meets them too (a long test only near the answer: an hour's at every bisection took tight-budget's
    sizing 91 s). A replica that serves the peak needs no higher rate tested (a light service's hour at 1,024 rps
    held 3.7 million requests)."""

    def meets(rate: float, seconds: float) -> bool:
        return attainment(replica, rate, prompts, outputs, max_batch, ttft_ms, itl_ms, statistic,
                          seconds) >= ATTAINMENT

    short = min(probe_s, SHORT_PROBE_S)
    ceiling = min(peak_rps, 1024.0)
    low, high = 0.0, min(0.5, ceiling)
    while meets(high, short):
        low = high
        if high >= ceiling:
            break
        high = min(2 * high, ceiling)
    else:
        for _ in range(BISECTIONS):
            mid = 0.5 * (low + high)
            low, high = (mid, high) if meets(mid, short) else (low, mid)
    rate = low
    while probe_s > short and rate > STEP * low and not meets(rate, probe_s):
        rate -= STEP * low
    return rate


@dataclass(frozen=True)
class _Targets:
    """What `request_met` reads of a service: the load test's targets."""

    ttft_ms: float
    itl_ms: float
    statistic: str


def attainment(replica: Replica, rate: float, prompts: TokenSampler, outputs: TokenSampler, max_batch: int,
               ttft_ms: float, itl_ms: float, statistic: str, probe_s: float = PROBE_S) -> float:
    """Share of one load test's requests (Poisson at `rate` for `probe_s`, after the warm-up) that met the targets,
    as the report scores them."""
    rng = np.random.default_rng(1)
    log = RequestLog()
    engine = replica.engine(max_batch, None, rng, requests=log)
    n = max(PROBE_REQUESTS, math.ceil(rate * probe_s))
    times = np.cumsum(rng.exponential(1.0 / rate, n))
    for t, a, b in zip(times, prompts.draw(rng, n), outputs.draw(rng, n), strict=True):
        engine.submit(float(t), int(a), int(b))
    end = float(times[-1])
    engine.advance_to(end)
    while engine.outstanding and engine.now_s < end + DRAIN_S:
        engine.advance_to(engine.now_s + 5.0)
    start = float(times[int(WARMUP * n)])
    fin = log.finished()
    kept = fin.arrival_s >= start
    shifted = Finished(fin.arrival_s[kept] - start, fin.ttft_s[kept], fin.itl_s[kept], fin.e2e_s[kept],
                       fin.out_tokens[kept], fin.in_tokens[kept])
    svc = _Targets(ttft_ms, itl_ms, statistic)
    arrived, met = request_met(svc, times[times >= start] - start, shifted, end - start + 1e-9)
    return float(met.sum() / arrived.sum())


def replica_for(scn: Scenario, svc: ServiceSettings, gpu_type: str, seed: int) -> Replica:
    """A probe replica of the service's model on `gpu_type`, with the engine personality and power law the scenario
    gives it."""
    sim = scn.config.simulator
    name = chosen_for(sim.personalities, svc.model, gpu_type) or "roofline"
    return Replica(svc.model, gpu_type, seed, personality=name, power_law=sim.power_laws.get(gpu_type, "dynamic"))


def _needed(scn: Scenario, svc: ServiceSettings, gpu_type: str, seed: int, unmet: set[str]) -> int:
    w = scn.workload(svc.name)
    prompts, outputs = token_mix(w, svc.in_tokens, svc.out_tokens)
    peak = peak_rps(w, scn.settings.duration_s)
    if peak <= 0.0:  # no load: its minimum
        return 0
    cap = capacity_rps(replica_for(scn, svc, gpu_type, seed), prompts, outputs,
                       svc.initial_max_batch, svc.ttft_ms, svc.itl_ms, svc.statistic,
                       min(PROBE_S, scn.settings.duration_s), peak)
    if cap > 0:
        return math.ceil(peak / cap)
    log.warning("%s: no rate met its SLO on one %s replica in the load test (%s TTFT %g ms, ITL %g ms): the "
                "baselines' fleet asks its max_replicas, %d, as far as the GPUs go", svc.name, gpu_type, svc.statistic,
                svc.ttft_ms, svc.itl_ms, svc.max_replicas)
    unmet.add(svc.name)
    return svc.max_replicas


def static_fleet(scn: Scenario, seed: int, unmet: set[str] | None = None) -> dict[str, dict[str, int]]:
    """Replicas per service per GPU type: each service's minimum (at least one) first, in priority order, then
    each up to its need for the peak, on its variants' GPU types in the order the config lists them. A service no
    rate of whose load test met its SLO gets its max_replicas, and its name goes into `unmet` (it had been sized so
    without a word)."""
    unmet = set() if unmet is None else unmet
    free = {t: scn.gpu_types.count(t) for t in scn.gpu_types}
    fleet: dict[str, dict[str, int]] = {}
    services = sorted(scn.config.services, key=lambda s: s.priority)

    def add(svc: ServiceSettings, target: int) -> None:
        mine = fleet.setdefault(svc.name, {})
        for v in scn.config.variants_of(svc):
            have = sum(mine.values())
            if have >= target:
                return
            take = min(free.get(v.accelerator, 0), target - have)
            if take > 0:
                mine[v.accelerator] = mine.get(v.accelerator, 0) + take
                free[v.accelerator] -= take

    for svc in services:
        add(svc, max(1, svc.min_replicas))
    for svc in services:
        first = scn.config.variants_of(svc)[0].accelerator
        add(svc, min(svc.max_replicas, max(1, svc.min_replicas, _needed(scn, svc, first, seed, unmet))))
    return fleet
