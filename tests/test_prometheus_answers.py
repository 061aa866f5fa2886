"""How the prometheus source reads Prometheus' answers: NaN, empty and Inf are no observation; errors fail."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from controller.telemetry.base import TelemetryError
from controller.telemetry.counter_samples import counts_query, flapped
from controller.telemetry.prometheus import PrometheusVllmSource, queries
from controller.telemetry.prometheus_api import by_model, instant_vector


def matrix(*series: list[float], model: str = "m") -> bytes:
    """A range-vector answer: each series' samples, a second apart."""
    items = ",".join(json.dumps({"metric": {"model_name": model}, "values": [[float(t), str(v)] for t, v in
                                                                              enumerate(values)]}) for values in series)
    return f'{{"status":"success","data":{{"resultType":"matrix","result":[{items}]}}}}'.encode()


def counts_or(form: dict[str, str], answer: Callable[[], bytes]) -> bytes:
    """The success counters' samples (none) where the query asks for them, else `answer()`."""
    return matrix() if form["query"] == counts_query(["m"], 60.0) else answer()


def vector(*values: str, model: str = "m") -> bytes:
    items = ",".join(f'{{"metric":{{"model_name":"{model}"}},"value":[1.0,"{v}"]}}' for v in values)
    return f'{{"status":"success","data":{{"resultType":"vector","result":[{items}]}}}}'.encode()


@pytest.mark.parametrize("body,expected", [(vector("1.5"), 1.5), (vector("NaN"), None), (vector("+Inf"), None),
                                           (vector(), None)])
def test_values_nan_inf_and_empty(body: bytes, expected: float | None) -> None:
    assert by_model(instant_vector(body, "q")).get("m") == expected


def test_error_envelope_and_garbage_fail_with_the_reason() -> None:
    body = b'{"status":"error","errorType":"bad_data","error":"parse error at char 5"}'
    with pytest.raises(TelemetryError, match="bad_data: parse error"):
        by_model(instant_vector(body, "q"))
    with pytest.raises(TelemetryError, match="not JSON"):
        by_model(instant_vector(b"<html>", "q"))


def test_idle_service_gives_no_latency_and_v1_names_fall_back_to_deprecated_ones() -> None:
    """With traffic gone the ratios are 0/0 (NaN): latencies None, never 0 ms."""
    answers = {"rate_rps": "0", "replicas": "2", "running": "0", "waiting": "0", "kv_usage": "0", "preemptions": "0"}
    promql = queries(["m"], "60s")
    by_query = {q: answers.get(k, "NaN") for k, q in promql.items()}
    source = PrometheusVllmSource("http://prom", {"chat": "m"},
                                  fetch=lambda url, form, t: counts_or(form, lambda: vector(by_query[form["query"]])))
    w = source.observe(0.0, ["chat"])["chat"]
    assert w is not None and w.rate_rps == 0 and w.replicas == 2
    assert w.ttft_ms is None and w.itl_ms is None and w.ttft_p95_ms is None and w.in_tokens is None
    assert "vllm:time_per_output_token_seconds" in promql["itl_s"]
    assert "vllm:gpu_cache_usage_perc" in promql["kv_usage"]


@pytest.mark.parametrize("restarts,before,steady", [("0", "2", True), ("1", "2", False), ("0", "1", False),
                                                    ("0", None, True)])
def test_a_restart_or_a_changed_replica_count_makes_the_window_unsteady(restarts: str, before: str | None,
                                                                         steady: bool) -> None:
    answers = {"rate_rps": "4", "replicas": "2", "running": "3", "waiting": "0", "kv_usage": "0.1",
               "preemptions": "0", "restarts": restarts}
    if before is not None:
        answers["replicas_before"] = before
    by_query = {q: answers.get(k) for k, q in queries(["m"], "60s").items()}
    restart = matrix([500.0, 520.0, 3.0, 25.0])  # an engine's restart: a fall to what it served since

    def fetch(url: str, form: dict[str, str], timeout_s: float) -> bytes:
        if form["query"] == counts_query(["m"], 60.0):
            return restart
        return vector(*[v for v in [by_query[form["query"]]] if v])

    source = PrometheusVllmSource("http://prom", {"chat": "m"}, fetch=fetch)
    w = source.observe(0.0, ["chat"])["chat"]
    assert w is not None and w.steady is steady


