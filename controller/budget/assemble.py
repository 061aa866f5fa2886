"""Budget settings into working sources and their combiner. Secrets come from the environment mapping
passed in (never from the config file); the HTTP fetch is passed in too, so a test or the simulator
builds the same objects against a fake."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

from controller.budget.api_http import Fetch, http_get
from controller.budget.base import BudgetSource
from controller.budget.carbon import CarbonBudgetSource, IntensityFeed, PowerCurve
from controller.budget.carbon_feeds import CsvIntensityFeed, ElectricityMapsFeed, WattTimeFeed
from controller.budget.combiner import BudgetCombiner
from controller.budget.demand_response import DemandResponseSource
from controller.budget.prefetch import WAIT_S, Prefetching
from controller.budget.schedule import WEEKDAYS, FixedSource, Rule, ScheduleSource, minutes
from controller.budget.settings import (
    BudgetSettings,
    CarbonCsvSettings,
    CarbonSettings,
    DemandResponseSettings,
    ElectricityMapsSettings,
    FixedSettings,
    ScheduleSettings,
    SourceSettings,
    WattTimeSettings,
)
from controller.config_loader import ConfigError


def secret(env: Mapping[str, str], variable: str, where: str) -> str:
    value = env.get(variable, "")
    if not value:
        raise ConfigError(where, f"environment variable {variable} is not set")
    return value


def check_secrets(settings: BudgetSettings, env: Mapping[str, str], where: str) -> None:
    """Every secret a source reads is set in `env`, or ConfigError naming the first missing one's field: the operator
    checks it with the policy, which is refused then (running, the full budget had held while the safe one was
    meant)."""
    for i, (_, s) in enumerate(settings.sources):
        for field in s.SECRETS if isinstance(s, ElectricityMapsSettings | WattTimeSettings) else ():
            secret(env, getattr(s, field), f"{where}.sources[{i}].{field}")


def resolve(base_dir: str, path: str) -> str:
    """A source's file path: relative ones are relative to the config file's directory."""
    return str(Path(base_dir) / path)


def feed(s: CarbonSettings, where: str, env: Mapping[str, str], fetch: Fetch, base_dir: str = ".",
         wait_s: float = WAIT_S) -> IntensityFeed:
    """A source's feed, fetched in a thread of its own and waited for `wait_s` (controller/budget/prefetch.py): an
    API's, and a CSV's too (a 16-MB CSV parsed in the budget thread held a demand-response signal back 4-6 s); with
    `wait_s` infinite (simulated time, check-config) a CSV is read in the step that asks, as the same seed must read
    the same."""
    if isinstance(s, ElectricityMapsSettings):
        token = secret(env, s.token_env, f"{where}.token_env")
        return Prefetching(ElectricityMapsFeed(s.zone, token, s.url, s.use_forecast, s.timeout_s, fetch), wait_s)
    if isinstance(s, WattTimeSettings):
        user = secret(env, s.username_env, f"{where}.username_env")
        password = secret(env, s.password_env, f"{where}.password_env")
        return Prefetching(WattTimeFeed(s.region, user, password, s.url, s.horizon_hours, s.timeout_s, fetch), wait_s)
    if isinstance(s, CarbonCsvSettings):
        csv = CsvIntensityFeed(resolve(base_dir, s.path), s.basis)
        return csv if math.isinf(wait_s) else Prefetching(csv, wait_s)
    raise ConfigError(f"{where}.kind", f"no carbon feed for {type(s).__name__}")


def source(s: SourceSettings, where: str, env: Mapping[str, str], fetch: Fetch, base_dir: str = ".",
           wait_s: float = WAIT_S) -> BudgetSource:
    """One source from its settings (`wait_s`: `feed`'s)."""
    if isinstance(s, FixedSettings):
        return FixedSource(s.budget_w)
    if isinstance(s, ScheduleSettings):
        rules = [Rule(frozenset(WEEKDAYS.index(d) for d in r.days), minutes(r.start), minutes(r.end), r.budget_w,
                      f"{','.join(r.days)} {r.start}-{r.end}") for r in s.rules]
        return ScheduleSource(rules, s.default_budget_w, s.time_zone)
    if isinstance(s, CarbonSettings):
        return CarbonBudgetSource(feed(s, where, env, fetch, base_dir, wait_s), PowerCurve(s.curve), s.lead_s,
                                  s.refresh_s, s.stale_after_s)
    if isinstance(s, DemandResponseSettings):
        return DemandResponseSource(resolve(base_dir, s.path), s.retry_s)
    raise ConfigError(f"{where}.kind", f"no source for {type(s).__name__}")


def combiner(settings: BudgetSettings, env: Mapping[str, str], fetch: Fetch = http_get,
             where: str = "power.budget", base_dir: str = ".", failed: Callable[[], None] = lambda: None,
             wait_s: float = WAIT_S) -> BudgetCombiner:
    """The combiner of every configured source (file paths relative to `base_dir`; `failed` counts each failed
    read of one; `wait_s`: `feed`'s); a missing secret raises ConfigError naming its field."""
    sources = {name: source(s, f"{where}.sources[{i}]", env, fetch, base_dir, wait_s)
               for i, (name, s) in enumerate(settings.sources)}
    return BudgetCombiner(sources, settings.ttl_s, settings.safe_budget_w, failed=failed)
