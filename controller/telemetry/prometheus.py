"""vLLM source `prometheus`: per service, the PromQL of REFERENCE.md section 3 over Prometheus' HTTP API.

V1 metric names with the deprecated ones as `or` fallbacks. NaN (0/0 with no traffic), an empty vector
(no series, or stale ones) and +-Inf all mean "no observation" for that figure, never zero latency. A
Prometheus that cannot be reached, answers an HTTP error or an error envelope fails the whole observation
with one `TelemetryError` (the controller counts it and keeps its last plan).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from controller.telemetry.base import ServiceWindow, TelemetryError

Fetch = Callable[[str, dict[str, str], float], bytes]


def http_post(url: str, form: dict[str, str], timeout_s: float) -> bytes:
    """POST a form; HTTP errors still return Prometheus' JSON error envelope when it sent one."""
    data = urllib.parse.urlencode(form).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout_s) as r:
            return bytes(r.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        if body.startswith(b"{"):
            return bytes(body)
        raise TelemetryError(f"prometheus: HTTP {exc.code} from {url}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise TelemetryError(f"prometheus: {url} unreachable: {exc}") from exc


def queries(model: str, window: str) -> dict[str, str]:
    """The figure name -> PromQL of one served model."""
    sel = f'{{model_name="{model}"}}'

    def ratio(hist: str) -> str:
        return f"sum(rate({hist}_sum{sel}[{window}])) / sum(rate({hist}_count{sel}[{window}]))"

    def p95(hist: str) -> str:
        return f"histogram_quantile(0.95, sum by (le) (rate({hist}_bucket{sel}[{window}])))"

    itl, itl_old = "vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"
    return {
        "rate_rps": f"sum(rate(vllm:request_success_total{sel}[{window}]))",
        "in_tokens": ratio("vllm:request_prompt_tokens"),
        "out_tokens": ratio("vllm:request_generation_tokens"),
        "ttft_s": ratio("vllm:time_to_first_token_seconds"),
        "itl_s": f"({ratio(itl)}) or ({ratio(itl_old)})",
        "ttft_p95_s": p95("vllm:time_to_first_token_seconds"),
        "itl_p95_s": f"({p95(itl)}) or ({p95(itl_old)})",
        "running": f"sum(vllm:num_requests_running{sel})",
        "waiting": f"sum(vllm:num_requests_waiting{sel})",
        "kv_usage": f"avg(vllm:kv_cache_usage_perc{sel}) or avg(vllm:gpu_cache_usage_perc{sel})",
        "preemptions": f"sum(increase(vllm:num_preemptions_total{sel}[{window}]))",
        "replicas": f"count(vllm:num_requests_running{sel})",
    }


def scalar(body: bytes, query: str) -> float | None:
    """The single value of an instant-vector answer; None for empty, NaN or infinite."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise TelemetryError(f"prometheus: not JSON for {query!r}") from exc
    if doc.get("status") != "success":
        raise TelemetryError(f"prometheus: {doc.get('errorType', 'error')}: {doc.get('error', '?')} for {query!r}")
    result = doc.get("data", {}).get("result", [])
    if not result:
        return None
    value = float(result[0]["value"][1])
    return value if math.isfinite(value) else None


class PrometheusVllmSource:
    """Reads each service's figures from Prometheus at the controller's time."""

    def __init__(self, url: str, models: dict[str, str], window_s: float = 60.0, timeout_s: float = 5.0,
                 fetch: Fetch = http_post, wall_time: Callable[[float], float] | None = None) -> None:
        self.endpoint = url.rstrip("/") + "/api/v1/query"
        self.models = models
        self.window_s = window_s
        self.timeout_s = timeout_s
        self.fetch = fetch
        self.wall_time = wall_time
        """Maps controller time to the Unix time to evaluate at; None evaluates at Prometheus' now."""

    def _query(self, promql: str, at: float | None) -> float | None:
        form = {"query": promql}
        if at is not None:
            form["time"] = f"{at:.3f}"
        return scalar(self.fetch(self.endpoint, form, self.timeout_s), promql)

    def observe(self, now: float, services: list[str]) -> dict[str, ServiceWindow | None]:
        at = self.wall_time(now) if self.wall_time else None
        window = f"{round(self.window_s)}s"
        out: dict[str, ServiceWindow | None] = {}
        for name in services:
            model = self.models.get(name)
            if model is None:
                out[name] = None
                continue
            v = {k: self._query(q, at) for k, q in queries(model, window).items()}
            replicas = int(v["replicas"] or 0)
            if replicas == 0 and v["rate_rps"] is None:
                out[name] = None  # no series at all: nothing is serving this model, or it went stale
                continue

            def ms(key: str, values: dict[str, float | None] = v) -> float | None:
                x = values[key]
                return None if x is None else 1000.0 * x

            out[name] = ServiceWindow(
                window_s=self.window_s, rate_rps=v["rate_rps"] or 0.0, in_tokens=v["in_tokens"],
                out_tokens=v["out_tokens"], ttft_ms=ms("ttft_s"), itl_ms=ms("itl_s"), ttft_p95_ms=ms("ttft_p95_s"),
                itl_p95_ms=ms("itl_p95_s"), running=v["running"] or 0.0, waiting=v["waiting"] or 0.0,
                kv_usage=v["kv_usage"] or 0.0, preemptions=v["preemptions"] or 0.0, replicas=replicas)
        return out