@pytest.mark.parametrize("body,why", [
    (b"[]", "a JSON list"), (b'{"status":"success","data":[]}', "without a result list"),
    (b'{"status":"success","data":{"result":[{"metric":{}}]}}', "not \\(labels, \\[time, value\\]\\)"),
    (b'{"status":"success","data":{"result":[{"metric":{},"value":[1,"x"]}]}}', "not \\(labels"),
    (b'{"status":"success","data":{"result":[{"metric":[],"value":[1,"2"]}]}}', "labels are no object"),
    (b'{"status":"success","data":{"result":[{"metric":{},"value":[1,true]}]}}', "whose value no string"),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # past the parser's depth: RecursionError escaped
])
def test_an_answer_of_another_shape_is_one_error_naming_its_query(body: bytes, why: str) -> None:
    """These raised AttributeError, KeyError or TypeError out of the source, naming no query."""
    with pytest.raises(TelemetryError, match=f"prometheus: .*{why}.*for 'sum by .model_name. .*"):
        instant_vector(body, "sum by (model_name) (rate(x[60s]))")


def test_a_long_query_or_answer_is_quoted_short() -> None:
    with pytest.raises(TelemetryError) as caught:
        instant_vector(b'{"status":"error","error":"' + b"x" * 100_000 + b'"}', "q" * 10_000)
    assert len(str(caught.value)) < 500 and str(caught.value).count(" characters)") == 2


def test_one_unreadable_figure_loses_that_figure_alone_and_is_reported() -> None:
    """A p95 query Prometheus refuses (a many-to-many match, a timeout) failed every service's window."""
    answers = {"rate_rps": "4", "replicas": "2", "running": "3", "waiting": "0", "kv_usage": "0.1",
               "preemptions": "0", "restarts": "0", "replicas_before": "2", "ttft_s": "0.2"}
    promql = queries(["m"], "60s")
    broken = {promql["ttft_p95_s"], promql["restarts"]}
    errors: list[tuple[str, str]] = []

    def fetch(url: str, form: dict[str, str], timeout_s: float) -> bytes:
        if form["query"] in broken:
            return b'{"status":"error","errorType":"execution","error":"many-to-many matching not allowed"}'
        return vector(*[v for v in [answers.get(k) for k, q in promql.items() if q == form["query"]] if v])

    source = PrometheusVllmSource("http://prom", {"chat": "m"}, fetch=fetch, on_error=lambda *e: errors.append(e))
    w = source.observe(0.0, ["chat"])["chat"]
    assert w is not None and w.rate_rps == 4.0 and w.ttft_ms == pytest.approx(200.0) and w.ttft_p95_ms is None
    assert not w.steady  # whether a server restarted is not known
    assert [k for k, _ in errors] == ["prometheus", "prometheus"] and "many-to-many" in errors[0][1]
    broken.add(promql["rate_rps"])
    with pytest.raises(TelemetryError, match="many-to-many"):  # without the rate no service has a window
        source.observe(1.0, ["chat"])


def test_a_service_with_no_rate_yet_still_tells_its_queue() -> None:
    """A vLLM that makes its success counter on first use has no rate series before a request finishes: its window
    still says what waits (held for want of a rate, the backlog went unsized and the service was planned at 0)."""
    answers = {"replicas": "2", "running": "64", "waiting": "400", "kv_usage": "0.1", "preemptions": "0",
               "restarts": "0", "replicas_before": "2"}
    promql = queries(["m"], "60s")
    by_query = {q: answers.get(k) for k, q in promql.items()}
    source = PrometheusVllmSource("http://prom", {"chat": "m"},
                                  fetch=lambda url, form, t: counts_or(
                                      form, lambda: vector(*[v for v in [by_query[form["query"]]] if v])))
    w = source.observe(0.0, ["chat"])["chat"]
    assert w is not None and w.rate_rps == 0.0 and w.waiting == 400.0 and w.replicas == 2


def test_a_figure_past_any_count_is_left_out_and_said() -> None:
    """'1e300' replicas became a 301-digit count, which would let the enforcer drain every other variant."""
    answers = {"rate_rps": "4", "replicas": "1e300", "running": "3", "waiting": "-2", "kv_usage": "0.1",
               "preemptions": "0", "restarts": "0", "replicas_before": "2"}
    promql = queries(["m"], "60s")
    by_query = {q: answers.get(k, "NaN") for k, q in promql.items()}
    errors: list[tuple[str, str]] = []
    source = PrometheusVllmSource("http://prom", {"chat": "m"}, on_error=lambda *e: errors.append(e),
                                  fetch=lambda url, form, t: counts_or(form, lambda: vector(by_query[form["query"]])))
    w = source.observe(0.0, ["chat"])["chat"]
    assert w is not None and w.replicas == 0 and w.waiting == 0.0 and not w.steady
    assert errors == [("prometheus", "chat: replicas, waiting not a number in [0, 1e+12]: left out")]


