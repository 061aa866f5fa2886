"""The emulator runs behind benchmarks/clock_gain.py and clock_frontier.py: the services and their loads, one
replica's steady window (`run`), the tuner's fit from windows at several loads, batches and clocks (`learn`), the
optimizer's plan on that fit (`plan`), and a plan scored on the emulator (`score`). Nothing here reads the plant's
hidden law back into the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from controller.optimizer import AcceleratorType, Assignment, Problem, ServiceDemand, get_solver, solve
from queuemodels import DEFAULT_MAX_QUEUE, Load, Performance, PowerProfile, ServiceParams, Targets
from queuemodels.accelerators import profile
from simulator.probe import Replica
from simulator.workload import TokenDist
from tuner import Observation, PairFilter

GPU = "H100-SXM"
REPLICA = Replica("llama-3.1-8b", GPU)
MAX_CLOCK_MHZ = 1980
PRIOR = {"alpha_ms": 20.0, "beta_ms": 0.2, "gamma_ms": 20.0, "delta_ms": 0.06}
"""A generic prior (config/sim.toml's for this model), 2-4x off the emulator's law, in the family `--family`
names (the step family, the daemon's default; gen1 the figures of docs/clocks.md before it)."""
CAPS_LEVELS = (0.6, 0.7, 0.8, 0.9, 1.0)
FLOOR_LEVELS = tuple(round(0.3 + 0.05 * k, 2) for k in range(15))
"""Down to the driver's floor (200 W on an H100-SXM: 0.29 of 700 W), as finely as the clock levels."""
CLOCK_LEVELS = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
LEARN_CLOCKS = (None, 0.85, 0.7, 0.55)
LEARN_BATCHES = (32, 128, 256)
TOLERANCE = 0.001
"""Attainments this close count as equal (a token or two in a thousand: the runs' sampling noise)."""
ATTAINMENT = 0.95
"""The SLO is on the p95: met when 95 % of requests (TTFT) and of tokens (inter-token latency) are within it."""
@dataclass(frozen=True)
class Service:
    name: str
    in_tokens: int
    out_tokens: int
    rate_rps: float
    targets: Targets
    learn_rps: tuple[float, ...]
    """Per-replica loads of the learning windows."""


SERVICES = (
    Service("decode-heavy", 128, 1024, 6.0, Targets(ttft_ms=1000.0, itl_ms=30.0, statistic="p95"),
            (2.0, 4.0, 6.0, 8.0)),
    Service("decode-heavy-packed", 128, 1024, 24.0, Targets(ttft_ms=1000.0, itl_ms=30.0, statistic="p95"),
            (2.0, 4.0, 6.0, 8.0)),
    Service("prefill-heavy", 3000, 64, 8.0, Targets(ttft_ms=2000.0, itl_ms=300.0, statistic="p95"), (1.0, 2.0, 3.0)),
)
"""The decode-heavy service at a load one GPU serves below its lowest cap's draw, and at four times that, where
the plan packs GPUs until their decode draw reaches the caps' range."""


@dataclass
class Run:
    ttft_ms: list[float]
    itl_ms: list[float]
    energy_j: float
    tokens: int
    seconds: float
    rate_rps: float
    waiting: float


def warmup_s(svc: Service) -> float:
    """Time for a replica's batch to fill at a steady load: two request lifetimes at the SLO's inter-token target.
    A window that starts earlier reads a batch still filling (at 6 rps of 1024-token outputs, a window after the
    first 15 % of 800 arrivals read 7 % less energy per token than the steady state, and 95 % attainment where
    the steady state has 88 %)."""
    return 2.0 * svc.out_tokens * svc.targets.itl_ms / 1000.0


def run(svc: Service, batch: int, rate_rps: float, requests: int, seed: int, cap_w: float | None,
        clock: float | None) -> Run:
    """One replica at a steady Poisson load: `requests` arrivals in the window, after the warm-up (`warmup_s`)."""
    rng = np.random.default_rng(seed)
    mhz = None if clock is None else int(round(clock * MAX_CLOCK_MHZ / 15.0) * 15)
    engine = REPLICA.engine(batch, cap_w, rng, locked_clock_mhz=mhz)
    warm = int(np.ceil(rate_rps * warmup_s(svc)))
    times = np.cumsum(rng.exponential(1.0 / rate_rps, warm + requests))
    n_in, n_out = TokenDist(svc.in_tokens).draw(rng, times.size), TokenDist(svc.out_tokens).draw(rng, times.size)
    for t, a, b in zip(times, n_in, n_out, strict=True):
        engine.submit(float(t), int(a), int(b))
    start, end = float(times[warm]), float(times[-1])
    engine.advance_to(start)
    m = engine.metrics
    n_ttft, n_itl, energy0, tokens0 = len(m.ttft.all_samples()), len(m.itl.all_samples()), engine.gpu.energy_j, \
        m.generation_tokens_total
    waiting = []
    for t in np.linspace(start, end, 50)[1:]:
        engine.advance_to(float(t))
        waiting.append(sum(1 for w in engine.waiting if w[0] <= engine.now_s))
    window = (times >= start) & (times < end)
    return Run(list(m.ttft.all_samples()[n_ttft:] * 1000.0), list(m.itl.all_samples()[n_itl:] * 1000.0),
               engine.gpu.energy_j - energy0, m.generation_tokens_total - tokens0, engine.now_s - start,
               float(window.sum()) / (end - start), float(np.mean(waiting)))


def learn(svc: Service, requests: int, seed: int, family: str) -> tuple[ServiceParams, PowerProfile | None]:
    """The tuner's fit from windows at several loads, batches and clocks (interleaved, as a daemon sees them)."""
    pair = PairFilter(ServiceParams(family, **PRIOR), profile(GPU), fit_power=True)
    windows = [(rate, batch, clock) for clock in LEARN_CLOCKS for batch in LEARN_BATCHES for rate in svc.learn_rps]
    order = np.random.default_rng(seed).permutation(len(windows))
    for k in order:
        rate, batch, clock = windows[int(k)]
        r = run(svc, batch, rate, max(200, requests // 4), seed + 1000 + int(k), None, clock)
        if not r.ttft_ms or not r.itl_ms:
            continue
        pair.update(Observation(r.rate_rps, svc.in_tokens, svc.out_tokens, batch, DEFAULT_MAX_QUEUE,
                                float(np.mean(r.ttft_ms)), float(np.mean(r.itl_ms)), None, r.energy_j / r.seconds,
                                waiting=r.waiting, in_cv=0.5, out_cv=0.5, sm_clock_fraction=clock))
    return pair.params()


def plan(svc: Service, params: ServiceParams, prof: PowerProfile | None, power_levels: tuple[float, ...],
         clock_levels: tuple[float, ...], min_saving: float) -> tuple[Assignment | None, Performance | None, float]:
    """The optimizer's plan, with what the model predicts for it (a replica's latencies, the service's GPUs' draw:
    the plan's own figure is its draw above the GPUs' empty floor, which the site counts apart)."""
    acc = AcceleratorType(GPU, 16, 2.99, profile(GPU))
    demand = ServiceDemand(svc.name, 1, svc.targets, Load(svc.rate_rps, svc.in_tokens, svc.out_tokens, 0.5, 0.5),
                           {GPU: params}, max_replicas=16, profiles={GPU: prof} if prof is not None else {})
    problem = Problem((demand,), (acc,), 1e6, "energy", "predicted", (16, 32, 64, 128, 256), power_levels,
                      clock_levels=clock_levels, clock_min_saving=min_saving)
    result = solve(problem, get_solver("milp")).services[0]
    a = result.assignment
    floor_w = 0.0 if a is None else a.replicas * acc.gpus_per_replica * acc.profile.empty_draw_w
    return a, result.performance, result.power_w + floor_w



def attainment(scored: dict[str, object]) -> float:
    shares = scored["slo_attainment"]
    assert isinstance(shares, dict)
    return float(min(shares["ttft"], shares["itl"]))


def score(svc: Service, a: Assignment, requests: int, seed: int) -> dict[str, object]:
    runs = [run(svc, a.max_batch, svc.rate_rps / a.replicas, max(200, requests // a.replicas), seed + k,
                a.power_cap_w, a.sm_clock_fraction) for k in range(a.replicas)]
    ttft = np.concatenate([r.ttft_ms for r in runs])
    itl = np.concatenate([r.itl_ms for r in runs])
    energy = sum(r.energy_j / r.seconds for r in runs)  # W over the service's GPUs
    tokens = sum(r.tokens / r.seconds for r in runs)
    t = svc.targets
    return {"assignment": {"replicas": a.replicas, "max_batch": a.max_batch, "cap_w": round(a.power_cap_w),
                           "sm_clock_share": a.sm_clock_fraction},
            "energy_per_token_j": round(energy / tokens, 4), "power_w": round(energy, 1),
            "ttft_ms": {"mean": round(float(ttft.mean()), 1), "p95": round(float(np.percentile(ttft, 95)), 1)},
            "itl_ms": {"mean": round(float(itl.mean()), 2), "p95": round(float(np.percentile(itl, 95)), 2),
                       "p99": round(float(np.percentile(itl, 99)), 2)},
            "slo_attainment": {"ttft": round(float(np.mean(ttft <= t.ttft_ms)), 4),
                               "itl": round(float(np.mean(itl <= t.itl_ms)), 4)},
            "slo_met": bool(np.mean(ttft <= t.ttft_ms) >= ATTAINMENT and np.mean(itl <= t.itl_ms) >= ATTAINMENT)}
