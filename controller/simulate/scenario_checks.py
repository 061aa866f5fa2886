"""A scenario's checks against the config it runs: its workload's services, events and personalities name what
the config has, stacked slowdowns stay in bounds, no budget source asks a remote API, and no budget it sets as the
config's (its start, a budget event) is below the fleet's idle draw. A demand-response signal may ask less, as a
grid operator's may: the daemon takes it (and warns), so a scenario can run that case."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from controller.budget.assemble import resolve
from controller.budget.base import BudgetError
from controller.budget.carbon_feeds import CsvIntensityFeed, parse_utc_s
from controller.budget.settings import KINDS, CarbonCsvSettings, DemandResponseSettings
from controller.config_loader import ConfigError, quoted
from controller.idle_floor import below_idle, idle_w
from controller.settings import Settings
from controller.simulator_checks import check_kv_fits, check_personalities, check_power_laws
from controller.telemetry.base import shortened
from simulator.workload import CONTEXT_TOKENS

if TYPE_CHECKING:
    from controller.simulate.scenario import ScenarioSettings

MIN_SLOWDOWN, MAX_SLOWDOWN = 0.1, 10.0
"""How much faster or slower slowdown events may make a service's steps, each and all together."""
MAX_BURSTS = 1000
"""Most bursts of one service's workload (each is two steps of its rate)."""
MAX_EVENTS = 1000
"""Most events of one scenario."""
API_SOURCES = ("electricitymaps", "watttime")
"""Budget source kinds that ask a remote API: a scenario runs offline, so its carbon comes from a CSV."""


def api_refused(kind: str) -> str:
    """Why a budget source of an API's `kind` is no scenario's."""
    return (f"{quoted(kind)} asks a remote API; a scenario reads grid carbon from a CSV in Electricity Maps' export "
            "format (kind \"carbon_csv\")")


def check_scenario(s: ScenarioSettings, config: Settings) -> None:
    """Raise ConfigError naming the scenario's (or its config's) field that does not fit the other."""
    _against_config(s, config)
    _sources(s, config)
    _budgets(s, config)


def _against_config(s: ScenarioSettings, config: Settings) -> None:
    names = [svc.name for svc in config.services]
    for name, w in s.workload.items():
        if name not in names:
            raise ConfigError(f"workload.{name}", f"no such service in {s.config} (services: {', '.join(names)})")
        svc = next(svc for svc in config.services if svc.name == name)
        tokens = (w.in_tokens or svc.in_tokens) + (w.out_tokens or svc.out_tokens)  # 0: the service's
        if tokens > CONTEXT_TOKENS:  # no request would fit: every one a miss, slowly
            field = "in_tokens" if w.in_tokens else "out_tokens"
            raise ConfigError(f"workload.{name}.{field}", f"with the service's other mean, in_tokens + out_tokens is "
                              f"{tokens:g}, over the engines' context of {CONTEXT_TOKENS} tokens")
        tail, out = w.prompt_tail, w.out_tokens or svc.out_tokens
        if tail is not None and tail.share > 0.0 and tail.min_tokens + out > CONTEXT_TOKENS:  # none of it would fit
            raise ConfigError(f"workload.{name}.prompt_tail.min_tokens", f"{tail.min_tokens:g} with out_tokens {out:g} "
                              f"is over the engines' context of {CONTEXT_TOKENS} tokens: no prompt of the tail would "
                              "fit")
        types = [v.accelerator for v in config.variants_of(svc)]
        longer = "in_tokens" if (w.in_tokens or svc.in_tokens) >= out else "out_tokens"  # named, where it sets it
        named = longer if getattr(w, longer) else "in_tokens" if w.in_tokens else "out_tokens"
        check_kv_fits(f"workload.{name}.{named}", svc.model, types, tokens,
                      "with the service's other mean, in_tokens + out_tokens, the mean request,")
        if tail is not None and tail.share > 0.0:
            check_kv_fits(f"workload.{name}.prompt_tail.min_tokens", svc.model, types, tail.min_tokens + out,
                          "its shortest prompt with out_tokens")
    parts = {"telemetry.gpu_source": config.telemetry.gpu_source, "telemetry.vllm_source": config.telemetry.vllm_source,
             "actuators.power": config.actuators.power, "actuators.batch": config.actuators.batch,
             "actuators.replicas": config.actuators.replicas}
    if real := next((f"{k} = {v!r}" for k, v in parts.items() if v != "sim"), None):  # ran as sim, without a word
        raise ConfigError("config", f"{s.config} has {real}: a scenario runs a simulated host's config (telemetry and "
                          "actuators \"sim\", as config/sim.toml)")
    check_personalities("personalities", s.personalities, {svc.model for svc in config.services},
                        set(config.simulator.host_types), s.config)
    check_power_laws("power_laws", s.power_laws, set(config.simulator.host_types))
    gpus = len(config.simulator.host_types)
    lost: dict[int, int] = {}
    for i, e in enumerate(s.events):
        where = f"events[{i}]"
        if e.at_s >= s.duration_s:
            raise ConfigError(f"{where}.at_s", f"{e.at_s:g} s is not before the scenario's end ({s.duration_s:g} s): "
                              "it would never apply")
        if e.kind == "gpu_lost":
            if e.gpu is None:
                raise ConfigError(f"{where}.gpu", f"is missing: a gpu_lost event names the GPU, an index in "
                                  f"0..{gpus - 1}")
            if not 0 <= e.gpu < gpus:  # -1, the default once, read "is missing"
                raise ConfigError(f"{where}.gpu", f"must be a GPU index in 0..{gpus - 1}, got {e.gpu}")
            if lost.setdefault(e.gpu, i) != i:  # a lost GPU stays lost
                raise ConfigError(f"{where}.gpu", f"GPU {e.gpu} is lost already (events[{lost[e.gpu]}])")
        if e.kind == "demand_response" and not any(
                isinstance(src, DemandResponseSettings) for _, src in (config.budget.sources if config.budget else ())):
            raise ConfigError(f"{where}.kind", "demand_response needs a demand_response source in [power.budget]")
        if e.kind == "slowdown" and e.service not in names:
            raise ConfigError(f"{where}.service", f"no such service {quoted(e.service)} (services: {', '.join(names)})")
    slowed: dict[str, float] = {}
    for i, e in sorted(enumerate(s.events), key=lambda ie: ie[1].at_s):
        if e.kind == "slowdown":  # each multiplies the ones before it
            slowed[e.service] = slowed.get(e.service, 1.0) * e.factor
            if not MIN_SLOWDOWN <= slowed[e.service] <= MAX_SLOWDOWN:
                raise ConfigError(f"events[{i}].factor", f"with the slowdowns before it, {e.service}'s steps take "
                                  f"{slowed[e.service]:.6g} times as long; at most {MAX_SLOWDOWN:g} and at least "
                                  f"{MIN_SLOWDOWN:g} in all")


