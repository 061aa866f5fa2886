"""The budget sources' HTTP seam against a loopback fake: every status sorted by how to recover."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from fake_budget_api import FakeBudgetApi, Reply

from controller.budget.api_http import (
    MalformedAnswer,
    checked,
    http_get,
    json_object,
    parse_time_s,
    reach,
    retry_after_s,
)
from controller.budget.base import PermanentBudgetError, TransientBudgetError
from controller.budget.carbon_feeds import em_point
from controller.http_fetch import HttpAnswer


def test_a_2xx_body_comes_back_and_headers_reach_the_server() -> None:
    with FakeBudgetApi({"/x": [Reply(200, b'{"a": 1}')]}) as api:
        answer = http_get(api.url + "/x?zone=DE", {"auth-token": "t0k"}, 2.0)
    assert json_object(checked(answer, "x", 60.0), "x") == {"a": 1}
    assert api.requests[0].path == "/x?zone=DE" and api.requests[0].headers["auth-token"] == "t0k"


@pytest.mark.parametrize("status", [401, 403, 404])
def test_refused_credentials_and_other_4xx_are_permanent(status: int) -> None:
    with FakeBudgetApi({"/x": [Reply(status, b'{"message": "no"}')]}) as api:
        answer = http_get(api.url + "/x", {}, 2.0)
    with pytest.raises(PermanentBudgetError, match=f"HTTP {status}"):
        checked(answer, "x", 60.0)


def test_429_waits_its_retry_after() -> None:
    with FakeBudgetApi({"/x": [Reply(429, b"{}", {"Retry-After": "120"})]}) as api:
        answer = http_get(api.url + "/x", {}, 2.0)
    with pytest.raises(TransientBudgetError) as caught:
        checked(answer, "x", 60.0)
    assert caught.value.retry_after_s == 120.0


def test_5xx_without_retry_after_waits_the_default() -> None:
    with FakeBudgetApi({"/x": [Reply(503, b"<html>down</html>")]}) as api:
        answer = http_get(api.url + "/x", {}, 2.0)
    with pytest.raises(TransientBudgetError) as caught:
        checked(answer, "x", 60.0)
    assert caught.value.retry_after_s == 60.0


def test_a_server_slower_than_the_timeout_is_transient() -> None:
    """Said as a timeout: it read "unreachable: RemoteDisconnected(...)", the socket the deadline had shut (a trial)."""
    with FakeBudgetApi({"/x": [Reply(200, b"{}", delay_s=0.5)]}) as api, \
            pytest.raises(TransientBudgetError, match=r"/x: no whole answer within 0\.1 s$") as caught:
        http_get(api.url + "/x", {}, 0.1)
    assert caught.value.retry_after_s == 0.1


def test_an_answer_broken_off_is_transient() -> None:
    with FakeBudgetApi({"/x": [Reply(200, b'{"a"', {"Content-Length": "50"})]}) as api, \
            pytest.raises(TransientBudgetError, match="broke off"):
        http_get(api.url + "/x", {}, 1.0)


def test_reach_waits_the_sources_delay_after_a_timeout() -> None:
    def silent(url: str, headers: Mapping[str, str], timeout_s: float) -> HttpAnswer:
        raise TransientBudgetError(f"{url} unreachable: timed out", timeout_s)

    with pytest.raises(TransientBudgetError, match=r"^em latest: x unreachable") as caught:
        reach(silent, "x", {}, 5.0, "em latest", 300.0)
    assert caught.value.retry_after_s == 300.0


def test_a_closed_port_is_transient() -> None:
    with FakeBudgetApi({}) as api:
        url = api.url
    with pytest.raises(TransientBudgetError):
        http_get(url + "/x", {}, 0.5)


def test_retry_after_as_an_http_date_counts_from_the_servers_date() -> None:
    headers = {"retry-after": "Tue, 01 Dec 2026 15:02:00 GMT", "date": "Tue, 01 Dec 2026 15:00:30 GMT"}
    assert retry_after_s(headers, 60.0) == 90.0
    assert retry_after_s({"retry-after": "soon"}, 60.0) == 60.0
    assert retry_after_s({"retry-after": "Tue, 01 Dec 2026 15:02:00 GMT"}, 60.0) == 60.0  # no Date to count from
    # within [1 s, an hour]: 1e308 s or the year 9999 never asked the source again, -5 asked it every tick
    assert retry_after_s({"retry-after": "-5"}, 60.0) == 1.0
    assert retry_after_s({"retry-after": "1e308"}, 60.0) == 3600.0
    assert retry_after_s({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT", "date": "Thu, 01 Jan 1970 00:00:00 GMT"},
                         60.0) == 3600.0


@pytest.mark.parametrize("body", [b"<html>gateway</html>", b"[1, 2]", b"", b"[" * 100_000])
def test_a_body_that_is_not_one_json_object_is_malformed(body: bytes) -> None:
    """Nested 100k deep: Python's recursion message, naming no endpoint, had come through."""
    with pytest.raises(MalformedAnswer, match=r"^x: "):
        json_object(body, "x")


@pytest.mark.parametrize("g", [-5.0, 5001.0])
def test_an_apis_intensity_out_of_any_grids_range_is_malformed(g: float) -> None:
    """-5 gCO2/kWh from the API read as the cleanest grid there is: the curve's highest budget (a CSV's row is refused
    so)."""
    with pytest.raises(MalformedAnswer, match=r"^em: intensity must be in \[0, 5000\] gCO2/kWh"):
        em_point({"datetime": "2026-12-01T15:00:00Z", "carbonIntensity": g}, "em")


def test_times_need_an_offset() -> None:
    assert parse_time_s("2026-12-01T15:00:00.000Z", "x") == parse_time_s("2026-12-01T16:00:00+01:00", "x")
    with pytest.raises(MalformedAnswer, match="no offset"):
        parse_time_s("2026-12-01T15:00:00", "x")
    with pytest.raises(MalformedAnswer):
        parse_time_s(1764601200, "x")