@pytest.mark.parametrize("rate", ["NaN", "+Inf", "-3"])
def test_a_rate_that_is_no_number_is_no_window_not_an_idle_service(rate: str) -> None:
    """One engine's NaN counter makes `sum(rate())` NaN: it had read as 0 rps, steady, with 400 waiting, and the plan
    sized the service as idle. No 0/0 makes a rate NaN (an absent counter is no series: 0 rps, above)."""
    answers = {"rate_rps": rate, "replicas": "2", "running": "64", "waiting": "400", "kv_usage": "0.1",
               "preemptions": "0", "restarts": "0", "replicas_before": "2"}
    by_query = {q: answers.get(k, "NaN") for k, q in queries(["m"], "60s").items()}
    errors: list[tuple[str, str]] = []
    source = PrometheusVllmSource("http://prom", {"chat": "m"}, on_error=lambda *e: errors.append(e),
                                  fetch=lambda url, form, t: counts_or(form, lambda: vector(by_query[form["query"]])))
    assert source.observe(0.0, ["chat"]) == {"chat": None}
    assert errors == [("prometheus", "chat: rate_rps not a number in [0, 1e+12]: left out (no window without its "
                                     "rate)")]


@pytest.mark.parametrize("running", ["40", "NaN"])
def test_the_queue_and_batch_at_the_windows_start_are_read_a_window_back(running: str) -> None:
    """Prometheus' window (60 s) may be longer than the slow cycle (30 s): the growth that turns completions into
    arrivals is read over the window itself (`offset`), not since the last cycle. A gauge that is no number (one
    engine's NaN in the sum) reads no growth at all, and the window is not steady: read as a queue of 0, it taught the
    tuner a backlog-free window (a trial)."""
    answers = {"rate_rps": "4", "replicas": "2", "running": running, "waiting": "10", "kv_usage": "0.1",
               "preemptions": "0", "restarts": "0", "replicas_before": "2", "running_before": "16",
               "waiting_before": "2"}
    promql = queries(["m"], "60s")
    assert "offset 60s" in promql["running_before"] and "offset 60s" in promql["waiting_before"]
    by_query = {q: answers.get(k, "NaN") for k, q in promql.items()}
    errors: list[tuple[str, str]] = []
    source = PrometheusVllmSource("http://prom", {"chat": "m"}, on_error=lambda *e: errors.append(e),
                                  fetch=lambda url, form, t: counts_or(form, lambda: vector(by_query[form["query"]])))
    w = source.observe(0.0, ["chat"])["chat"]
    assert w is not None
    if running == "NaN":
        assert (w.running_before, w.waiting_before, w.steady) == (None, None, False)
        assert errors == [("prometheus", "chat: running not a number in [0, 1e+12]: left out")]
    else:
        assert (w.running_before, w.waiting_before, w.running, w.waiting) == (16.0, 2.0, 40.0, 10.0) and not errors
        assert w.steady


def answering(answers: dict[str, str | None]) -> tuple[PrometheusVllmSource, list[str]]:
    """A source whose Prometheus answers each figure's query from `answers` (None or absent: no series), and the
    errors it reports."""
    said: list[str] = []
    by_query = {q: k for k, q in queries(["m"], "60s").items()}

    def fetch(url: str, form: dict[str, str], timeout_s: float) -> bytes:
        if form["query"] == counts_query(["m"], 60.0):
            return matrix(*[[float(c) for c in str(answers.get("counts") or "").split()]])
        value = answers.get(by_query[form["query"]])
        return vector(*([value] if value is not None else []))

    return PrometheusVllmSource("http://prom", {"chat": "m"}, fetch=fetch,
                                on_error=lambda kind, message: said.append(message)), said


