"""Grid-carbon budgets: the curve, the look-ahead over a forecast, and the Electricity Maps and WattTime
clients against loopback fakes serving recorded answers in each API's documented format."""

from __future__ import annotations

import threading
import time

import pytest
from fake_budget_api import FakeBudgetApi, Reply, recorded

from controller.budget.api_http import MalformedAnswer, parse_time_s
from controller.budget.base import BudgetReading, PendingBudgetError, PermanentBudgetError, TransientBudgetError
from controller.budget.carbon import CarbonBudgetSource, IntensityPoint, PowerCurve, check_curve
from controller.budget.carbon_feeds import ElectricityMapsFeed, WattTimeFeed
from controller.budget.prefetch import Prefetching
from controller.config_loader import ConfigError

T0 = parse_time_s("2026-12-01T15:00:00Z", "test")
CURVE = PowerCurve([(100.0, 3000.0), (500.0, 1000.0)])
EM_OK = {"/v3/carbon-intensity/latest": [Reply(200, recorded("em_latest_DE.json"))],
         "/v3/carbon-intensity/forecast": [Reply(200, recorded("em_forecast_DE.json"))]}
WT_OK = {"/login": [Reply(200, recorded("wt_login.json"))],
         "/v3/forecast": [Reply(200, recorded("wt_forecast_CAISO_NORTH.json"))]}


def test_the_curve_interpolates_and_holds_its_ends() -> None:
    assert CURVE.watts(50.0) == 3000.0
    assert CURVE.watts(300.0) == 2000.0
    assert CURVE.watts(900.0) == 1000.0
    assert PowerCurve([(200.0, 1500.0)]).watts(10.0) == 1500.0


