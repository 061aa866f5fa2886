"""A scenario file: a wattscale config (simulated host, services, budget) plus the workload over time and the
events that strike it, read with one clear error naming the field.

    name = "diurnal"
    config = "../sim.toml"          # the host and services, relative to this file
    duration_s = 7200
    [workload.chat]                 # per service; a service not named keeps its config's `sim` table
    rate_rps = 12.0
    bursts = [{ start_s = 2400, duration_s = 300, factor = 2.0 }]
    [[events]]
    at_s = 1800
    kind = "budget"                 # budget | demand_response | gpu_lost | slowdown | telemetry_lost
    budget_w = 2800
    [power]                         # optional: keys laid over the config's [power] table (ramp, domains,
    ramp_up_w_per_s = 40            # [power.budget] sources, paths relative to the scenario)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from controller.budget.carbon_feeds import parse_utc_s
from controller.budget.demand_response import MAX_REASON_CHARS, MIN_SIGNAL_W
from controller.config_loader import ConfigError, build, check_range, quoted
from controller.config_warnings import budget_warnings, config_warnings
from controller.service_settings import MAX_DURATION_S
from controller.settings import Settings, load_settings, settings_from
from controller.settings_checks import MAX_POWER_W
from controller.simulate.scenario_checks import (
    API_SOURCES,
    MAX_EVENTS,
    MAX_SLOWDOWN,
    MIN_SLOWDOWN,
    api_refused,
    check_scenario,
)
from controller.simulate.workload_settings import WorkloadSettings, check_arrivals
from controller.simulator_checks import check_law_names
from controller.toml_file import read_toml

EARLIEST_S, LATEST_S = 365 * 86400.0, dt.datetime(9998, 12, 31, tzinfo=dt.UTC).timestamp()
"""The span (Unix seconds) a scenario's grid clock may read: schedules and CSVs step dates a day either side."""

EventKind = Literal["budget", "demand_response", "gpu_lost", "slowdown", "telemetry_lost"]


APPLIES: dict[str, tuple[str, ...]] = {
    "budget": ("budget_w",), "demand_response": ("budget_w", "duration_s", "reason"), "gpu_lost": ("gpu",),
    "slowdown": ("service", "factor"), "telemetry_lost": ("duration_s",),
}
"""The fields each kind of event reads (besides `at_s`): any other one set is a mistake, refused by name."""


@dataclass(frozen=True)
class EventSettings:
    at_s: float
    """When it happens (s from the scenario's start)."""
    kind: EventKind
    """budget: the site budget becomes `budget_w`; demand_response: a signal (`budget_w` for `duration_s`) is
    written into the config's demand-response source's file; gpu_lost: GPU `gpu` falls off the bus; slowdown:
    every step of `service`'s engines takes `factor` times as long from now on; telemetry_lost: GPU readings
    fail for `duration_s`."""
    budget_w: float | None = None
    """budget, demand_response: the new site budget (W); required for those two."""
    gpu: int | None = None
    """gpu_lost: the GPU's index on the simulated host; required for it."""
    service: str = ""
    """slowdown: the service whose engines slow down."""
    factor: float = 1.0
    """slowdown: the step-time multiplier (1.3 = 30 % slower)."""
    duration_s: float = 0.0
    """telemetry_lost: how long GPU readings fail; demand_response: how long the signal holds (s)."""
    reason: str = ""
    """demand_response: the signal's reason (the decision log quotes it)."""

    def check(self, where: str) -> None:
        check_range(self, where, ("at_s",), 0.0, MAX_DURATION_S)
        for f in dataclasses.fields(self):
            if f.name not in ("at_s", "kind", *APPLIES[self.kind]) and getattr(self, f.name) != f.default:
                raise ConfigError(f"{where}.{f.name}", f"does not apply to a {self.kind} event (it reads "
                                  f"{', '.join(APPLIES[self.kind])}), got {quoted(getattr(self, f.name))}")
        if self.kind in ("budget", "demand_response") and self.budget_w is None:
            raise ConfigError(f"{where}.budget_w", f"is missing: a {self.kind} event needs the new site budget (W)")
        if self.kind == "demand_response":  # the source's own bounds: below 1 W it ignored the signal
            check_range(self, where, ("budget_w",), MIN_SIGNAL_W, MAX_POWER_W)
            check_range(self, where, ("duration_s",), 1.0, MAX_DURATION_S)
            if len(self.reason) > MAX_REASON_CHARS or not self.reason.isprintable():  # the source refused it, unsaid
                raise ConfigError(f"{where}.reason", f"must be printable, at most {MAX_REASON_CHARS} characters (the "
                                  f"decision log quotes it), got {quoted(self.reason[:60])}")
        if self.kind == "budget":
            check_range(self, where, ("budget_w",), 0.0, MAX_POWER_W, low_open=True)
        elif self.kind == "slowdown":
            if not self.service:
                raise ConfigError(f"{where}.service", "required for a slowdown")
            check_range(self, where, ("factor",), MIN_SLOWDOWN, MAX_SLOWDOWN)
        elif self.kind == "telemetry_lost":
            check_range(self, where, ("duration_s",), 1.0, MAX_DURATION_S)