def test_a_success_counter_gone_after_a_rate_was_read_is_no_window_not_no_requests() -> None:
    """A trial: `vllm:request_success_total` vanished while the engines reported, and chat (12 rps) was read at 0 rps
    and planned on half its replicas, with no word of it. Before any rate is read, no series still means none
    finished yet (a fresh engine); so does an engine new to the window (its first scrape has no rate yet: a review
    found a service scaled up from none read as a lost counter, its queue unseen)."""
    answers: dict[str, str | None] = {"replicas": "2", "running": "3", "waiting": "0", "restarts": "0"}
    source, said = answering(answers)
    first = source.observe(0.0, ["chat"])["chat"]
    assert first is not None and first.rate_rps == 0.0 and not said  # none finished yet
    answers["rate_rps"] = "12"
    read = source.observe(15.0, ["chat"])["chat"]
    assert read is not None and read.rate_rps == 12.0
    answers.update(rate_rps=None, waiting="30")  # engines new to the window: none a window back
    fresh = source.observe(30.0, ["chat"])["chat"]
    assert fresh is not None and fresh.rate_rps == 0.0 and fresh.waiting == 30.0 and not said
    answers["replicas_before"] = "2"
    assert source.observe(45.0, ["chat"])["chat"] is None
    assert said == ["chat: vllm:request_success_total of model 'm' is gone while its engines report, as they did a "
                    "window back: no window (read as no requests finished, it sized the service for none)"]


@pytest.mark.parametrize(("counts", "window"), [
    ("500 520 3 25", True),  # a restart: a fall to what it served since
    ("500 3 1 4 2 5", True),  # restarts: rate() reads each fall right (a review found a crash loop refused)
    ("10 12 3 15", True),  # counts too small to move a plan
    ("500 520 300 320", False),  # two engines by turns: a fall to a count of its own order (15-s scrapes)
    ("500 40 520 41", False),  # the busier one back past where it fell from, in one rise
    ("18750 432825 18900 432975 19050", False),  # by turns at 15-s scrapes: every rise a jump (a second review)
    ("0 40 80 120 0 40 80 120 0", True),  # a crash loop climbs back in small rises
    ("9000 100 9010", False),
])
def test_a_counter_that_flaps_between_two_engines_is_no_window(counts: str, window: bool) -> None:
    """Two engines behind one scrape target: the success counter fell to the other's count, each fall read the whole
    count as new, and chat's 12 rps read 48 to 663 rps, every service planned at max_replicas (a trial). Counting
    falls passed it at 15-s and 30-s scrapes, where a window holds one or two (a review); read from its samples, a
    fall to a count of its own order, or one it climbs back past, is the flap, and a restart's fall to what it served
    since is not, however many."""
    source, said = answering({"rate_rps": "12", "replicas": "1", "running": "3", "waiting": "0", "restarts": "2",
                              "counts": counts})
    w = source.observe(0.0, ["chat"])["chat"]
    assert (w is not None) is window and (len(said) == 0) is window
    assert window or "fell to a count of its own order, or climbed back past where it fell from" in said[0]
    assert w is None or not w.steady
    assert flapped([float(c) for c in counts.split()]) is not window


def test_a_model_whose_series_go_silent_is_said_once_as_they_go() -> None:
    """An exporter down, its series stale: no window every cycle, and no word of it (a trial). Said every cycle, a
    service scaled to none would read as failing; so it is said as they go, and again if they come back and go."""
    answers: dict[str, str | None] = {"rate_rps": "12", "replicas": "2", "running": "3", "waiting": "0"}
    source, said = answering(answers)
    assert source.observe(0.0, ["chat"])["chat"] is not None
    gone = dict.fromkeys(answers)
    answering_now = answers.copy()
    answers.update(gone)
    assert [source.observe(t, ["chat"])["chat"] for t in (15.0, 30.0, 45.0)] == [None, None, None]
    assert said == ["chat: no vLLM series of model 'm' now, where the last window had some: no window until they "
                    "come back (its engines stopped or restarting, an exporter down, or Prometheus no longer scraping "
                    "them)"]
    answers.update(answering_now)
    assert source.observe(60.0, ["chat"])["chat"] is not None
    answers.update(gone)
    assert source.observe(75.0, ["chat"])["chat"] is None and len(said) == 2


def test_a_windows_queries_ask_no_new_one_past_three_timeouts() -> None:
    """A Prometheus answering each of a window's 17 queries in 4 s of a 5-s timeout held the slow loop 73 s (a
    trial); each query still has the whole timeout (shared by all, a healthy one at 0.33 s a query failed every
    window: a review), and none is asked past three timeouts in all, said in words that do not change."""
    now = [0.0]
    asked: list[float] = []

    def fetch(url: str, form: dict[str, str], timeout_s: float) -> bytes:
        asked.append(timeout_s)
        now[0] += 4.0
        return vector("1")

    source = PrometheusVllmSource("http://prom", {"chat": "m"}, timeout_s=5.0, fetch=fetch, clock=lambda: now[0])
    with pytest.raises(TelemetryError, match=r"^prometheus: a window's queries took longer than 3 x "
                                             r"telemetry.timeout_s \(15 s\)$"):
        source.observe(0.0, ["chat"])
    assert asked == [5.0] * 4
    now[0], asked[:] = 0.0, []
    quick = PrometheusVllmSource("http://prom", {"chat": "m"}, timeout_s=5.0, clock=lambda: now[0],
                                 fetch=lambda url, form, t: (now.__setitem__(0, now[0] + 0.33), vector("1"))[1])
    assert quick.observe(0.0, ["chat"])["chat"] is not None  # 17 queries at 0.33 s: 5.6 s


