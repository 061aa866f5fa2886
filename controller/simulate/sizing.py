"""The static fleet: what a careful operator without wattscale deploys, sized for the scenario's peak.

They load-test one replica of each service on their own hardware (the same hidden engine the scenario runs,
at the config's max batch, full power), find the highest rate at which it meets the SLO, and deploy
ceil(peak / that) replicas, priority 1 first while GPUs last. This is the baselines' fleet: a stronger one
than a rule of thumb, so that wattscale is compared with the best of its kind.
"""

from __future__ import annotations

import math
from functools import lru_cache

from controller.service_settings import ServiceSettings
from controller.simulate.plant import peak_rps, token_mix
from controller.simulate.scenario import Scenario
from simulator.personality import chosen_for
from simulator.probe import Replica, measure
from simulator.workload import TokenSampler

PROBE_REQUESTS = 800
"""Requests of one load test (the first 15 % are warm-up)."""
BISECTIONS = 6
"""Halvings of the rate bracket once a failing rate is found (to within 1/64 of it)."""


@lru_cache(maxsize=256)
def capacity_rps(replica: Replica, prompts: TokenSampler, outputs: TokenSampler, max_batch: int, ttft_ms: float,
                 itl_ms: float, statistic: str) -> float:
    """Highest rate (requests/s) one replica serves within the targets, by doubling then bisection."""

    def meets(rate: float) -> bool:
        m = measure(replica, rate, prompts, outputs, max_batch, requests=PROBE_REQUESTS, seed=1)
        if statistic == "mean":
            return m.ttft_ms <= ttft_ms and m.itl_ms <= itl_ms
        return m.ttft_p95_ms <= ttft_ms and m.itl_p95_ms <= itl_ms

    low, high = 0.0, 0.5
    while meets(high) and high < 1024:
        low, high = high, 2 * high
    for _ in range(BISECTIONS):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if meets(mid) else (low, mid)
    return low


def replica_for(scn: Scenario, svc: ServiceSettings, gpu_type: str, seed: int) -> Replica:
    """A probe replica of the service's model on `gpu_type`, with the engine personality the scenario gives it."""
    name = chosen_for(scn.config.simulator.personalities, svc.model, gpu_type) or "roofline"
    return Replica(svc.model, gpu_type, seed, personality=name)


def _needed(scn: Scenario, svc: ServiceSettings, gpu_type: str, seed: int) -> int:
    w = scn.workload(svc.name)
    prompts, outputs = token_mix(w, svc.in_tokens, svc.out_tokens)
    cap = capacity_rps(replica_for(scn, svc, gpu_type, seed), prompts, outputs,
                       svc.initial_max_batch, svc.ttft_ms, svc.itl_ms, svc.statistic)
    peak = peak_rps(w, scn.settings.duration_s)
    return svc.max_replicas if cap <= 0 else math.ceil(peak / cap)


def static_fleet(scn: Scenario, seed: int) -> dict[str, dict[str, int]]:
    """Replicas per service per GPU type: each service's minimum (at least one) first, in priority order, then
    each up to its need for the peak, on its variants' GPU types in the order the config lists them."""
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
        add(svc, min(svc.max_replicas, max(1, svc.min_replicas, _needed(scn, svc, first, seed))))
    return fleet
