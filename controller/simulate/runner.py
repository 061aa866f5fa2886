"""One run: a policy driving a scenario's host for one seed, stepped in simulated time.

Every fast interval (the config's, 1 s) the runner applies the events due, steps the budget sources on the
simulated clock (controller/simulate/sources.py) and passes a new budget to the policy, advances the plant,
ticks the policy's fast loop, and records the site draw (and each power domain's) over that second against
the budget in force during it, the grid's carbon intensity, the limits' sum and what each service runs;
every slow interval it ticks the policy's slow loop. Requests are logged by the plant itself
(simulator/requests.py).
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
from controller.simulate.scenario import Scenario, fast_ticks
from controller.simulate.sources import Intensity, SimBudget, events_due
from simulator.host import SimHost

FLAT = "wattscale-flat"
"""The Controller under a flat budget of the same mean as the scenario's (it takes `flat_budget_w`)."""


def slow_due(early: bool, t: float, next_slow: float, period: float) -> tuple[bool, float]:
    """Whether the slow tick runs at simulated time `t`, and when the next is due: at its period, or at once where
    the fast tick asked (`early`: limits at their floors over budget), the period kept, as the daemon wakes its slow
    loop (a simulated run has no reloads, whose cycles the daemon keeps a half period apart)."""
    on_time = t >= next_slow - 1e-9
    return early or on_time, next_slow + period if on_time else next_slow


class Policy(Protocol):
    def set_budget(self, budget_w: float, now: float, why: str = "scenario") -> None: ...

    def tick_fast(self, now: float) -> bool:
        """One fast tick; True where the slow tick should run now, before its period."""
        ...

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
    limit_w: dict[str, NDArray[np.float64]]
    """Mean power limit of the service's GPUs (nan while it has none)."""
    intensity_g_per_kwh: NDArray[np.float64]
    """The grid's carbon intensity during the second (nan without a carbon CSV source)."""
    domain_draw_w: dict[str, NDArray[np.float64]]
    """Per power domain, its GPUs' mean draw over the second."""


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
        return StaticPolicy(host, None)
    if name == "uniform-cap":
        return StaticPolicy(host, UniformCaps(host))
    if name == "threshold":
        variants = {s.name: [v.accelerator for v in scn.config.variants_of(s)] for s in scn.config.services}
        return ThresholdPolicy(host, scn.config.services, variants, ReactiveCaps(host, outages))
    return ControllerPolicy(scn.config, host, outages, state_dir, name == "slo-only",
                            decision_log if name == "wattscale" else None)


def run(scn: Scenario, policy: str, seed: int, fleet: Fleet, duration_s: float | None = None,
        progress: Callable[[float], None] | None = None, decision_log: Path | None = None,
        flat_budget_w: float | None = None) -> Run:
    """Drive the scenario with `policy` for `duration_s` (None: the scenario's), starting from `fleet` (every
    policy starts from the fleet the operator runs today, as wattscale would be installed on it); `progress`
    gets the simulated seconds done since its last call, once a slow tick. `wattscale-flat` runs under
    `flat_budget_w` throughout, its sources and budget events left out."""
    if policy == FLAT and flat_budget_w is None:
        raise ValueError("wattscale-flat needs flat_budget_w")
    cfg = scn.config
    duration = duration_s or scn.settings.duration_s
    fast, slow = cfg.daemon.fast_interval_s, cfg.daemon.slow_interval_s
    host = build_host(scn, seed, fleet)
    outages = Outages(scn)
    names = [s.name for s in cfg.services]
    n = fast_ticks(duration, fast)
    trace = Trace(np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n), {s: np.zeros(n) for s in names},
                  {s: np.zeros(n) for s in names}, {s: np.zeros(n) for s in names}, np.zeros(n),
                  {d.name: np.zeros(n) for d in cfg.power.domains})
    flat = policy == FLAT
    events = sorted((e for e in scn.settings.events if not (flat and e.kind in ("budget", "demand_response"))),
                    key=lambda e: e.at_s)
    meter, intensity = DrawMeter(host), Intensity(scn)
    domains = {d.name: DrawMeter(host, d.gpus) for d in cfg.power.domains}
    with tempfile.TemporaryDirectory(prefix="wattscale-simulate-") as tmp:
        ctl = _policy("wattscale" if flat else policy, scn, host, outages, Path(tmp), decision_log)
        sources = SimBudget(scn, Path(tmp), sources=not flat, start_w=flat_budget_w if flat else None)
        budget = -1.0
        t, next_slow, done = 0.0, slow, 0.0
        for k in range(n):
            for e in events_due(events, t, fast, duration):
                if e.kind in ("budget", "demand_response"):
                    sources.apply(e, t)
                elif e.kind == "gpu_lost" and e.gpu is not None:  # checked: a gpu_lost event names one
                    host.lose_gpu(e.gpu)
                elif e.kind == "slowdown":
                    host.slow_down(e.service, e.factor)
            now_w = sources.step(t)
            if now_w != budget:
                budget = now_w
                ctl.set_budget(budget, t, sources.why)
            intensity_now = intensity.at(t)
            t = (k + 1) * fast
            host.advance_to(t)
            trace.t_s[k], trace.budget_w[k], trace.draw_w[k] = t, budget, meter.read(t)
            trace.intensity_g_per_kwh[k] = intensity_now
            for name, domain in domains.items():
                trace.domain_draw_w[name][k] = domain.read(t)
            due, next_slow = slow_due(ctl.tick_fast(t), t, next_slow, slow)
            if due:
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
        trace.replicas[name][k] = svc.count()  # a rolling restart's draining replica counts
        trace.max_batch[name][k] = svc.max_num_seqs
        limits = [r.gpu.power_limit_w for r in svc.replicas]
        trace.limit_w[name][k] = sum(limits) / len(limits) if limits else np.nan