def test_a_bad_series_is_quoted_without_its_time_so_it_is_said_once() -> None:
    """The sample's time changes every answer: quoted, the same fault was a new message, logged anew every cycle."""
    body = b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[17.5,3]}]}}'
    with pytest.raises(TelemetryError) as caught:
        instant_vector(body, "q")
    assert "17.5" not in str(caught.value) and "[3]" in str(caught.value)


def test_the_flap_checks_samples_lost_leave_the_window_standing() -> None:
    """The samples over four windows run past the answer's size bound for thousands of engines at 1-s scrapes: the
    whole window had failed with them; the check is said to be skipped and the window stands."""
    said: list[str] = []
    answers = {"rate_rps": "12", "replicas": "2", "running": "3", "waiting": "0"}
    by_query = {q: k for k, q in queries(["m"], "60s").items()}

    def fetch(url: str, form: dict[str, str], timeout_s: float) -> bytes:
        if form["query"] == counts_query(["m"], 60.0):
            raise TelemetryError("prometheus: http://prom: the answer runs past 16777216 bytes")
        value = answers.get(by_query[form["query"]])
        return vector(*([value] if value is not None else []))

    source = PrometheusVllmSource("http://prom", {"chat": "m"}, fetch=fetch, on_error=lambda k, m: said.append(m))
    w = source.observe(0.0, ["chat"])["chat"]
    assert w is not None and w.rate_rps == 12.0
    assert said == ["prometheus: http://prom: the answer runs past 16777216 bytes (the flap check's samples: the "
                    "window goes on without it)"]


def sampled(answers: dict[str, str], series: list[list[tuple[float, float]]], end: float | list[float],
            window_s: float = 20.0) -> tuple[PrometheusVllmSource, list[str]]:
    """A source whose Prometheus evaluates at Unix time `end` (the last of a list the test appends to) and holds
    `series` of (time, count) samples of the success counter (the list as the test leaves it at each query)."""
    said: list[str] = []
    by_query = {q: k for k, q in queries(["m"], f"{round(window_s)}s").items()}
    ends = end if isinstance(end, list) else [end]

    def fetch(url: str, form: dict[str, str], timeout_s: float) -> bytes:
        if form["query"] == counts_query(["m"], window_s):
            items = [{"metric": {"model_name": "m"}, "values": [[t, str(c)] for t, c in s]} for s in series]
            return json.dumps({"status": "success", "data": {"resultType": "matrix", "result": items}}).encode()
        value = answers.get(by_query[form["query"]])
        items = [{"metric": {"model_name": "m"}, "value": [ends[-1], value]}] if value is not None else []
        return json.dumps({"status": "success", "data": {"resultType": "vector", "result": items}}).encode()

    return PrometheusVllmSource("http://prom", {"chat": "m"}, window_s=window_s, fetch=fetch,
                                on_error=lambda kind, message: said.append(message)), said


def every(start: float, stop: float, rps: float, step: float = 2.0) -> list[tuple[float, float]]:
    """An engine's success counter scraped every `step` s from `start` to `stop`, at `rps`."""
    return [(start + i * step, rps * (start + i * step)) for i in range(int((stop - start) / step) + 1)]


STEADY = {"rate_rps": "4", "replicas": "1", "running": "13", "waiting": "1", "replicas_before": "1", "restarts": "0"}


