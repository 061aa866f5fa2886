"""Grid carbon intensity from the two APIs of REFERENCE.md section 9, as feeds for the carbon source.

Electricity Maps v3: `GET /v3/carbon-intensity/latest?zone=Z` answers `{zone, carbonIntensity, datetime,
updatedAt, isEstimated}`, `GET /v3/carbon-intensity/forecast?zone=Z` answers `{zone, forecast:
[{carbonIntensity, datetime}], updatedAt}`; both take the token in the `auth-token` header. The latest
value is always asked, as the point in force; the forecast only when configured (it needs a plan with it).

WattTime v3: `GET /login` with basic auth answers `{token}` (valid about 30 min); `GET /v3/forecast?region=R&
signal_type=co2_moer` with `Authorization: Bearer <token>` answers `{data: [{point_time, value}], meta:
{units: "lbs_co2_per_mwh", ...}}`. The token is kept until a 401 says it expired: then one new login and
one more try. Values are converted to gCO2/kWh.
"""

from __future__ import annotations

import base64
import urllib.parse
from typing import Any

from controller.budget.api_http import (
    Fetch,
    HttpAnswer,
    MalformedAnswer,
    checked,
    http_get,
    json_object,
    number,
    parse_time_s,
    reach,
)
from controller.budget.base import PermanentBudgetError
from controller.budget.carbon import IntensityPoint

G_PER_KWH_PER_LBS_PER_MWH = 0.4536
"""1 lb = 453.6 g and 1 MWh = 1000 kWh."""


def em_point(doc: dict[str, Any], what: str) -> IntensityPoint:
    """The point of an Electricity Maps `/latest` answer or forecast entry."""
    return IntensityPoint(parse_time_s(doc.get("datetime"), what), number(doc.get("carbonIntensity"), what))


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
                                  lbs_per_mwh * G_PER_KWH_PER_LBS_PER_MWH))
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
