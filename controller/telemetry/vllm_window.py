"""Windows of vLLM figures from two snapshots of its metric families (what Prometheus' rate() does).

Shared by every source that sees raw vLLM metrics: the simulator's collector and scraped /metrics
pages. Counters may be reset by a restart; a negative delta counts from zero, as rate() does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

from controller.telemetry.base import ServiceWindow, drafted_per_step, finite, tokens_per_step

COUNTERS = {
    "vllm:request_success": "success",
    "vllm:prompt_tokens": "prompt",
    "vllm:generation_tokens": "generation",
    "vllm:num_preemptions": "preemptions",
    "vllm:spec_decode_num_draft_tokens": "draft_tokens",  # exported only under speculative decoding
}
HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": "ttft",
    "vllm:inter_token_latency_seconds": "itl",
    "vllm:time_per_output_token_seconds": "itl",  # deprecated name, vLLM < 0.13
    "vllm:request_prompt_tokens": "req_prompt",
    "vllm:request_generation_tokens": "req_gen",
    "vllm:request_queue_time_seconds": "queue",
}
GAUGES = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv",
    "vllm:gpu_cache_usage_perc": "kv",  # deprecated name
}

IN_SYSTEM = ("running", "waiting")
"""The gauges whose growth over a window is arrivals less completions."""
FAMILIES = frozenset(COUNTERS) | frozenset(HISTOGRAMS) | frozenset(GAUGES)
"""Every family a window reads (a source that builds its families may build these alone)."""
MAX_BOUND = 1e9
"""Largest histogram bucket bound taken (seconds or tokens), `+Inf` apart."""
RESETTING = ("counters", "hist_count", "hist_sum")
"""The snapshot tables a restart resets: a fall in any is one (a _sum fallen while its _count rose read 10 ms for
7.5)."""

Key = tuple[str, str]  # (engine series, figure)


@dataclass
class Snapshot:
    """Counters, histograms and gauges of one model, per engine series (so restarts reset cleanly)."""

    time_s: float
    counters: dict[Key, float] = field(default_factory=dict)
    hist_sum: dict[Key, float] = field(default_factory=dict)
    hist_count: dict[Key, float] = field(default_factory=dict)
    hist_buckets: dict[tuple[str, str, float], float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    engines: set[str] = field(default_factory=set)
    unread: set[Key] = field(default_factory=set)
    """The (series, figure) counters and histograms with a sample that was no reading: left out whole (a partial
    sum would jump when the rest came back), and counted from their next reading, not from zero."""
    gauges_short: bool = False
    """A running or waiting sample was no reading: the sums under-read, and no growth is read across them."""
    counted: set[Key] = field(default_factory=set)
    """The (series, gauge) running and waiting samples read: one an engine's last page had and this one lacks (or
    the other way) read its whole count as growth."""
    repeated: list[tuple[str, str]] = field(default_factory=list)
    """(instance, sample name) of each sample a page gave twice, the same labels: the first is read (a page with
    each line twice read 1.5 times the rate, and the window after it taken at 48.7 rps for 12), as Prometheus does."""


def snapshots(families: Iterable[Metric], time_s: float) -> dict[str, Snapshot]:
    """Group vLLM samples by `model_name`, keeping each engine series apart."""
    out: dict[str, Snapshot] = {}
    seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
    for fam in families:
        for s in fam.samples:
            model, value = s.labels.get("model_name"), _reading(s.value)
            if model is None:
                continue
            snap = out.setdefault(model, Snapshot(time_s))
            if (sample := (s.name, frozenset(s.labels.items()))) in seen:
                snap.repeated.append((s.labels.get("instance", ""), s.name))
                continue
            seen.add(sample)
            series = s.labels.get("instance", "") + "/" + s.labels.get("engine", "0")
            name = s.name
            if value is None:
                if (figure := _figure(name)) is not None:
                    snap.unread.add((series, figure))
                snap.gauges_short |= GAUGES.get(name) in IN_SYSTEM
                continue
            snap.engines.add(series)
            if name.endswith("_total") and name[:-6] in COUNTERS:
                k = (series, COUNTERS[name[:-6]])
                snap.counters[k] = snap.counters.get(k, 0.0) + value
            elif name.endswith("_bucket") and name[:-7] in HISTOGRAMS:
                le = _bound(s.labels.get("le"))
                if le is not None:  # a bucket without a number for its bound is no bucket (not the page's end)
                    snap.hist_buckets[(series, HISTOGRAMS[name[:-7]], le)] = value
            elif name.endswith("_sum") and name[:-4] in HISTOGRAMS:
                snap.hist_sum[(series, HISTOGRAMS[name[:-4]])] = value
            elif name.endswith("_count") and name[:-6] in HISTOGRAMS:
                snap.hist_count[(series, HISTOGRAMS[name[:-6]])] = value
            elif name in GAUGES:
                key = GAUGES[name]
                snap.gauges[key] = snap.gauges.get(key, 0.0) + value
                if key in IN_SYSTEM:
                    snap.counted.add((series, key))
    for snap in out.values():
        for table in (snap.counters, snap.hist_sum, snap.hist_count):
            for k in snap.unread & table.keys():
                del table[k]
        if snap.unread:
            snap.hist_buckets = {k: v for k, v in snap.hist_buckets.items() if k[:2] not in snap.unread}
    return out


def _figure(name: str) -> str | None:
    """The counter or histogram figure a sample's name is of (None: a gauge's, or no figure a window reads)."""
    family = _family(name)
    return COUNTERS.get(family) if name.endswith("_total") else HISTOGRAMS.get(family)


def _reading(value: object) -> float | None:
    """A vLLM sample's value: a finite number, never negative (every figure read counts or measures something);
    None otherwise, left out as no reading."""
    out = finite(value)
    return out if out is not None and out >= 0.0 else None


def unreadable(families: Iterable[Metric], model: str) -> list[Sample]:
    """The samples of `model` in the families a window reads that are no reading (NaN, infinite, negative), which
    `snapshots` leaves out."""
    return [s for fam in families for s in fam.samples
            if s.labels.get("model_name") == model and _family(s.name) in FAMILIES and _reading(s.value) is None]


def is_gauge(sample: Sample) -> bool:
    """Whether a sample is a gauge's: one left out under-reads a window, where a counter's makes a rate from
    nothing (`window`)."""
    return sample.name in GAUGES


def _family(name: str) -> str:
    """A sample's family: its name less the suffix a counter or histogram sample carries."""
    for suffix in ("_total", "_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _bound(le: str | None) -> float | None:
    """A histogram bucket's upper bound (`+Inf` included); None where the label is missing or no bound (NaN, below 0,
    or past any second or token count: `le="NaN"` read every p95 as NaN, an SLO missed)."""
    try:
        bound = None if le is None else float(le)
    except ValueError:
        return None
    return bound if bound is not None and (bound == math.inf or 0.0 <= bound <= MAX_BOUND) else None


def gone(new: Snapshot, old: Snapshot) -> list[Key]:
    """The counters and histograms of an engine still reporting that the old snapshot read and the new one lacks (a
    page cut short at a line's end, with no length to tell): summed as they stand, one read as no demand, then all it
    ever counted as new."""
    tables = ((new.counters, old.counters), (new.hist_count, old.hist_count))
    return sorted({k for now, was in tables for k in was
                   if k[0] in new.engines and k not in now and k not in new.unread})


def _delta(new: float, old: float) -> float:
    return new - old if new >= old else new


def _since(new: float, old: float | None) -> float:
    """A counter's increase; one that was no reading in the old snapshot (None) counts from its first reading,
    not from zero, which would read all it ever counted as new."""
    return 0.0 if old is None else _delta(new, old)


def _summed(new: dict[Key, float], old: Snapshot, table: dict[Key, float], figure: str) -> float:
    """Sum over engine series of each series' increase (a reset, or a series new to the window, counts from zero;
    one the old snapshot had no reading of, from its first reading)."""
    return sum(_since(v, table.get(k, None if k in old.unread else 0.0)) for k, v in new.items() if k[1] == figure)


def _reset(new: dict[Key, float], old: dict[Key, float]) -> bool:
    """Whether a series' counter fell: its engine restarted in the window (on the same address, so the series is
    the same; what Prometheus' resets() counts)."""
    return any(v < old[k] for k, v in new.items() if k in old)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile on cumulative bucket deltas (linear within a bucket)."""
    edges = sorted(buckets)
    if not edges or buckets[edges[-1]] <= 0:
        return None
    counts = np.array([buckets[e] for e in edges])
    rank = q * counts[-1]
    i = int(np.searchsorted(counts, rank, side="left"))
    if i >= len(edges) - 1 and math.isinf(edges[-1]):
        return edges[-2] if len(edges) > 1 else None
    lo_edge = 0.0 if i == 0 else edges[i - 1]
    lo_count = 0.0 if i == 0 else counts[i - 1]
    in_bucket = counts[i] - lo_count
    if in_bucket <= 0:
        return edges[i]
    return float(lo_edge + (edges[i] - lo_edge) * (rank - lo_count) / in_bucket)


def window(new: Snapshot, old: Snapshot) -> ServiceWindow | None:
    """Figures between two snapshots; None when the window is empty."""
    dt = new.time_s - old.time_s
    if dt <= 0:
        return None

    def counter(key: str) -> float:
        return _summed(new.counters, old, old.counters, key)

    def mean(key: str, scale: float) -> float | None:
        n = _summed(new.hist_count, old, old.hist_count, key)
        if n <= 0:
            return None
        return scale * _summed(new.hist_sum, old, old.hist_sum, key) / n

    outputs = _summed(new.hist_count, old, old.hist_count, "itl")  # ITL samples: one a decoding request a step

    def per_step() -> float | None:  # generated tokens after the first, over the outputs that gave them
        if outputs <= 0:
            return None
        return tokens_per_step(counter("generation") - _summed(new.hist_count, old, old.hist_count, "ttft"), outputs)

    def drafted() -> float | None:  # tokens drafted over every decoding request's steps; None: no counter
        if not any(figure == "draft_tokens" for _, figure in new.counters):
            return None
        return drafted_per_step(counter("draft_tokens"), outputs)

    def p95(key: str) -> float | None:
        buckets: dict[float, float] = {}
        for (series, figure, le), c in new.hist_buckets.items():
            if figure == key:
                was = old.hist_buckets.get((series, figure, le), None if (series, figure) in old.unread else 0.0)
                buckets[le] = buckets.get(le, 0.0) + _since(c, was)
        v = histogram_quantile(0.95, buckets)
        return None if v is None else 1000.0 * v

    both = new.engines & old.engines  # an engine come or gone makes the window unsteady anyway
    known = not (new.gauges_short or old.gauges_short) and {k for k in new.counted if k[0] in both} == {
        k for k in old.counted if k[0] in both}
    return ServiceWindow(
        window_s=dt,
        rate_rps=counter("success") / dt,
        in_tokens=mean("req_prompt", 1.0),
        out_tokens=mean("req_gen", 1.0),
        ttft_ms=mean("ttft", 1000.0),
        itl_ms=mean("itl", 1000.0),
        ttft_p95_ms=p95("ttft"),
        itl_p95_ms=p95("itl"),
        running=new.gauges.get("running", 0.0),
        waiting=new.gauges.get("waiting", 0.0),
        kv_usage=new.gauges.get("kv", 0.0) / max(1, len(new.engines)),
        preemptions=counter("preemptions"),
        replicas=len(new.engines),
        steady=new.engines == old.engines and not any(_reset(getattr(new, t), getattr(old, t)) for t in RESETTING)
        and not (new.unread or old.unread) and not new.gauges_short,  # a series left out, or a queue not read
        queue_ms=mean("queue", 1000.0),
        tokens_per_step=per_step(),
        draft_tokens=drafted(),
        waiting_before=old.gauges.get("waiting", 0.0) if known else None,
        running_before=old.gauges.get("running", 0.0) if known else None,
    )
