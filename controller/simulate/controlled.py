"""Policies that run wattscale's own Controller, as the daemon wires it (controller/wiring.py), on the
scenario's host:

- `wattscale`: the Controller with the config as written; the budget its sources and the scenario's events
  set reaches it as the daemon's budget thread passes it (`Controller.set_budget`, with the source and why);
- `wattscale-flat`: the same Controller under a flat budget, the mean of the one `wattscale` gets (what
  following the sources gains over the same energy budget spread evenly);
- `slo-only`: the same optimizer with power left out (the llm-d autoscaler's model-based mode): every GPU
  planned at full power against an unlimited budget, the Controller's power actuation a dry run, and the
  budget held only by uniform caps when the site draws over it (`ReactiveCaps`), each fast tick.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prometheus_client import CollectorRegistry

from actuators import ClockLocker, PowerLimiter
from actuators.dryrun import DryRunClockLocker, DryRunPowerLimiter
from actuators.sim import SimBatchSizer, SimClockLocker, SimPowerLimiter, SimReplicaScaler
from controller.control import Controller
from controller.decision_log import DecisionLog
from controller.own_metrics import OwnMetrics
from controller.settings import Settings
from controller.simulate.baselines import ReactiveCaps
from controller.simulate.plant import OutageGpuSource, Outages
from controller.telemetry.sim import SimGpuSource, SimVllmSource
from simulator.host import SimHost
from tuner import Tuner

UNLIMITED_W = 1e7
"""The budget `slo-only` plans against: none that binds."""
REPORT_LOG_BYTES = 1 << 30
"""The report's decision log is whole (the daemon's rotates at 16 MiB: a week's simulation writes some 90 MB)."""


def slo_only_settings(settings: Settings) -> Settings:
    """The config with power left out of planning: full power and clocks only, no price on watts, a budget that never
    binds."""
    return dataclasses.replace(settings, power=dataclasses.replace(settings.power, budget_w=UNLIMITED_W, domains=()),
                               optimizer=dataclasses.replace(settings.optimizer, power_levels=(1.0,),
                                                             clock_levels=(1.0,), energy_weight=0.0),
                               actuators=dataclasses.replace(settings.actuators, clocks="none"))


def clock_locker(settings: Settings, host: SimHost) -> ClockLocker | None:
    """The config's clock backend on the simulated host (an `nvml` one locks the simulated GPUs' clocks)."""
    kind = settings.actuators.clocks
    if kind == "none":
        return None
    return DryRunClockLocker() if kind == "dry-run" else SimClockLocker(host)


class ControllerPolicy:
    """The Controller stepped in simulated time, its tuner state in `state_dir` (a fresh one each run)."""

    def __init__(self, settings: Settings, host: SimHost, outages: Outages, state_dir: Path, slo_only: bool,
                 decision_log: Path | None = None) -> None:
        s = dataclasses.replace(settings, daemon=dataclasses.replace(settings.daemon, state_dir=str(state_dir)),
                                simulator=dataclasses.replace(settings.simulator, seed=host.seed))
        self.caps = ReactiveCaps(host, outages) if slo_only else None
        if slo_only:
            s = slo_only_settings(s)
        power: PowerLimiter = DryRunPowerLimiter() if slo_only else SimPowerLimiter(host)
        self.controller = Controller(s, OutageGpuSource(SimGpuSource(host), outages), SimVllmSource(host), power,
                                     SimBatchSizer(host), SimReplicaScaler(host),
                                     Tuner(s.state_path, queue_model=s.optimizer.queue_model),
                                     OwnMetrics(CollectorRegistry()), DecisionLog(decision_log, REPORT_LOG_BYTES),
                                     clock_locker(s, host))

    def set_budget(self, budget_w: float, now: float, why: str = "scenario") -> None:
        if self.caps is not None:
            self.caps.set_budget(budget_w, now)
        else:
            self.controller.set_budget(budget_w, why, now)

    def tick_fast(self, now: float) -> bool:
        """One fast tick; True where the slow loop should plan now (`Controller.tick_fast`)."""
        due = self.controller.tick_fast(now)
        if self.caps is not None:
            self.caps.tick(now)
        return due

    def tick_slow(self, now: float) -> None:
        self.controller.tick_slow(now)
