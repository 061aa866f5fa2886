"""vLLM source `prometheus`: PromQL over vLLM V1's own metrics (`vllm:*`) through Prometheus' HTTP API, one query per
figure for all services' models at once (grouped by `model_name`).

V1 metric names with the deprecated ones as `or` fallbacks. NaN (0/0 with no traffic), an empty vector
(no series, or stale ones) and +-Inf all mean "no observation" for that figure, never zero latency; but a
request rate that is NaN or out of range (a broken counter: no 0/0 makes it) is no window for its service,
where no rate series at all is none finished yet (a vLLM makes its counter on first use): 0 rps, until a rate
was read for the model; after that, a rate gone while its engines report, as they did a window back, is a lost
counter, no window, never 0 rps (it had planned half the replicas; an engine new to the window has no rate for a
scrape, and reads 0). Nor is a window whose success counter `flapped`, read from its samples over `LOOKBACK`
windows (two engines behind one scrape target: each fall read the other's whole count as new, a demand 50 times the
load; a restart falls to what it served since, and rate() reads any number of those right). Each query has `timeout_s`,
and a window asks none past `WINDOW_TIMEOUTS` of them in all (a Prometheus that answers each query just inside it
had held the slow loop for 17 of them). A
Prometheus that cannot be reached, or answers an HTTP error without its JSON error envelope, fails the whole
observation with one `TelemetryError` (the controller counts it and keeps its last plan). An answer that cannot
be read (an error envelope, whatever its HTTP status; a wrong shape: `BadAnswer`, naming its query) loses that
figure alone, reported to `on_error`; only the figures every window needs (`CORE`) fail the whole observation,
and a window whose restart figures were lost is not called steady.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from controller.telemetry.base import (
    WINDOW_TIMEOUTS,
    ServiceWindow,
    TelemetryError,
    drafted_per_step,
    tokens_per_step,
    window_late,
)
from controller.telemetry.counter_samples import counts_query, flapped, selector, window_gap
from controller.telemetry.prometheus_api import BadAnswer, Fetch, PrometheusApi, by_model, http_post

MOST = 1e12
"""Largest figure of a window taken as read (a rate, a count, seconds): NaN, infinities, negatives and past it are left
out, as the scrape source leaves them ("1e300" replicas became a 301-digit count)."""

log = logging.getLogger(__name__)

CORE = frozenset({"rate_rps", "replicas"})
"""Figures without which no service has a window."""
KEEP_NAN = frozenset({"rate_rps", "running", "waiting"})
"""Figures whose NaN (one engine's broken series in a sum) is kept apart from no series, and said: a rate that is no
number is no window, and a queue gauge that is none reads no growth across the window (nor one a window back,
said when it was read)."""


def queries(models: list[str], window: str) -> dict[str, str]:
    """The figure name -> PromQL, each grouped by `model_name` over all `models` (one query per figure). ITL is read
    under either of its names per engine series, before the sum: engines of two vLLM versions behind one model
    (a rolling upgrade, two variants on two images) each count under their own name."""
    sel = selector(models)
    by = "by (model_name)"

    def rated(*series: str, by: str = by) -> str:  # the first name an engine series has, per series, summed
        return f"sum {by} ({' or '.join(f'rate({x}{sel}[{window}])' for x in series)})"

    def ratio(*hist: str) -> str:
        return f"{rated(*(h + '_sum' for h in hist))} / {rated(*(h + '_count' for h in hist))}"

    def p95(*hist: str) -> str:
        return f"histogram_quantile(0.95, {rated(*(h + '_bucket' for h in hist), by='by (le, model_name)')})"

    itl = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")  # the second: vLLM < 0.13
    later = f"({rated('vllm:generation_tokens_total')} - {rated('vllm:time_to_first_token_seconds_count')})"
    return {
        "rate_rps": rated("vllm:request_success_total"),
        "in_tokens": ratio("vllm:request_prompt_tokens"),
        "out_tokens": ratio("vllm:request_generation_tokens"),
        "ttft_s": ratio("vllm:time_to_first_token_seconds"),
        "itl_s": ratio(*itl),
        "ttft_p95_s": p95("vllm:time_to_first_token_seconds"),
        "queue_s": ratio("vllm:request_queue_time_seconds"),
        "tokens_per_step": f"clamp_min({later} / {rated(*(x + '_count' for x in itl))}, 1)",  # base.tokens_per_step
        "itl_p95_s": p95(*itl),
        # base.drafted_per_step: the counter exists only under speculative decoding, so no answer otherwise
        "draft_tokens": f"{rated('vllm:spec_decode_num_draft_tokens_total')} / {rated(*(x + '_count' for x in itl))}",
        "running": f"sum {by} (vllm:num_requests_running{sel})",
        "waiting": f"sum {by} (vllm:num_requests_waiting{sel})",
        "running_before": f"sum {by} (vllm:num_requests_running{sel} offset {window})",
        "waiting_before": f"sum {by} (vllm:num_requests_waiting{sel} offset {window})",
        "kv_usage": f"avg {by} (vllm:kv_cache_usage_perc{sel}) or avg {by} (vllm:gpu_cache_usage_perc{sel})",
        "preemptions": f"sum {by} (increase(vllm:num_preemptions_total{sel}[{window}]))",
        "replicas": f"count {by} (vllm:num_requests_running{sel})",
        "replicas_before": f"count {by} (vllm:num_requests_running{sel} offset {window})",
        "restarts": f"sum {by} (resets(vllm:request_success_total{sel}[{window}]))",
    }


class PrometheusVllmSource:
    """Reads each service's figures from Prometheus at the controller's time."""

    def __init__(self, url: str, models: dict[str, str], window_s: float = 60.0, timeout_s: float = 5.0,
                 fetch: Fetch = http_post, wall_time: Callable[[float], float] | None = None,
                 on_error: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = PrometheusApi(url, timeout_s, fetch)
        self.clock = clock
        """Times a window's queries against their deadline (`WINDOW_TIMEOUTS`)."""
        self.rated: set[str] = set()
        """Models a request rate was read for: from then on, no rate series is a lost counter, not none finished."""
        self.read_until: float | None = None
        """Prometheus' time at the end of the last window read whole (its figures and samples)."""
        self.heard: set[str] = set()
        """Models the last observation had series of: one that goes silent is said once, as it goes (an exporter down
        had given no window every cycle, unsaid; said every cycle, a service scaled to none would read as failing)."""
        self.on_error = on_error or (lambda kind, message: log.warning("%s: %s", kind, message))
        """Where a figure lost to an unreadable answer is reported (the controller counts and logs it)."""
        self.models = models
        self.window_s = window_s
        self.wall_time = wall_time
        """Maps controller time to the Unix time to evaluate at; None evaluates at Prometheus' now."""

    def _within(self, deadline: float) -> None:
        """Raise where a window's queries have run past their deadline (no count or time in the line: it is said once
        while it repeats)."""
        if self.clock() > deadline:
            raise TelemetryError(f"prometheus: {window_late('queries', self.api.timeout_s)}")

    def _counters(self, models: list[str], at: float | None, deadline: float,
                  resumed: set[str]) -> tuple[set[str], dict[str, str]]:
        """What the models' success counters' samples say (controller.telemetry.counter_samples), within the window's
        deadline: which `flapped` (asked every window: a rise to the other engine's count needs no fall), and why a
        model's window reads short where its samples leave a hole at its start (`window_gap`, judged where the window's
        end is known: `at`, or the time Prometheus evaluated its figures at; `resumed`: models read before whose last
        window read none of them, or ended before this one's start)."""
        self._within(deadline)
        try:
            series = self.api.counts(counts_query(models, self.window_s), at)
        except TelemetryError as exc:  # an answer past the size bound too (thousands of engines at 1-s scrapes): the
            self.on_error("prometheus", f"{exc} (the flap check's samples: the window goes on without it)")  # rest
            return set(), {}  # of the window stands, as it did before the check
        flapping = {m for m, each in series.items() if any(flapped(s.counts, s.times) for s in each)}
        gaps = {m: why for m, each in series.items()
                if at is not None and (why := window_gap(each, at, self.window_s, m in resumed))}
        return flapping, gaps

    def observe(self, now: float, services: list[str]) -> dict[str, ServiceWindow | None]:
        at = self.wall_time(now) if self.wall_time else None
        models = sorted({self.models[s] for s in services if s in self.models})
        answers: dict[str, dict[str, float]] = {}
        lost: set[str] = set()
        flapping: set[str] = set()
        gaps: dict[str, str] = {}
        if models:
            deadline = self.clock() + WINDOW_TIMEOUTS * self.api.timeout_s
            self.api.answered_at = None
            for figure, promql in queries(models, f"{round(self.window_s)}s").items():
                self._within(deadline)
                try:
                    answers[figure] = by_model(self.api.query(promql, at, keep_nan=figure in KEEP_NAN))
                except BadAnswer as exc:
                    if figure in CORE:
                        raise
                    self.on_error("prometheus", str(exc))
                    answers[figure] = {}
                    lost.add(figure)
            end = at if at is not None else self.api.answered_at
            gone = end is None or self.read_until is None or self.read_until <= end - self.window_s
            resumed = {m for m in models if m in self.rated and (gone or m not in self.heard)}
            flapping, gaps = self._counters(models, end, deadline, resumed)
            self.read_until = end
        unsure = bool(lost & {"restarts", "replicas_before"})
        silent, self.heard = self.heard, set()
        out: dict[str, ServiceWindow | None] = {}
        for name in services:
            model = self.models.get(name)
            if model is None:
                out[name] = None
                continue
            raw = {k: a.get(model) for k, a in answers.items()}
            v = {k: x if x is None or 0.0 <= x <= MOST else None for k, x in raw.items()}  # every figure a count
            replicas = int(v["replicas"] or 0)
            if replicas > 0 or v["rate_rps"] is not None:
                self.heard.add(model)
            if replicas == 0 and v["rate_rps"] is None:
                out[name] = None  # no series at all: nothing is serving this model, or it went stale
                if model in silent:
                    self.on_error("prometheus", f"{name}: no vLLM series of model {model!r} now, where the last "
                                  "window had some: no window until they come back (its engines stopped or "
                                  "restarting, an exporter down, or Prometheus no longer scraping them)")
                continue
            if model in gaps:
                self.on_error("prometheus", f"{name}: {gaps[model]}")
                out[name] = None
                continue
            if raw["rate_rps"] is None and model in self.rated and ((v["replicas_before"] or 0) > 0
                                                                    or "replicas_before" in lost):  # it may have
                self.on_error("prometheus", f"{name}: vllm:request_success_total of model {model!r} is gone while "
                              "its engines report, as they did a window back: no window (read as no requests "
                              "finished, it sized the service for none)")
                out[name] = None
                continue
            if model in flapping:
                self.on_error("prometheus", f"{name}: vllm:request_success_total of model {model!r} fell to a count "
                              "of its own order, or climbed back past where it fell from, in the window (two engines "
                              "behind one scrape target; each fall counts the whole count as new): no window")
                out[name] = None
                continue
            if bad := sorted(k for k, x in raw.items() if x is not None and v[k] is None):
                self.on_error("prometheus", f"{name}: {', '.join(bad)} not a number in [0, {MOST:g}]: left out"
                              + (" (no window without its rate)" if "rate_rps" in bad else ""))
                if "rate_rps" in bad:
                    out[name] = None
                    continue
            if v["rate_rps"] is not None:
                self.rated.add(model)

            def ms(key: str, values: dict[str, float | None] = v) -> float | None:
                x = values[key]
                return None if x is None else 1000.0 * x

            out[name] = ServiceWindow(
                window_s=self.window_s, rate_rps=v["rate_rps"] or 0.0, in_tokens=v["in_tokens"],
                out_tokens=v["out_tokens"], ttft_ms=ms("ttft_s"), itl_ms=ms("itl_s"), ttft_p95_ms=ms("ttft_p95_s"),
                itl_p95_ms=ms("itl_p95_s"), running=v["running"] or 0.0, waiting=v["waiting"] or 0.0,
                kv_usage=v["kv_usage"] or 0.0, preemptions=v["preemptions"] or 0.0, replicas=replicas,
                # a queue gauge not read (NaN) is no queue of 0: a window that cannot tell its backlog teaches nothing
                steady=(not unsure and not v["restarts"] and v["replicas_before"] in (None, replicas)
                        and v["running"] is not None and v["waiting"] is not None),
                queue_ms=ms("queue_s"), tokens_per_step=_per_step(v["tokens_per_step"]),
                draft_tokens=None if v["draft_tokens"] is None else drafted_per_step(v["draft_tokens"], 1.0),
                **_before(v))
        return out


def _per_step(value: float | None) -> float | None:
    """The tokens a step gave a decoding request, held to what `tokens_per_step` allows (None: not read)."""
    return None if value is None else tokens_per_step(value, 1.0)


def _before(v: dict[str, float | None]) -> dict[str, float | None]:
    """The queue gauges at the window's start, where they and those at its end all read as numbers."""
    known = all(v[k] is not None for k in ("running", "waiting", "running_before", "waiting_before"))
    return {k: v[k] if known else None for k in ("running_before", "waiting_before")}
