"""Grid carbon intensity from the WattTime v3 API (REFERENCE.md section 9).

`GET /login` with basic auth answers `{token}` (valid about 30 min); `GET /v3/forecast?region=R&
signal_type=co2_moer` with `Authorization: Bearer <token>` answers `{data: [{point_time, value}], meta:
{units: "lbs_co2_per_mwh", ...}}`. The token is kept until a 401 says it expired: then one new login and
one more try. Values are converted to gCO2/kWh (lbs/MWh x 0.4536).
"""

from __future__ import annotations

import base64
import urllib.parse
from typing import Any

from controller.budget.base import PermanentBudgetError
from controller.budget.carbon import IntensityPoint
from controller.budget.http import (
    Fetch,
    HttpAnswer,
    MalformedAnswer,
    checked,
    http_get,
    json_object,
    number,
    parse_time_s,
)

DEFAULT_URL = "https://api.watttime.org"
G_PER_KWH_PER_LBS_PER_MWH = 0.4536
"""1 lb = 453.6 g and 1 MWh = 1000 kWh."""


def forecast_points(doc: dict[str, Any], what: str) -> list[IntensityPoint]:
    """The points of a `/v3/forecast` answer in gCO2/kWh; units other than lbs/MWh are refused."""
    units = doc.get("meta", {}).get("units") if isinstance(doc.get("meta"), dict) else None
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
    def __init__(self, region: str, username: str, password: str, url: str = DEFAULT_URL,
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
        answer = self.http(self.base + "/login", self.login_headers, self.timeout_s)
        token = json_object(checked(answer, what, self.retry_s), what).get("token")
        if not isinstance(token, str) or not token:
            raise MalformedAnswer(f"{what}: no token")
        return token

    def ask_forecast(self) -> HttpAnswer:
        query = urllib.parse.urlencode({"region": self.region, "signal_type": "co2_moer",
                                        "horizon_hours": self.horizon_hours})
        headers = {"Authorization": f"Bearer {self.token}"}
        return self.http(f"{self.base}/v3/forecast?{query}", headers, self.timeout_s)

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
        return forecast_points(json_object(body, what), what)