def _sources(s: ScenarioSettings, config: Settings) -> None:
    """A scenario runs offline and on its own clock: no budget source that asks a remote API, and each carbon CSV
    read once here (one missing, empty or garbled, or one whose points miss the run's dates, ran the whole
    simulation on the safe budget, said only in simulate.log)."""
    for i, (_, src) in enumerate(config.budget.sources if config.budget is not None else ()):
        kind = next(k for k, cls in KINDS.items() if type(src) is cls)
        if kind in API_SOURCES:
            raise ConfigError(f"power.budget.sources[{i}].kind", api_refused(kind))
        if isinstance(src, CarbonCsvSettings):
            try:
                points = CsvIntensityFeed(resolve(config.base_dir, src.path), src.basis).fetch(0.0)
            except BudgetError as exc:
                raise ConfigError(f"power.budget.sources[{i}].path", shortened(str(exc), 300)) from None
            if not points:
                raise ConfigError(f"power.budget.sources[{i}].path", f"{quoted(src.path)}: no intensity in its rows")
            start = parse_utc_s(s.start_utc)
            first, last = min(p.at_s for p in points), max(p.at_s for p in points)
            if first > start or last < start + s.duration_s * s.grid_time_scale - src.stale_after_s:
                raise ConfigError(f"power.budget.sources[{i}].path", f"{quoted(src.path)}: its points run "
                                  f"{_day(first)} to {_day(last)}, and the run reads {_day(start)} on for "
                                  f"{s.duration_s:g} s (x grid_time_scale {s.grid_time_scale:g}): its budget would be "
                                  "the safe one")


def _day(t_s: float) -> str:
    return dt.datetime.fromtimestamp(t_s, dt.UTC).strftime("%Y-%m-%dT%H:%MZ")


def _budgets(s: ScenarioSettings, config: Settings) -> None:
    """The budgets the run sets as the config's budget (its start, each budget event) held to what the daemon
    holds `power.budget_w` to (controller/settings_checks.py): not below the fleet's idle draw, which no cap
    can bring the GPUs under."""
    idle = idle_w(config)
    named = [("budget_w", s.budget_w)] + [(f"events[{i}].budget_w", e.budget_w) for i, e in enumerate(s.events)
                                          if e.kind == "budget"]
    for where, budget_w in named:
        if budget_w and budget_w < idle:
            raise below_idle(where, budget_w, idle, also=", as the daemon refuses power.budget_w")
