"""Settings of the budget sources (`[power.budget]`), every field documented; each `check(where)` raises
ConfigError naming the field. `budget_settings` reads the TOML table, choosing each source's settings by
its `kind`.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
import zoneinfo
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from controller.budget.carbon import MAX_CURVE_W, check_curve
from controller.budget.schedule import WEEKDAYS, minutes
from controller.config_loader import ConfigError, build, check_name, check_positive, check_range, quoted

MAX_TIMEOUT_S = 60.0
"""The longest an API source's request may take."""
MAX_RETRY_S = 60.0
"""The longest a demand-response source waits to read a broken signal file again."""


@dataclass(frozen=True, kw_only=True)
class SourceSettings:
    name: str = ""
    """Names the source in logs and budget changes; empty: its kind."""


@dataclass(frozen=True, kw_only=True)
class FixedSettings(SourceSettings):
    budget_w: float
    """The budget in watts, at all times."""

    def check(self, where: str) -> None:
        check_range(self, where, ("budget_w",), 0.0, MAX_CURVE_W, low_open=True)  # as any budget states


@dataclass(frozen=True, kw_only=True)
class ScheduleRuleSettings:
    days: tuple[str, ...] = WEEKDAYS
    """Weekdays the rule holds on: "mon" to "sun"."""
    start: str = "00:00"
    """Local time the rule starts, HH:MM."""
    end: str = "24:00"
    """Local time the rule ends (not included), HH:MM, after `start`; a night rule is two rules."""
    budget_w: float
    """The budget in watts while the rule holds."""

    def check(self, where: str) -> None:
        check_range(self, where, ("budget_w",), 0.0, MAX_CURVE_W, low_open=True)  # as any budget states
        if not self.days:
            raise ConfigError(f"{where}.days", "needs at least one weekday")
        for i, day in enumerate(self.days):
            if day not in WEEKDAYS:
                raise ConfigError(f"{where}.days[{i}]", f"must be one of {list(WEEKDAYS)}, got {quoted(day)}")
        for key in ("start", "end"):
            try:
                minutes(getattr(self, key))
            except ValueError as exc:
                raise ConfigError(f"{where}.{key}", str(exc)) from exc
        if minutes(self.end) <= minutes(self.start):
            raise ConfigError(f"{where}.end", f"must be after start {self.start}, got {self.end}")


MAX_RULES = 400
"""Most rules a schedule holds: each change of its budget reads a week of every rule's boundaries again, in time
that grows with the square of the rules (3,000 took 1.2 s a read, 400 about 30-50 ms)."""


