"""Prometheus' HTTP query API as every Prometheus-backed source reads it: the HTTP seam and its timeout, and the
answers (instant and range vectors) read strictly: an error envelope, a body that is not JSON or JSON of another shape
is a `BadAnswer` naming its query."""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Callable
from typing import Any

from controller.http_fetch import Unreachable, http_request
from controller.telemetry.base import TelemetryError, shortened
from controller.telemetry.counter_samples import Samples, range_counts

Fetch = Callable[[str, dict[str, str], float], bytes]
"""POST a form to a URL within a timeout, and return the answer's body (`http_post`; tests give their own)."""


class BadAnswer(TelemetryError):
    """Prometheus answered, but not a vector these readers can read."""


def http_post(url: str, form: dict[str, str], timeout_s: float) -> bytes:
    """POST a form (controller.http_fetch: the answer read whole within `timeout_s`); HTTP errors still
    return Prometheus' JSON error envelope when it sent one."""
    try:
        answer = http_request(url, {}, timeout_s, data=urllib.parse.urlencode(form).encode())
    except Unreachable as exc:
        raise TelemetryError(f"prometheus: {exc}") from exc
    if 200 <= answer.status < 300 or answer.body.startswith(b"{"):
        return answer.body
    raise TelemetryError(f"prometheus: HTTP {answer.status} from {url}")


def answer_result(body: bytes, query: str) -> list[Any]:
    """The `result` list of a successful answer (an instant or a range vector); an error envelope, a body that is not
    JSON or JSON of another shape raises BadAnswer."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # nested past the parser's depth: no answer either
        raise BadAnswer(f"prometheus: not JSON for {shortened(query)!r}") from exc
    if not isinstance(doc, dict) or doc.get("status") != "success":
        why = (f"{doc.get('errorType', 'error')}: {doc.get('error', '?')}" if isinstance(doc, dict)
               else f"a JSON {type(doc).__name__}")
        raise BadAnswer(f"prometheus: {shortened(str(why))} for {shortened(query)!r}")
    data = doc.get("data")
    result = data.get("result", []) if isinstance(data, dict) else None
    if not isinstance(result, list):
        raise BadAnswer(f"prometheus: an answer without a result list for {shortened(query)!r}")
    return result


def instant_vector(body: bytes, query: str, keep_nan: bool = False) -> list[tuple[dict[str, str], float]]:
    """An instant-vector answer as (labels, value) pairs; NaN and infinite values are left out (no
    observation) unless `keep_nan`. An error envelope, a body that is not JSON or JSON of another shape raises
    BadAnswer."""
    return vector_pairs(answer_result(body, query), query, keep_nan)


def evaluated_at(result: list[Any]) -> float | None:
    """The Unix time an instant-vector `result` (read by `vector_pairs`) was evaluated at, where it holds a series."""
    try:
        at = float(result[0]["value"][0])
    except (IndexError, TypeError, ValueError, KeyError):
        return None
    return at if math.isfinite(at) else None


def vector_pairs(result: list[Any], query: str, keep_nan: bool = False) -> list[tuple[dict[str, str], float]]:
    """`instant_vector` of an answer's `result` list."""
    out = []
    for item in result:
        try:
            labels, (_, text) = item["metric"], item["value"]
        except (TypeError, KeyError, ValueError) as exc:
            raise _bad_series(query, item, "that is not (labels, [time, value])") from exc
        if not isinstance(labels, dict) or not isinstance(text, str):  # Prometheus sends every value as a string
            raise _bad_series(query, item, "whose labels are no object or whose value no string")
        try:
            value = float(text)
        except ValueError as exc:
            raise _bad_series(query, item, "that is not (labels, [time, value])") from exc
        if keep_nan or math.isfinite(value):
            out.append(({str(k): str(v) for k, v in labels.items()}, value))
    return out


def _bad_series(query: str, item: object, what: str) -> BadAnswer:
    """Quoting the series without its sample's time, which changes every answer (the same fault was logged anew each
    cycle)."""
    if isinstance(item, dict) and isinstance(item.get("value"), list) and item["value"]:
        item = {**item, "value": item["value"][1:]}
    return BadAnswer(f"prometheus: a series {what} for {shortened(query)!r}: {shortened(json.dumps(item))}")


def by_model(answer: list[tuple[dict[str, str], float]]) -> dict[str, float]:
    """An instant-vector answer as model_name -> value ("" for series without the label)."""
    return {labels.get("model_name", ""): v for labels, v in answer}


class PrometheusApi:
    """Instant queries against one Prometheus: the HTTP seam and timeout every Prometheus-backed source shares."""

    def __init__(self, url: str, timeout_s: float = 5.0, fetch: Fetch = http_post) -> None:
        self.endpoint = url.rstrip("/") + "/api/v1/query"
        self.timeout_s, self.fetch = timeout_s, fetch
        self.answered_at: float | None = None
        """The Unix time of the last answer that held a series, as Prometheus evaluated it."""

    def query(self, promql: str, at: float | None = None, timeout_s: float | None = None,
              keep_nan: bool = False) -> list[tuple[dict[str, str], float]]:
        """Evaluate at Unix time `at` (None: Prometheus' now), within `timeout_s` (None: the API's)."""
        result = answer_result(self._answer(promql, at, timeout_s), promql)
        out = vector_pairs(result, promql, keep_nan)
        self.answered_at = evaluated_at(result) or self.answered_at
        return out

    def _answer(self, promql: str, at: float | None, timeout_s: float | None) -> bytes:
        form = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        return self.fetch(self.endpoint, form, timeout_s or self.timeout_s)

    def counts(self, promql: str, at: float | None = None) -> dict[str, list[Samples]]:
        """A range vector's samples per model (`range_counts`), evaluated as `query` is."""
        return range_counts(answer_result(self._answer(promql, at, None), promql), promql)