@pytest.mark.parametrize(("series", "rate", "why"), [
    ([every(1000, 1080, 4.0)], "4", None),  # scraped throughout
    ([every(1000, 1030, 4.0) + every(1072, 1080, 4.0)], "1.2", "over the start of the window"),  # restarted, 42 s
    ([every(1000, 1044, 4.0) + every(1062, 1080, 4.0)], "4", None),  # a hole inside the window: rate() reads across it
    ([[*every(1000, 1040, 4.0), (1079.9, 316.0), (1080.0, 316.0)]], "0", "over the start of the window"),  # paused
    ([every(1000, 1050, 4.0)], "4", "in the window, where it had before"),  # no sample since: the gauges linger
    ([every(1000, 1080, 2.0), every(1070, 1080, 2.0)], "4", None),  # an engine new to the window
    ([every(1000, 1050, 2.0), every(1000, 1080, 2.0)], "4", None),  # an engine gone before the window
    ([every(1000, 1080, 4.0, step=15.0)], "0", "holds fewer than two of Prometheus' samples, scraped about every 15 s"),
    ([[*every(1000, 1058, 4.0), (1079.0, 4.0 * 1079)]], "3", "over the start of the window"),  # one sample: no rate
])
def test_a_hole_in_the_samples_at_the_windows_start_is_no_window(series: list[list[tuple[float, float]]], rate: str,
                                                                 why: str | None) -> None:
    """A trial against a real Prometheus: an exporter back after 30 s, Prometheus restarted, or paused (SIGSTOP) for
    35 s read 4 rps as 2.0, 1.2 and 0 in the next window, each called steady and taken as the load; a window
    shorter than the scrape interval read 0 rps for good, unsaid. rate() divides what the samples it has saw by the
    whole window: one whose start they leave unseen (more than a tenth of it) is no window, said why."""
    source, said = sampled({**STEADY, "rate_rps": rate}, series, end=1080.0,
                           window_s=10.0 if "every 15 s" in (why or "") else 20.0)
    w = source.observe(0.0, ["chat"])["chat"]
    if why is None:
        assert w is not None and w.rate_rps == float(rate) and not said
    else:
        assert w is None and len(said) == 1 and said[0].startswith("chat: ") and why in said[0]


@pytest.mark.parametrize(("first_s", "refused"), [(14.0, False), (16.0, False), (17.0, True), (28.0, True)])
def test_rate_reads_a_window_short_where_its_first_sample_is_past_prometheus_extrapolation(first_s: float,
                                                                                          refused: bool) -> None:
    """rate() stretches the first sample back to the window's start only within 1.1 of the samples' interval, half an
    interval past that (a review: 15-s scrapes, a 60-s window whose first sample came 28 s in read 2.63 rps for 4,
    and passed a check that allowed 1.5 intervals plus a tenth of the window). At 17 s, 9.5 s go unread: 16 %."""
    series = [every(900, 1002, 4.0, step=15.0) + every(1020 + first_s, 1080, 4.0, step=15.0)]
    source, said = sampled(STEADY, series, end=1080.0, window_s=60.0)
    assert (source.observe(0.0, ["chat"])["chat"] is None) is refused and bool(said) is refused


def test_a_model_back_after_an_outage_past_the_lookback_is_no_window_until_its_samples_cover_one() -> None:
    """Prometheus down longer than the four windows looked back over: every series starts in the window, read as
    engines new to it, and 4 rps read as 1.8, steady (a review). A model read before whose last window is older than
    this one's start (or which went silent) has no window until a series covers its start; an engine new to a window
    read on time still counts whole."""
    series = [every(1000, 1080, 4.0)]
    ends = [1080.0]
    source, said = sampled(STEADY, series, end=ends)
    assert source.observe(0.0, ["chat"])["chat"] is not None and not said
    ends.append(1500.0)
    series[:] = [every(1485, 1500, 4.0)]  # back 15 s ago: all its samples in the window
    assert source.observe(15.0, ["chat"])["chat"] is None and "over the start of the window" in said[0]
    ends.append(1520.0)
    series[:] = [every(1485, 1520, 4.0), every(1510, 1520, 4.0)]  # a window later, and an engine new to this one
    w = source.observe(30.0, ["chat"])["chat"]
    assert w is not None and len(said) == 1


def test_a_rise_across_a_hole_in_the_samples_is_no_flap() -> None:
    """Prometheus paused 45 s: the counter rose by 749 across the pause on a count of about 2,000, read as another
    engine's count appearing, and the service had no window for four windows (a trial). A rise is read per usual
    interval between samples; the same rise between two scrapes 2 s apart is still a flap."""
    before = [(1000.0 + 2 * i, 1200.0 + 32 * i) for i in range(10)]
    after = [(1064.8 + 2 * i, 2341.0 + 32 * i) for i in range(10)]
    assert not flapped([c for _, c in before + after], [t for t, _ in before + after])
    assert flapped([c for _, c in before + after])  # the same counts read evenly spaced
