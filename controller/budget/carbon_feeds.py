"""Where grid carbon intensity comes from, as feeds for the carbon source: the Electricity Maps v3 and
WattTime v3 APIs, and a CSV in Electricity Maps' export format.

Electricity Maps v3: `GET /v3/carbon-intensity/latest?zone=Z` answers `{zone, carbonIntensity, datetime,
updatedAt, isEstimated}`, `GET /v3/carbon-intensity/forecast?zone=Z` answers `{zone, forecast:
[{carbonIntensity, datetime}], updatedAt}`; both take the token in the `auth-token` header. The latest
value is always asked, as the point in force; the forecast only when configured (it needs a plan with it).

WattTime v3: `GET /login` with basic auth answers `{token}` (valid about 30 min); `GET /v3/forecast?region=R&
signal_type=co2_moer` with `Authorization: Bearer <token>` answers `{data: [{point_time, value}], meta:
{units: "lbs_co2_per_mwh", ...}}`. The token is kept until a 401 says it expired: then one new login and
one more try. Values are converted to gCO2/kWh.

CSV export: columns are matched by meaning, case-insensitively, since header spellings differ between export
versions: the datetime (UTC) column and the direct or life-cycle intensity column, in gCO2eq/kWh (a column in
another zone or unit is refused by name). Rows with an empty
intensity are left out. Every row after `now` serves as forecast: the file is a known curve (a scenario's
day, or a day-ahead table an operator drops in). The file is read again when it changes.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import os
import urllib.parse
from typing import Any, Literal

from controller.budget.api_http import (
    Fetch,
    MalformedAnswer,
    checked,
    http_get,
    json_object,
    number,
    parse_time_s,
    reach,
    within_years,
)
from controller.budget.base import PermanentBudgetError, TransientBudgetError
from controller.budget.carbon import MAX_INTENSITY, IntensityPoint
from controller.http_fetch import HttpAnswer
from tuner.own_files import open_plain

G_PER_KWH_PER_LBS_PER_MWH = 0.4536
"""1 lb = 453.6 g and 1 MWh = 1000 kWh."""


def intensity(g_per_kwh: float, what: str, written: str | None = None) -> float:
    """An intensity a grid can have, in [0, MAX_INTENSITY] gCO2/kWh (NaN is not), an API's and a CSV's alike: an
    API's -5 read as the cleanest grid there is (the curve's highest budget). `written`: the value as the file has
    it, for the message."""
    if not 0.0 <= g_per_kwh <= MAX_INTENSITY:
        got = f"{g_per_kwh:g}" if written is None else repr(written.strip()[:40])
        raise MalformedAnswer(f"{what}: intensity must be in [0, {MAX_INTENSITY:g}] gCO2/kWh, got {got}")
    return g_per_kwh


def em_point(doc: dict[str, Any], what: str) -> IntensityPoint:
    """The point of an Electricity Maps `/latest` answer or forecast entry."""
    return IntensityPoint(parse_time_s(doc.get("datetime"), what),
                          intensity(number(doc.get("carbonIntensity"), what), what))


def em_forecast_points(doc: dict[str, Any], what: str) -> list[IntensityPoint]:
    """The points of an Electricity Maps `/forecast` answer; an entry without an intensity (null) is left out."""
    entries = doc.get("forecast")
    if not isinstance(entries, list):
        raise MalformedAnswer(f"{what}: no forecast list")
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise MalformedAnswer(f"{what}: forecast entry {entry!r} is not an object")
        if entry.get("carbonIntensity") is not None:
            out.append(em_point(entry, what))
    return out


class ElectricityMapsFeed:
    def __init__(self, zone: str, token: str, url: str = "https://api.electricitymap.org", use_forecast: bool = True,
                 timeout_s: float = 10.0, fetch: Fetch = http_get, retry_s: float = 300.0) -> None:
        self.zone, self.token, self.use_forecast = zone, token, use_forecast
        self.base = url.rstrip("/") + "/v3/carbon-intensity/"
        self.timeout_s, self.http, self.retry_s = timeout_s, fetch, retry_s
        self.name = f"electricitymaps {zone}"

    def get(self, endpoint: str) -> dict[str, Any]:
        url = self.base + endpoint + "?" + urllib.parse.urlencode({"zone": self.zone})
        what = f"{self.name} {endpoint}"
        answer = reach(self.http, url, {"auth-token": self.token}, self.timeout_s, what, self.retry_s)
        return json_object(checked(answer, what, self.retry_s), what)

    def fetch(self, now: float) -> list[IntensityPoint]:
        points = [em_point(self.get("latest"), f"{self.name} latest")]
        if self.use_forecast:
            points += em_forecast_points(self.get("forecast"), f"{self.name} forecast")
        return points


def wt_forecast_points(doc: dict[str, Any], what: str) -> list[IntensityPoint]:
    """The points of a WattTime `/v3/forecast` answer in gCO2/kWh; units other than lbs/MWh are refused."""
    meta = doc.get("meta")
    units = meta.get("units") if isinstance(meta, dict) else None
    if units != "lbs_co2_per_mwh":
        raise MalformedAnswer(f"{what}: units {units!r}, expected 'lbs_co2_per_mwh'")
    data = doc.get("data")
    if not isinstance(data, list):
        raise MalformedAnswer(f"{what}: no data list")
    out = []
    for entry in data:
        if not isinstance(entry, dict):
            raise MalformedAnswer(f"{what}: data entry {entry!r} is not an object")
        lbs_per_mwh = number(entry.get("value"), what)
        out.append(IntensityPoint(parse_time_s(entry.get("point_time"), what),
                                  intensity(lbs_per_mwh * G_PER_KWH_PER_LBS_PER_MWH, what)))
    return out


class WattTimeFeed:
    def __init__(self, region: str, username: str, password: str, url: str = "https://api.watttime.org",
                 horizon_hours: int = 2, timeout_s: float = 10.0, fetch: Fetch = http_get,
                 retry_s: float = 300.0) -> None:
        self.region, self.horizon_hours = region, horizon_hours
        self.base = url.rstrip("/")
        basic = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.login_headers = {"Authorization": f"Basic {basic}"}
        self.timeout_s, self.http, self.retry_s = timeout_s, fetch, retry_s
        self.token = ""
        self.name = f"watttime {region}"

    def login(self) -> str:
        what = f"{self.name} login"
        answer = reach(self.http, self.base + "/login", self.login_headers, self.timeout_s, what, self.retry_s)
        token = json_object(checked(answer, what, self.retry_s), what).get("token")
        if not isinstance(token, str) or not token:
            raise MalformedAnswer(f"{what}: no token")
        return token

    def ask_forecast(self) -> HttpAnswer:
        query = urllib.parse.urlencode({"region": self.region, "signal_type": "co2_moer",
                                        "horizon_hours": self.horizon_hours})
        headers = {"Authorization": f"Bearer {self.token}"}
        url = f"{self.base}/v3/forecast?{query}"
        return reach(self.http, url, headers, self.timeout_s, f"{self.name} forecast", self.retry_s)

    def fetch(self, now: float) -> list[IntensityPoint]:
        what = f"{self.name} forecast"
        if not self.token:
            self.token = self.login()
        answer = self.ask_forecast()
        if answer.status == 401:  # the token expired: log in once more
            self.token = self.login()
            answer = self.ask_forecast()
        try:
            body = checked(answer, what, self.retry_s)
        except PermanentBudgetError:
            self.token = ""
            raise
        return wt_forecast_points(json_object(body, what), what)


Basis = Literal["direct", "life_cycle"]


def column_index(header: list[str], basis: Basis) -> tuple[int, int]:
    """The positions of the datetime (UTC) column and of the intensity column of `basis`, in grams a kWh. A
    datetime column in another zone, or an intensity in other units, is refused by name: read as UTC and as grams,
    a `Datetime (Local)` column shifted every point by the zone's offset, and a kgCO2eq/kWh one ran the budget at the
    curve's cleanest end all day."""
    names = [" ".join(h.lower().split()) for h in header]
    dated = [i for i, n in enumerate(names) if n.startswith("datetime")]
    when = [i for i in dated if names[i] in ("datetime", "datetime (utc)")]
    wanted = ("(direct)",) if basis == "direct" else ("(life cycle)", "(lifecycle)", "(life-cycle)", "(lca)")
    value = [i for i, n in enumerate(names) if "carbon intensity" in n and n.endswith(wanted)]
    grams = [i for i in value if _in_grams(names[i])]
    if len(header) < 2:  # not echoed: a file that is no CSV (a token, a password file) stays out of the logs
        raise MalformedAnswer("its first line holds no comma: not a CSV export with a header")
    if dated and not when:
        raise MalformedAnswer(f"column {header[dated[0]].strip()[:40]!r} is not in UTC: export the Datetime (UTC) "
                              "column")
    if value and not grams:
        raise MalformedAnswer(f"column {header[value[0]].strip()[:60]!r} is not in grams a kWh (gCO₂eq/kWh): "
                              "convert the file's values, or export them so")
    if not when or not grams:
        missing = "datetime" if not when else f"carbon intensity ({basis.replace('_', ' ')})"
        raise MalformedAnswer(f"no {missing} column in header {[h[:40] for h in header[:12]]}")
    return when[0], grams[0]