MAX_DESCRIPTION_CHARS = 2000
"""Longest description a scenario may give (the report quotes it whole)."""


TICK_ROUNDING = 1e-9
"""How far, relatively, float rounding alone moves a time across a tick's edge (12 x 0.1 s is 1.2000000000000002 s):
a run's length and an event's tick are read within it."""


def fast_ticks(duration_s: float, fast_s: float) -> int:
    """The fast ticks a run of `duration_s` takes, the last one whole (a run of 1.2 s is 12 ticks of 0.1, not 13)."""
    return max(1, math.ceil(duration_s / fast_s * (1 - TICK_ROUNDING)))


@dataclass(frozen=True)
class ScenarioSettings:
    name: str
    """Short name, used in the report."""
    config: str
    """The wattscale config whose host, services, budget and controller settings the scenario runs
    (relative to the scenario file)."""
    duration_s: float
    """Simulated time (s)."""
    description: str = ""
    """What the scenario tries, in a sentence or two (the report quotes it)."""
    energy_targets: bool = False
    """Judge wattscale's tokens per joule (>= 1.3 x static's) and sum T/C (>= 1.15 x uniform-cap's) as targets, as
    diurnal and tight-budget do; off, the report gives the figures without a verdict."""
    seed: int = 1
    """First seed of the hidden engine costs, arrivals and noise; `--seeds N` runs seed .. seed + N - 1."""
    budget_w: float = 0.0
    """Site budget at the start (W); 0: the config's `power.budget_w`."""
    personalities: dict[str, str] = field(default_factory=dict)
    """Engine personality per model or "model|gpu_type" (adds to the config's `simulator.personalities`)."""
    power_laws: dict[str, str] = field(default_factory=dict)
    """GPU power law per GPU type (adds to the config's `simulator.power_laws`)."""
    workload: dict[str, WorkloadSettings] = field(default_factory=dict)
    """Per service name; a service not named keeps its config's `sim` table."""
    events: tuple[EventSettings, ...] = ()
    """What happens during the run, in any order."""
    start_utc: str = "2026-04-15T00:00:00Z"
    """The time the budget sources read at the scenario's start (ISO 8601 with an offset): a schedule's or a
    carbon CSV's rows are matched from there."""
    grid_time_scale: float = 1.0
    """Seconds the budget sources' clock moves per simulated second: 12 runs a CSV's day in 2 h of simulated
    time (refresh, lead and TTL are the sources' own seconds); 1: real time."""

    def check(self, where: str) -> None:
        if not self.name.strip() or not self.name.isprintable() or len(self.name) > 200:  # it heads the report: an
            # escape code or a newline broke its heading
            raise ConfigError("name", f"must be printable, 1-200 characters, got {quoted(self.name)}")
        if not self.description.isprintable() or len(self.description) > MAX_DESCRIPTION_CHARS:  # the report quotes
            # it as a paragraph: a newline and "# " made a heading of its own, an escape code reached the terminal
            raise ConfigError("description", f"must be printable (one line), at most {MAX_DESCRIPTION_CHARS} "
                              f"characters, got {quoted(self.description)}")
        check_range(self, where, ("duration_s",), 1.0, MAX_DURATION_S)
        check_range(self, where, ("budget_w",), 0.0, MAX_POWER_W)
        if len(self.events) > MAX_EVENTS:
            raise ConfigError("events", f"{len(self.events)} listed, more than {MAX_EVENTS}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError("seed", f"must be in 0..2^63-1, got {self.seed}")
        check_range(self, where, ("grid_time_scale",), 1e-3, 1e3)
        try:
            start = dt.datetime.fromisoformat(self.start_utc.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ConfigError("start_utc", f"must be an ISO 8601 time, got {quoted(self.start_utc)}") from exc
        if start.tzinfo is None:
            raise ConfigError("start_utc", f"needs an offset (Z for UTC), got {quoted(self.start_utc)}")
        start_s = start.timestamp()
        end = start_s + self.duration_s * self.grid_time_scale  # what the budget sources' clock reads last
        if start_s < 0 or not EARLIEST_S <= end <= LATEST_S:  # before 1970 it raised once the fleet was sized
            raise ConfigError("start_utc", f"{quoted(self.start_utc)} starts before 1970 or, with duration_s x "
                              "grid_time_scale, ends outside the years 1971..9998, where the budget sources' dates run")
        for i, e in enumerate(self.events):  # a signal's deadline, on the sources' clock: past 9998 it failed
            if e.kind == "demand_response" and start_s + (e.at_s + e.duration_s) * self.grid_time_scale > LATEST_S:
                raise ConfigError(f"events[{i}].duration_s", f"{e.duration_s:g} s from {e.at_s:g} s ends the signal "
                                  "past the year 9998, where the budget sources' dates run (start_utc x "
                                  "grid_time_scale)")
        check_law_names("", self.personalities, self.power_laws)


@dataclass(frozen=True)
class Scenario:
    """A checked scenario and the config it runs; `config.power.budget_w` is the highest budget of the run (the
    daemon's configured budget, which budget events lower and restore). Whatever backends the config names,
    the scenario wires the simulated host's."""

    settings: ScenarioSettings
    config: Settings
    path: Path
    start_budget_w: float
    """The site budget at the start: the scenario's `budget_w`, else its config's (with the scenario's `[power]`),
    as given, before `config.power.budget_w` was raised to the run's highest (a raise at 30 s read from 0 s)."""

    @property
    def gpu_types(self) -> list[str]:
        """The simulated host's GPU types, one entry per GPU (the config's `simulator`)."""
        return self.config.simulator.host_types

    @property
    def start_unix_s(self) -> float:
        """`start_utc` as Unix seconds: what the budget sources read at simulated second 0."""
        return parse_utc_s(self.settings.start_utc)

    def stated_budgets(self, duration_s: float | None = None) -> list[tuple[str, float]]:
        """Each site budget the scenario states (before `duration_s`, where given), with the field that states it:
        the start's, and each budget or demand-response event's."""
        start = "budget_w" if self.settings.budget_w else "power.budget_w"
        return [(start, self.start_budget_w)] + [
            (f"events[{i}].budget_w", e.budget_w) for i, e in enumerate(self.settings.events)
            if e.kind in ("budget", "demand_response") and e.budget_w is not None
            and (duration_s is None or e.at_s < duration_s)]

    def warnings(self) -> list[str]:
        """What check-config warns of its config, and of each budget it states by the scenario's field (at the run's
        highest budget alone, a start or a step under the GPUs' lowest limits read ok)."""
        stated = self.stated_budgets()
        return config_warnings(self.config) + [w for where, b in stated for w in budget_warnings(self.config, b, where)]

    def workload(self, service: str) -> WorkloadSettings:
        """The service's workload: the scenario's, else its config's `sim` table."""
        found = self.settings.workload.get(service)
        if found is not None:
            return found
        svc = next(s for s in self.config.services if s.name == service)
        w = svc.sim
        return WorkloadSettings(w.rate_rps, w.cycle_amplitude, w.cycle_period_s, in_cv=w.in_cv, out_cv=w.out_cv)


def _with_power(config_path: Path, power: Any, scenario_dir: Path) -> Settings:
    """The config with the scenario's `[power]` keys laid over its own (a ramp limit, domains, budget sources).
    The config's relative paths stay its own; the scenario's (its sources' files) resolve from its directory."""
    if not isinstance(power, dict):
        raise ConfigError("power", "must be a table")
    budget = power.get("budget")
    sources = budget.get("sources") if isinstance(budget, dict) else None
    if isinstance(budget, dict) and isinstance(sources, list):
        sources = [{**src, "path": str(scenario_dir.resolve() / src["path"])}
                   if isinstance(src, dict) and isinstance(src.get("path"), str) else src for src in sources]
        power = {**power, "budget": {**budget, "sources": sources}}
    data = read_toml(config_path, "daemon config")
    table = data.get("power")
    data["power"] = {**(table if isinstance(table, dict) else {}), **power}
    return settings_from(data, config_path.resolve().parent)


def load_scenario(path: Path) -> Scenario:
    """Read, check and resolve a scenario file; raises ConfigError naming the field (the config's errors name
    the config file's fields, prefixed with the file)."""
    raw = read_toml(path, "scenario")
    power = raw.pop("power", None)
    if isinstance(raw.get("start_utc"), (dt.datetime, dt.date, dt.time)):  # TOML's own, unquoted: as a string
        raw["start_utc"] = raw["start_utc"].isoformat()
    s = build(ScenarioSettings, raw, taken=("power",))
    if s.budget_w and isinstance(power, dict) and "budget_w" in power:  # the top-level one won, the other unsaid
        raise ConfigError("power.budget_w", f"{power['budget_w']!r} and the scenario's budget_w {s.budget_w:g} are two "
                          "budgets at the start: give one")
    budget = power.get("budget") if isinstance(power, dict) else None
    sources = budget.get("sources") if isinstance(budget, dict) else None
    for i, src in enumerate(sources if isinstance(sources, list) else ()):
        if isinstance(src, dict) and src.get("kind") in API_SOURCES:  # before the fields such a source needs are
            raise ConfigError(f"power.budget.sources[{i}].kind", api_refused(src["kind"]))  # asked for, to no end
    config_path = (path.parent / s.config).resolve()
    try:
        config = load_settings(config_path) if power is None else _with_power(config_path, power, path.parent)
    except ConfigError as exc:
        where = f"config ({config_path.name})" + (" with the scenario's [power]" if power is not None else "")
        raise ConfigError(f"{where}: {exc.where}", exc.reason) from None
    check_scenario(s, config)
    start_w = s.budget_w or config.power.budget_w
    budgets = [start_w] + [e.budget_w for e in s.events if e.kind == "budget" and e.budget_w is not None]
    sim = dataclasses.replace(config.simulator, personalities={**config.simulator.personalities, **s.personalities},
                              power_laws={**config.simulator.power_laws, **s.power_laws})
    config = dataclasses.replace(config, simulator=sim,
                                 power=dataclasses.replace(config.power, budget_w=max(budgets)))
    scenario = Scenario(s, config, path, start_w)
    check_arrivals({svc.name: scenario.workload(svc.name) for svc in config.services}, s.duration_s)
    return scenario
