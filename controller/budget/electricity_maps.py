"""Grid carbon intensity from the Electricity Maps v3 API (REFERENCE.md section 9).

`GET /v3/carbon-intensity/latest?zone=Z` answers `{zone, carbonIntensity, datetime, updatedAt,
isEstimated}`; `GET /v3/carbon-intensity/forecast?zone=Z` answers `{zone, forecast: [{carbonIntensity,
datetime}], updatedAt}`. Both take the token in the `auth-token` header. The forecast is asked only when
configured (it needs a plan that includes it); the latest value is always asked, as the point in force.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from controller.budget.carbon import IntensityPoint
from controller.budget.http import Fetch, MalformedAnswer, checked, http_get, json_object, number, parse_time_s

DEFAULT_URL = "https://api.electricitymap.org"


def latest_point(doc: dict[str, Any], what: str) -> IntensityPoint:
    """The point of a `/latest` answer."""
    return IntensityPoint(parse_time_s(doc.get("datetime"), what), number(doc.get("carbonIntensity"), what))


def forecast_points(doc: dict[str, Any], what: str) -> list[IntensityPoint]:
    """The points of a `/forecast` answer; an entry without an intensity (null) is left out."""
    entries = doc.get("forecast")
    if not isinstance(entries, list):
        raise MalformedAnswer(f"{what}: no forecast list")
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise MalformedAnswer(f"{what}: forecast entry {entry!r} is not an object")
        if entry.get("carbonIntensity") is not None:
            out.append(latest_point(entry, what))
    return out


class ElectricityMapsFeed:
    def __init__(self, zone: str, token: str, url: str = DEFAULT_URL, use_forecast: bool = True,
                 timeout_s: float = 10.0, fetch: Fetch = http_get, retry_s: float = 300.0) -> None:
        self.zone, self.token, self.use_forecast = zone, token, use_forecast
        self.base = url.rstrip("/") + "/v3/carbon-intensity/"
        self.timeout_s, self.http, self.retry_s = timeout_s, fetch, retry_s
        self.name = f"electricitymaps {zone}"

    def get(self, endpoint: str) -> dict[str, Any]:
        url = self.base + endpoint + "?" + urllib.parse.urlencode({"zone": self.zone})
        answer = self.http(url, {"auth-token": self.token}, self.timeout_s)
        what = f"{self.name} {endpoint}"
        return json_object(checked(answer, what, self.retry_s), what)

    def fetch(self, now: float) -> list[IntensityPoint]:
        points = [latest_point(self.get("latest"), f"{self.name} latest")]
        if self.use_forecast:
            points += forecast_points(self.get("forecast"), f"{self.name} forecast")
        return points