@dataclass(frozen=True, kw_only=True)
class ScheduleSettings(SourceSettings):
    time_zone: str
    """IANA time zone the rules' times are in, e.g. "Europe/Berlin"."""
    default_budget_w: float
    """The budget in watts when no rule holds."""
    rules: tuple[ScheduleRuleSettings, ...] = ()
    """Weekday x time-of-day rules (at most MAX_RULES); where several hold, the lowest budget wins."""

    def check(self, where: str) -> None:
        check_range(self, where, ("default_budget_w",), 0.0, MAX_CURVE_W, low_open=True)  # as any budget states
        if len(self.rules) > MAX_RULES:
            raise ConfigError(f"{where}.rules", f"{len(self.rules)} rules: at most {MAX_RULES} (a week's half-hours "
                              "are 336 slots; each change of the budget reads every rule's week)")
        try:
            zoneinfo.ZoneInfo(self.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:  # "America": a directory of zones
            raise ConfigError(f"{where}.time_zone", f"unknown time zone {quoted(self.time_zone)}") from exc


@dataclass(frozen=True, kw_only=True)
class CarbonSettings(SourceSettings):
    curve: tuple[tuple[float, float], ...]
    """[gCO2/kWh, watts] points, intensity rising, watts falling or flat; interpolated between points."""
    lead_s: float = 3600.0
    """How far ahead the forecast is read: the budget is the lowest over the next `lead_s`."""
    refresh_s: float = 900.0
    """How often the feed is asked again (s, up to a day)."""
    stale_after_s: float = 7200.0
    """How long one intensity holds when no later one came (the point in force older than this fails; s, up to
    a week)."""

    def check(self, where: str) -> None:
        check_curve(self.curve, f"{where}.curve")
        check_range(self, where, ("refresh_s",), 0.0, 86_400.0, low_open=True)
        check_range(self, where, ("stale_after_s",), 0.0, 7 * 86_400.0, low_open=True)
        check_positive(self, where, ("lead_s",), allow_zero=True)
        check_range(self, where, ("lead_s",), 0.0, 7 * 86_400.0)


def check_secret_source(s: Any, where: str, prefix: str, names: tuple[str, ...]) -> None:
    """A source's secrets come from variables named for it, and go to its API over TLS: a config (or, in a
    cluster, a PowerPolicy) must not be able to send another secret of the process to an address it names."""
    for name in names:
        value = getattr(s, name)
        if not re.fullmatch(rf"({prefix}|WATTSCALE_)[A-Z0-9_]+", value):
            raise ConfigError(f"{where}.{name}", f"must name a variable starting with {prefix} or WATTSCALE_, got "
                              f"{value!r:.60}")
    try:
        url = urllib.parse.urlsplit(s.url)
        _ = url.port  # a port past 65535 or not a number raises here
    except ValueError:
        url = None
    if url is None or not url.hostname or not (url.scheme == "https" or (
            url.scheme == "http" and url.hostname in ("localhost", "127.0.0.1", "::1"))):
        raise ConfigError(f"{where}.url", f"must be an https URL (http only to a loopback address), got {s.url!r:.80}")


@dataclass(frozen=True, kw_only=True)
class ElectricityMapsSettings(CarbonSettings):
    SECRETS: ClassVar[tuple[str, ...]] = ("token_env",)
    """The fields naming a variable that holds a secret (checked here, and set in the operator's environment)."""
    zone: str
    """Electricity Maps zone, e.g. "DE" or "US-CAL-CISO"."""
    token_env: str = "ELECTRICITYMAPS_TOKEN"
    """Environment variable holding the API token (kept out of the config file); its name starts with
    ELECTRICITYMAPS_ or WATTSCALE_ (no other secret of the process is sent anywhere)."""
    url: str = "https://api.electricitymap.org"
    """API base URL: https (plain http only to a loopback address)."""
    use_forecast: bool = True
    """Also ask `/forecast` (needs a plan that includes it); false: the latest value only."""
    timeout_s: float = 10.0
    """Timeout of each request (at most 60 s: the source counts as failed, and the safe budget may apply, only once
    a request has returned)."""

    def check(self, where: str) -> None:
        super().check(where)
        check_range(self, where, ("timeout_s",), 0.0, MAX_TIMEOUT_S, low_open=True)
        if not self.zone:
            raise ConfigError(f"{where}.zone", "must not be empty")
        check_secret_source(self, where, "ELECTRICITYMAPS_", self.SECRETS)


@dataclass(frozen=True, kw_only=True)
class WattTimeSettings(CarbonSettings):
    SECRETS: ClassVar[tuple[str, ...]] = ("username_env", "password_env")
    """The fields naming a variable that holds a secret (checked here, and set in the operator's environment)."""
    region: str
    """WattTime region, e.g. "CAISO_NORTH"."""
    username_env: str = "WATTTIME_USERNAME"
    """Environment variable holding the login's user name (named WATTTIME_... or WATTSCALE_...)."""
    password_env: str = "WATTTIME_PASSWORD"
    """Environment variable holding the login's password (named WATTTIME_... or WATTSCALE_...)."""
    url: str = "https://api.watttime.org"
    """API base URL: https (plain http only to a loopback address)."""
    horizon_hours: int = 2
    """Forecast horizon asked for, in hours (at least `lead_s`)."""
    timeout_s: float = 10.0
    """Timeout of each request (at most 60 s: the source counts as failed, and the safe budget may apply, only once
    a request has returned)."""

    def check(self, where: str) -> None:
        super().check(where)
        check_range(self, where, ("timeout_s",), 0.0, MAX_TIMEOUT_S, low_open=True)
        if not self.region:
            raise ConfigError(f"{where}.region", "must not be empty")
        check_secret_source(self, where, "WATTTIME_", self.SECRETS)
        if not 1 <= self.horizon_hours <= 72 or self.horizon_hours * 3600 < self.lead_s:
            raise ConfigError(f"{where}.horizon_hours", f"must be in 1..72 and cover lead_s, got {self.horizon_hours}")


@dataclass(frozen=True, kw_only=True)
class CarbonCsvSettings(CarbonSettings):
    path: str
    """CSV in Electricity Maps' export format; rows after `now` serve as forecast."""
    basis: Literal["direct", "life_cycle"] = "life_cycle"
    """Which intensity column to read."""

    def check(self, where: str) -> None:
        super().check(where)
        if not self.path:
            raise ConfigError(f"{where}.path", "must not be empty")


@dataclass(frozen=True, kw_only=True)
class DemandResponseSettings(SourceSettings):
    path: str
    """The signal file the daemon re-reads when it changes (the loopback endpoint writes it too)."""
    retry_s: float = 5.0
    """Delay before a broken or unreadable signal file is read again (at most 60 s: a signal written meanwhile
    waits for it)."""
    port: int = 0
    """A port on 127.0.0.1 where the daemon takes POSTed signals into `path` (loopback only); 0: none."""
    token_env: str = "WATTSCALE_SIGNAL_TOKEN"
    """The environment variable holding the token each request to `port` must carry (`Authorization: Bearer`), 16
    characters at least: loopback alone let any local user replace the utility's signal, or hold every GPU at its
    floor for good."""

    def check(self, where: str) -> None:
        check_range(self, where, ("retry_s",), 0.0, MAX_RETRY_S, low_open=True)
        if not self.path:
            raise ConfigError(f"{where}.path", "must not be empty")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{where}.port", f"must be in 0..65535, got {self.port}")
        if not re.fullmatch(r"WATTSCALE_[A-Z0-9_]+", self.token_env):  # not another secret of the process
            raise ConfigError(f"{where}.token_env", f"must name a variable starting with WATTSCALE_, got "
                              f"{self.token_env!r:.60}")


KINDS: dict[str, type[SourceSettings]] = {
    "fixed": FixedSettings, "schedule": ScheduleSettings, "electricitymaps": ElectricityMapsSettings,
    "watttime": WattTimeSettings, "carbon_csv": CarbonCsvSettings, "demand_response": DemandResponseSettings,
}


@dataclass(frozen=True)
class BudgetSettings:
    safe_budget_w: float
    """Budget a failed source counts as once its last value is older than `ttl_s`."""
    ttl_s: float = 1800.0
    """How long a failed source's last good value still holds."""
    sources: tuple[tuple[str, SourceSettings], ...] = ()
    """(name, settings) of each source, in config order; the lowest budget wins."""

    def check(self, where: str) -> None:
        check_positive(self, where, ("safe_budget_w", "ttl_s"))


def budget_settings(data: dict[str, Any], where: str = "power.budget") -> BudgetSettings:
    """The `[power.budget]` table: `safe_budget_w`, `ttl_s` and `[[...sources]]`, each with a `kind`."""
    rest = dict(data)
    raw = rest.pop("sources", [])
    budget = build(BudgetSettings, rest, where)  # its own keys first: a misspelled `sources` is named, as unknown
    if not isinstance(raw, list):
        raise ConfigError(f"{where}.sources", "must be a list of tables")
    sources: dict[str, SourceSettings] = {}
    for i, table in enumerate(raw):
        at = f"{where}.sources[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(at, "must be a table")
        fields = dict(table)
        kind = fields.pop("kind", None)
        if kind is None:
            raise ConfigError(f"{at}.kind", f"required key is missing (one of {sorted(KINDS)})")
        if not isinstance(kind, str) or kind not in KINDS:
            raise ConfigError(f"{at}.kind", f"unknown source {quoted(kind)} (expected one of {sorted(KINDS)})")
        settings = build(KINDS[kind], fields, at)
        if settings.name:  # it names log lines and budget changes, as a service's or a domain's name does
            check_name(settings.name, at)
        name = settings.name or str(kind)
        if name in sources:
            raise ConfigError(f"{at}.name", f"{quoted(name)} names another source too")
        sources[name] = settings
    if all(isinstance(s, DemandResponseSettings) for s in sources.values()):
        raise ConfigError(f"{where}.sources", "needs a source besides demand response, which sets no budget while "
                          'no signal is in force: add one for the rest of the time, e.g. { kind = "fixed", '
                          "budget_w = ... }")
    return dataclasses.replace(budget, sources=tuple(sources.items()))