@pytest.mark.parametrize(("points", "field", "reason"), [
    ([], "c", "at least one"),
    ([(100.0, 3000.0), (100.0, 2000.0)], "c[1]", "rise strictly"),
    ([(100.0, 2000.0), (400.0, 2500.0)], "c[1]", "not monotonic"),
    ([(100.0, 0.0)], "c[0]", "watts"),
    ([(100.0, 3000.0, 5.0)], "c[0]", "must be"),
    ([(110.0, 1e308), (300.0, 2400.0)], "c[0]", r"watts must be in \(0, 1e\+08\], got 1e\+308"),  # -inf W, said ok
    ([(0.0, 3000.0), (1e308, 2000.0)], "c[1]", r"intensity must be in \[0, 5000\] gCO2/kWh"),
])
def test_a_bad_curve_is_refused_by_field(points: list[tuple[float, ...]], field: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as caught:
        check_curve(points, "c")
    assert caught.value.where == field


class ListFeed:
    name = "test"

    def __init__(self, points: list[IntensityPoint]) -> None:
        self.points, self.calls = points, 0

    def fetch(self, now: float) -> list[IntensityPoint]:
        self.calls += 1
        return self.points


def test_a_forecast_drop_within_the_lead_lowers_the_budget_ahead() -> None:
    feed = ListFeed([IntensityPoint(T0, 100.0), IntensityPoint(T0 + 3600, 500.0)])
    source = CarbonBudgetSource(feed, CURVE, lead_s=1800.0, refresh_s=900.0)
    assert source.step(T0).budget_w == 3000.0
    ahead = source.step(T0 + 1800.0)
    assert ahead.budget_w == 1000.0 and "in 30 min" in ahead.why
    assert ahead.valid_until_s == T0 + 3600  # the next point's start
    assert feed.calls == 2  # asked again after refresh_s, not at every step
    source.step(T0 + 1900.0)
    assert feed.calls == 2


def test_no_intensity_in_force_is_transient_until_the_next_refresh() -> None:
    source = CarbonBudgetSource(ListFeed([IntensityPoint(T0, 100.0)]), CURVE, refresh_s=600.0, stale_after_s=3600.0)
    with pytest.raises(TransientBudgetError, match="no intensity"):
        source.step(T0 - 10.0)  # only a point in the future
    with pytest.raises(TransientBudgetError) as caught:
        source.step(T0 + 3601.0)
    assert caught.value.retry_after_s == 600.0


def test_electricity_maps_latest_and_forecast_map_to_watts_ahead() -> None:
    with FakeBudgetApi(EM_OK) as api:
        feed = ElectricityMapsFeed("DE", "t0k", api.url, timeout_s=2.0)
        reading = CarbonBudgetSource(feed, CURVE, lead_s=3600.0).step(T0 + 1800.0)
        points = feed.fetch(T0)
    assert api.paths()[:2] == ["/v3/carbon-intensity/latest", "/v3/carbon-intensity/forecast"]
    assert all(r.headers["auth-token"] == "t0k" and "zone=DE" in r.path for r in api.requests)
    assert reading.budget_w == pytest.approx(1950.0)  # 310 g at 16:00 beats 302 g now
    assert "electricitymaps DE 310 gCO2/kWh in 30 min" in reading.why
    assert [p.at_s - T0 for p in points if p.at_s > T0] == [3600.0, 7200.0, 14400.0]  # the null hour is left out
    assert CarbonBudgetSource(ListFeed(points), CURVE, lead_s=7200.0).step(T0).budget_w == pytest.approx(1225.0)


def test_electricity_maps_without_forecast_asks_latest_only() -> None:
    with FakeBudgetApi(EM_OK) as api:
        points = ElectricityMapsFeed("DE", "t0k", api.url, use_forecast=False, timeout_s=2.0).fetch(T0)
    assert points == [IntensityPoint(T0, 302.0)] and api.paths() == ["/v3/carbon-intensity/latest"]


@pytest.mark.parametrize(("reply", "error", "retry_s"), [
    (Reply(401, b'{"message": "Invalid token"}'), PermanentBudgetError, None),
    (Reply(403, b'{"message": "zone not in plan"}'), PermanentBudgetError, None),
    (Reply(429, b'{"message": "rate limited"}', {"Retry-After": "42"}), TransientBudgetError, 42.0),
    (Reply(200, b"<html>maintenance</html>"), MalformedAnswer, 60.0),
    (Reply(200, b'{"zone": "DE", "datetime": "2026-12-01T15:00:00.000Z"}'), MalformedAnswer, 60.0),
    (Reply(200, recorded("em_latest_DE.json"), delay_s=0.5), TransientBudgetError, 300.0),
])
def test_electricity_maps_failures_are_sorted_by_recovery(reply: Reply, error: type[Exception],
                                                           retry_s: float | None) -> None:
    with FakeBudgetApi({"/v3/carbon-intensity/latest": [reply]}) as api, pytest.raises(error) as caught:
        ElectricityMapsFeed("DE", "t0k", api.url, timeout_s=0.2).fetch(T0)
    if retry_s is not None:
        assert isinstance(caught.value, TransientBudgetError) and caught.value.retry_after_s == retry_s


def test_watttime_logs_in_once_and_converts_lbs_per_mwh() -> None:
    with FakeBudgetApi(WT_OK) as api:
        feed = WattTimeFeed("CAISO_NORTH", "ann", "s3cret", api.url, timeout_s=2.0)
        points = feed.fetch(T0)
        feed.fetch(T0 + 300.0)
    assert api.paths() == ["/login", "/v3/forecast", "/v3/forecast"]
    assert api.requests[0].headers["authorization"] == "Basic YW5uOnMzY3JldA=="  # ann:s3cret
    assert api.requests[1].headers["authorization"] == "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.fake.token"
    assert "region=CAISO_NORTH" in api.requests[1].path and "signal_type=co2_moer" in api.requests[1].path
    assert points[0] == IntensityPoint(T0, pytest.approx(453.6))
    reading = CarbonBudgetSource(ListFeed(points), CURVE, lead_s=600.0).step(T0 + 60.0)
    assert reading.budget_w == 1000.0 and "in 9 min" in reading.why  # 1200 lbs/MWh at 15:10


def test_watttime_logs_in_again_when_its_token_expired() -> None:
    routes = {**WT_OK, "/v3/forecast": [Reply(401, b'{"error": "expired"}'),
                                        Reply(200, recorded("wt_forecast_CAISO_NORTH.json"))]}
    with FakeBudgetApi(routes) as api:
        feed = WattTimeFeed("CAISO_NORTH", "ann", "s3cret", api.url, timeout_s=2.0)
        feed.token = "old"
        assert len(feed.fetch(T0)) == 4
    assert api.paths() == ["/v3/forecast", "/login", "/v3/forecast"]


@pytest.mark.parametrize(("routes", "error", "retry_s"), [
    ({"/login": [Reply(401, b"")]}, PermanentBudgetError, None),
    ({**WT_OK, "/v3/forecast": [Reply(401, b"")]}, PermanentBudgetError, None),  # a fresh token refused too
    ({**WT_OK, "/v3/forecast": [Reply(403, b'{"error": "region not in plan"}')]}, PermanentBudgetError, None),
    ({**WT_OK, "/v3/forecast": [Reply(429, b"", {"Retry-After": "7"})]}, TransientBudgetError, 7.0),
    ({**WT_OK, "/v3/forecast": [Reply(200, b'{"data": [], "meta": {"units": "g_co2_per_kwh"}}')]},
     MalformedAnswer, 60.0),
    ({**WT_OK, "/v3/forecast": [Reply(200, b'{"data": [{"point_time": "x", "value": 1}], '
                                            b'"meta": {"units": "lbs_co2_per_mwh"}}')]}, MalformedAnswer, 60.0),
    ({"/login": [Reply(200, b'{"token": ""}')]}, MalformedAnswer, 60.0),
    ({"/login": [Reply(200, recorded("wt_login.json"), delay_s=0.5)]}, TransientBudgetError, 300.0),
])
def test_watttime_failures_are_sorted_by_recovery(routes: dict[str, list[Reply]], error: type[Exception],
                                                  retry_s: float | None) -> None:
    with FakeBudgetApi(routes) as api, pytest.raises(error) as caught:
        WattTimeFeed("CAISO_NORTH", "ann", "s3cret", api.url, timeout_s=0.2).fetch(T0)
    if retry_s is not None:
        assert isinstance(caught.value, TransientBudgetError) and caught.value.retry_after_s == retry_s


class GatedFeed:
    """A feed whose fetch waits until the test opens its gate, then answers its points or raises its error."""

    name = "gated"

    def __init__(self, points: list[IntensityPoint], error: Exception | None = None) -> None:
        self.points, self.error, self.gate, self.fetches = points, error, threading.Event(), 0

    def fetch(self, now: float) -> list[IntensityPoint]:
        self.fetches += 1
        assert self.gate.wait(30.0)
        if self.error is not None:
            raise self.error
        return self.points


def answered(source: CarbonBudgetSource, now: float) -> BudgetReading:
    """The source's reading once the fetch in flight has ended (a step does not wait for one it did not ask)."""
    for _ in range(3000):
        try:
            return source.step(now)
        except PendingBudgetError:
            time.sleep(0.01)
    raise AssertionError("the fetch never ended")


def test_a_fetch_in_flight_is_pending_then_answers_and_the_source_holds_its_points_meanwhile() -> None:
    """One fetch at a time, waited for by the step that asks; the carbon source answers from the points it holds
    while the next is in flight; the answer's own error comes through as the feed raised it."""
    feed = GatedFeed([IntensityPoint(T0, 100.0)])
    source = CarbonBudgetSource(Prefetching(feed, wait_s=0.05), CURVE, refresh_s=600.0)
    with pytest.raises(PendingBudgetError, match="gated: its answer is pending"):
        source.step(T0)  # nothing held yet
    feed.gate.set()
    assert answered(source, T0 + 1.0).budget_w == 3000.0 and feed.fetches == 1
    feed.gate.clear()
    feed.points = [IntensityPoint(T0, 500.0)]
    with pytest.raises(PendingBudgetError) as pending:  # the refresh is in flight: no fresh answer ...
        source.step(T0 + 700.0)
    assert pending.value.held is not None and pending.value.held.budget_w == 3000.0  # ... the points held meanwhile
    feed.error = PermanentBudgetError("gated: token refused")
    feed.gate.set()
    with pytest.raises(PermanentBudgetError, match=r"^gated: token refused$"):
        answered(source, T0 + 701.0)  # pending, until the worker's answer is taken
    assert feed.fetches == 2


def test_a_refresh_is_not_waited_for_only_a_feed_that_never_answered() -> None:
    """Each refresh's step waited half a second for its API: four feeds refreshing at once held a demand-response
    signal back two seconds. A feed that has answered is not waited for: its refresh is taken a step later."""
    feed = GatedFeed([IntensityPoint(T0, 100.0)])
    prefetch = Prefetching(feed, wait_s=0.3)
    feed.gate.set()
    assert [p.g_per_kwh for p in prefetch.fetch(T0)] == [100.0]  # the first answer, waited for
    feed.gate.clear()
    started = time.monotonic()
    with pytest.raises(PendingBudgetError):
        prefetch.fetch(T0 + 700.0)
    assert time.monotonic() - started < 0.2
    feed.gate.set()
    while True:
        try:
            assert [p.g_per_kwh for p in prefetch.fetch(T0 + 701.0)] == [100.0]
            break
        except PendingBudgetError:
            time.sleep(0.01)


def test_a_clock_stepped_back_past_the_last_fetch_fetches_again() -> None:
    """Its next fetch had waited out the step (an hour back: the intensities of an hour ago kept a refresh late)."""
    feed = ListFeed([IntensityPoint(T0 - 7200, 100.0), IntensityPoint(T0, 100.0)])
    source = CarbonBudgetSource(feed, CURVE, refresh_s=900.0)
    source.step(T0)
    source.step(T0 + 60.0)
    assert feed.calls == 1
    source.step(T0 - 3600.0)
    assert feed.calls == 2
