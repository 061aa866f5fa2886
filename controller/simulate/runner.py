"""One run: a policy driving a scenario's host for one seed, stepped in simulated time.

Every fast interval (the config's, 1 s) the runner applies the events due, advances the plant, ticks the
policy's fast loop, and records the site draw over that second against the budget in force during it, the
limits' sum and what each service runs; every slow interval it ticks the policy's slow loop. Requests are
logged by the plant itself (simulator/requests.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from controller.simulate.baselines import DrawMeter, ReactiveCaps, StaticPolicy, ThresholdPolicy, UniformCaps
from controller.simulate.controlled import ControllerPolicy
from controller.simulate.plant import Fleet, Outages, build_host
from controller.simulate.scenario import Scenario
from simulator.host import SimHost


class Policy(Protocol):
    def set_budget(self, budget_w: float, now: float) -> None: ...

    def tick_fast(self, now: float) -> None: ...

    def tick_slow(self, now: float) -> None: ...


@dataclass
class Trace:
    """Per fast tick: the time at its end, and what the second before it saw."""

    t_s: NDArray[np.float64]
    budget_w: NDArray[np.float64]
    draw_w: NDArray[np.float64]
    limits_w: NDArray[np.float64]
    """Sum of the power limits of the GPUs still on the bus."""
    replicas: dict[str, NDArray[np.float64]]
    max_batch: dict[str, NDArray[np.float64]]
    cap_w: dict[str, NDArray[np.float64]]
    """Mean power limit of the service's GPUs (nan while it has none)."""


@dataclass
class Run:
    policy: str
    seed: int
    trace: Trace
    host: SimHost
    """The plant as the run left it: its request logs and energy counters."""


def _policy(name: str, scn: Scenario, host: SimHost, outages: Outages, state_dir: Path,
            decision_log: Path | None) -> Policy:
    if name == "static":
        return StaticPolicy(None)
    if name == "uniform-cap":
        return StaticPolicy(UniformCaps(host))
    if name == "threshold":
        variants = {s.name: [v.accelerator for v in scn.config.variants_of(s)] for s in scn.config.services}
        return ThresholdPolicy(host, scn.config.services, variants, ReactiveCaps(host, outages))
    return ControllerPolicy(scn.config, host, outages, state_dir, name == "slo-only",
                            decision_log if name == "wattscale" else None)


def run(scn: Scenario, policy: str, seed: int, fleet: Fleet, duration_s: float | None = None,
        progress: Callable[[float], None] | None = None, decision_log: Path | None = None) -> Run:
    """Drive the scenario with `policy` for `duration_s` (None: the scenario's), starting from `fleet` (every
    policy starts from the fleet the operator runs today, as wattscale would be installed on it); `progress`
    gets the simulated seconds done since its last call, once a slow tick."""
    cfg = scn.config
    duration = duration_s or scn.settings.duration_s
    fast, slow = cfg.daemon.fast_interval_s, cfg.daemon.slow_interval_s
    host = build_host(scn, seed, fleet)
    outages = Outages(scn)
    names = [s.name for s in cfg.services]
    n = int(np.ceil(duration / fast))
    trace = Trace(np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n), {s: np.zeros(n) for s in names},
                  {s: np.zeros(n) for s in names}, {s: np.zeros(n) for s in names})
    events = sorted(scn.settings.events, key=lambda e: e.at_s)
    meter = DrawMeter(host)
    with tempfile.TemporaryDirectory(prefix="wattscale-simulate-") as tmp:
        ctl = _policy(policy, scn, host, outages, Path(tmp), decision_log)
        budget = scn.start_budget_w
        ctl.set_budget(budget, 0.0)
        t, next_slow, done = 0.0, slow, 0.0
        for k in range(n):
            while events and events[0].at_s <= t:
                e = events.pop(0)
                if e.kind == "budget":
                    budget = e.budget_w
                    ctl.set_budget(budget, t)
                elif e.kind == "gpu_lost":
                    host.lose_gpu(e.gpu)
                elif e.kind == "slowdown":
                    host.slow_down(e.service, e.factor)
            t = (k + 1) * fast
            host.advance_to(t)
            trace.t_s[k], trace.budget_w[k], trace.draw_w[k] = t, budget, meter.read(t)
            ctl.tick_fast(t)
            if t >= next_slow - 1e-9:
                next_slow += slow
                ctl.tick_slow(t)
                if progress is not None:
                    progress(t - done)
                    done = t
            _record(trace, k, host)
        if progress is not None and t > done:
            progress(t - done)
    return Run(policy, seed, trace, host)


def _record(trace: Trace, k: int, host: SimHost) -> None:
    live = [g for g in host.gpus if g.index not in host.lost]
    trace.limits_w[k] = sum(g.power_limit_w for g in live)
    for name, svc in host.services.items():
        trace.replicas[name][k] = len(svc.replicas)
        trace.max_batch[name][k] = svc.max_num_seqs
        limits = [r.gpu.power_limit_w for r in svc.replicas]
        trace.cap_w[name][k] = sum(limits) / len(limits) if limits else np.nan
