"""The HTTP seam the API-backed budget sources share: one injectable GET, answers sorted by recovery.

`fetch(url, headers, timeout_s)` returns every HTTP answer, error statuses included, so that the sources
see 401/403 and a 429's Retry-After; only a server that cannot be reached or does not answer in time
raises (transient). Tests pass their own fetch or point the default one at a loopback fake.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from controller.budget.base import PermanentBudgetError, TransientBudgetError
from controller.http_fetch import HttpAnswer, Unreachable, http_request

Fetch = Callable[[str, Mapping[str, str], float], HttpAnswer]


MAX_BODY = 1 << 20
"""Most of an answer read (an intensity forecast is a few kB): a server that sends more is transient."""


def http_get(url: str, headers: Mapping[str, str], timeout_s: float) -> HttpAnswer:
    """GET `url` (controller.http_fetch: every status an answer, the whole answer within `timeout_s`, through the
    environment's proxies); a server that cannot be reached, is too slow or breaks off its answer raises
    TransientBudgetError with a delay of `timeout_s` (`reach` lengthens it to the source's own delay)."""
    try:
        return http_request(url, headers, timeout_s, max_body=MAX_BODY)
    except Unreachable as exc:
        raise TransientBudgetError(str(exc), retry_after_s=timeout_s) from exc


def reach(fetch: Fetch, url: str, headers: Mapping[str, str], timeout_s: float, what: str,
          retry_s: float) -> HttpAnswer:
    """`fetch` once; a server out of reach is tried again after `retry_s` at the soonest, not after its timeout
    (a dead API asked every few seconds would stall every step by its timeout)."""
    try:
        return fetch(url, headers, timeout_s)
    except TransientBudgetError as exc:
        raise TransientBudgetError(f"{what}: {exc}", max(exc.retry_after_s, retry_s)) from exc


def retry_after_s(headers: Mapping[str, str], default_s: float) -> float:
    """A Retry-After in seconds, or as an HTTP date counted from the answer's own Date header (the server's
    clock, never ours), within [1, MAX_RETRY_AFTER_S]; `default_s` when absent or unreadable."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return default_s
    try:
        seconds = float(value)
    except ValueError:
        try:
            until = email.utils.parsedate_to_datetime(value)
            sent = email.utils.parsedate_to_datetime(headers.get("date", ""))
        except (TypeError, ValueError):
            return default_s
        seconds = (until - sent).total_seconds()
    return min(max(1.0, seconds), MAX_RETRY_AFTER_S) if math.isfinite(seconds) else default_s


MAX_RETRY_AFTER_S = 3600.0
"""The longest Retry-After taken: 1e308 s (or a date in the year 9999) asked the source never again, a transient
answer made permanent; one under a second (or in the past) asked it every tick."""


def checked(answer: HttpAnswer, what: str, default_retry_s: float) -> bytes:
    """The body of a 2xx answer; 401/403 and other 4xx raise PermanentBudgetError, 429 and 5xx
    TransientBudgetError (after Retry-After when given)."""
    if 200 <= answer.status < 300:
        return answer.body
    if answer.status in (401, 403):
        raise PermanentBudgetError(f"{what}: HTTP {answer.status}, credentials refused")
    if answer.status == 429 or answer.status >= 500:
        delay_s = retry_after_s(answer.headers, default_retry_s)
        raise TransientBudgetError(f"{what}: HTTP {answer.status}, retry in {delay_s:.0f} s", delay_s)
    raise PermanentBudgetError(f"{what}: HTTP {answer.status}")


class MalformedAnswer(TransientBudgetError):
    """An answer whose body does not have the documented shape."""

    def __init__(self, message: str, retry_after_s: float = 60.0) -> None:
        super().__init__(message, retry_after_s)


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """A body that must be one JSON object; anything else is a malformed answer (transient: a proxy's
    error page or a truncated body usually passes)."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise MalformedAnswer(f"{what}: not JSON") from exc
    except RecursionError:  # nested thousands deep: Python's own message named no endpoint
        raise MalformedAnswer(f"{what}: JSON nested too deep") from None
    if not isinstance(doc, dict):
        raise MalformedAnswer(f"{what}: not a JSON object")
    return doc


LATEST_S = dt.datetime(9999, 1, 1, tzinfo=dt.UTC).timestamp()
"""No grid time reaches this, nor one before 1970: past either the log could not write it back as a UTC date."""


def within_years(t_s: float, text: str) -> float:
    """`t_s`, where it is a time a grid reports (1970 to 9998 UTC); ValueError naming `text` otherwise (year 1 at
    +05:00 is year 0 in UTC: the message that named it raised out of the daemon's start)."""
    if not 0.0 <= t_s < LATEST_S:
        raise ValueError(f"time {text.strip()[:40]!r} is outside 1970-9998 UTC")
    return t_s


def parse_time_s(value: object, what: str) -> float:
    """An ISO 8601 time with its offset ("Z" included) as Unix seconds; a naive time is refused."""
    if not isinstance(value, str):
        raise MalformedAnswer(f"{what}: time {value!r} is not a string")
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise MalformedAnswer(f"{what}: time {value!r} is not ISO 8601") from exc
    if t.tzinfo is None:
        raise MalformedAnswer(f"{what}: time {value!r} has no offset")
    try:
        return within_years(t.timestamp(), value)
    except ValueError as exc:
        raise MalformedAnswer(f"{what}: {exc}") from None


def number(value: object, what: str) -> float:
    """A finite JSON number (not a bool; an integer of hundreds of digits is out of range, not a traceback)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedAnswer(f"{what}: {repr(value)[:40]} is not a number")
    try:
        out = float(value)
    except OverflowError:
        raise MalformedAnswer(f"{what}: an integer out of a float's range") from None
    if not math.isfinite(out):
        raise MalformedAnswer(f"{what}: {out!r} is not a finite number")
    return out