def _in_grams(name: str) -> bool:
    """Whether an intensity column's unit, between its name and its basis, is grams a kWh (or none is written, as
    in every export: grams)."""
    unit = name.split("carbon intensity", 1)[1].rsplit("(", 1)[0].replace(" ", "").strip("()[]")
    return not unit or (unit.startswith("g") and unit.endswith("/kwh"))


def parse_utc_s(text: str) -> float:
    """An export's time as Unix seconds: ISO 8601, with or without an offset (then UTC, as the column says)."""
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"time {text.strip()[:40]!r} is no ISO 8601 time (2026-03-01T14:00:00Z)") from None
    return within_years((t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp(), text)


def parse_intensity_csv(text: str, basis: Basis = "life_cycle", what: str = "csv") -> list[IntensityPoint]:
    """The (time, intensity) points of an export; a row that does not parse raises MalformedAnswer
    naming its line."""
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None:
        raise MalformedAnswer(f"{what}: empty file")
    try:
        t_col, v_col = column_index(header, basis)
    except MalformedAnswer as exc:
        raise MalformedAnswer(f"{what}: {exc}") from exc
    out: list[IntensityPoint] = []
    lines: dict[float, int] = {}
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(t_col, v_col):
            fields = f"{len(row)} field{'s' * (len(row) != 1)}"
            raise MalformedAnswer(f"{what}: line {line}: {fields}, where the header puts its time in field "
                                  f"{t_col + 1} and its intensity in field {v_col + 1}")
        if not row[v_col].strip():
            continue
        try:
            at_s = parse_utc_s(row[t_col])
        except (ValueError, OverflowError) as exc:
            raise MalformedAnswer(f"{what}: line {line}: {exc}") from exc
        try:
            point = IntensityPoint(at_s, float(row[v_col]))
        except ValueError as exc:
            raise MalformedAnswer(f"{what}: line {line}: intensity {row[v_col].strip()[:40]!r} is no number") from exc
        intensity(point.g_per_kwh, f"{what}: line {line}", row[v_col])
        if lines.setdefault(point.at_s, line) != line:  # two rows for one time: which one holds is a guess
            raise MalformedAnswer(f"{what}: line {line}: its time repeats line {lines[point.at_s]}'s")
        out.append(point)
    return out


MAX_CSV_CHARS = 16 << 20
"""Longest carbon CSV read (a year's Electricity Maps export by the hour is about 1.3 MB)."""


class CsvIntensityFeed:
    def __init__(self, path: str, basis: Basis = "life_cycle", retry_s: float = 60.0) -> None:
        self.path, self.basis, self.retry_s = path, basis, retry_s
        self.name = f"csv {os.path.basename(path)}"
        self.seen: tuple[int, int, int] | None = None
        self.points: list[IntensityPoint] = []

    def fetch(self, now: float) -> list[IntensityPoint]:
        try:
            st = os.stat(self.path)
            if (st.st_mtime_ns, st.st_size, st.st_ino) != self.seen:
                with open_plain(self.path, "r", encoding="utf-8-sig") as f:
                    text = f.read(MAX_CSV_CHARS + 1)
                if len(text) > MAX_CSV_CHARS:  # 100 MB took 7.6 s and 1 GB a read, and again each time it changed
                    raise MalformedAnswer(f"{self.name}: {self.path} is over {MAX_CSV_CHARS >> 20} Mi characters (a "
                                          "year of hourly points is under 2); keep the days the budget needs")
                self.points = parse_intensity_csv(text, self.basis, self.name)
                self.seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as exc:
            raise TransientBudgetError(f"{self.name}: {self.path}: {exc.strerror or exc}", self.retry_s) from exc
        except (UnicodeDecodeError, csv.Error) as exc:
            raise MalformedAnswer(f"{self.name}: not a CSV text file ({exc})", self.retry_s) from exc
        except MalformedAnswer as exc:
            raise MalformedAnswer(str(exc), self.retry_s) from exc
        return self.points
