"""How the prometheus source reads Prometheus' answers: NaN, empty and Inf are no observation; errors fail."""

from __future__ import annotations

import pytest

from controller.telemetry.base import TelemetryError
from controller.telemetry.prometheus import PrometheusVllmSource, by_model, instant_vector, queries


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
                                  fetch=lambda url, form, t: vector(by_query[form["query"]]))
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
    source = PrometheusVllmSource("http://prom", {"chat": "m"},
                                  fetch=lambda url, form, t: vector(*[v for v in [by_query[form["query"]]] if v]))
    w = source.observe(0.0, ["chat"])["chat"]
    assert w is not None and w.steady is steady
