"""What telemetry sources deliver, behind small protocols."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from queuemodels.types import MAX_TOKENS_PER_STEP

SHOWN_CHARS = 160
"""How much of a query, an answer or a parser's complaint a message quotes."""


WINDOW_TIMEOUTS = 3
"""A window's reads (Prometheus queries, scrape pages), each within `telemetry.timeout_s`, start no new one past this
many timeouts in all: 17 queries each answered just inside 5 s had held the slow loop 73 s, and 40 trickling pages
200 s; one timeout shared by all failed a healthy Prometheus at 0.33 s a query (a review)."""


def window_late(what: str, timeout_s: float) -> str:
    """What a source says of a window past its reads' deadline (no count or time in it: said once while it
    repeats)."""
    return (f"a window's {what} took longer than {WINDOW_TIMEOUTS} x telemetry.timeout_s "
            f"({WINDOW_TIMEOUTS * timeout_s:g} s)")


def shortened(text: str, chars: int = SHOWN_CHARS) -> str:
    """`text` as a message quotes it: at most `chars`, and how long it was where it was cut (a page or an answer
    may be one line of megabytes)."""
    return text if len(text) <= chars else text[:chars] + f"... ({len(text)} characters)"


def tokens_per_step(later_tokens: float, outputs: float) -> float:
    """Tokens a decoding request gained per step, from a window's generated tokens after each request's first and
    the outputs (ITL samples, one a request a step) that gave them, within [1, MAX_TOKENS_PER_STEP]: a counter an
    engine does not export, or one a window edge splits from its samples, reads one token a step."""
    return min(max(later_tokens / outputs, 1.0), MAX_TOKENS_PER_STEP)


def drafted_per_step(draft_tokens: float, outputs: float) -> float | None:
    """Tokens drafted a step for a decoding request, on average over its steps: a window's drafted tokens (vLLM's
    spec_decode counter) over its outputs (ITL samples, one a request a step), within [0, MAX_TOKENS_PER_STEP - 1]
    (an n-gram drafter proposes on some steps only, and a step without drafts costs one position); None where no
    request decoded."""
    if not outputs > 0:
        return None
    return min(max(draft_tokens / outputs, 0.0), MAX_TOKENS_PER_STEP - 1.0)


def finite(value: object) -> float | None:
    """A reading's number as a finite float; None for a bool, no number, NaN, infinity, or an integer past a float's
    range (JSON and the text exposition format give one of 400 digits as an int, which math.isfinite raises on)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        out = float(value)
    except OverflowError:
        return None
    return out if math.isfinite(out) else None


class Numbers(dict[tuple[str, Any], int]):
    """GPU numbers by key, in the order first seen; one dropped with its key is never given again (a cluster's
    GPUs come and go, and a number reused would hand one GPU another's series and records)."""

    def __init__(self) -> None:
        super().__init__()
        self.next = 0

    def number(self, key: tuple[str, Any]) -> int:
        """The key's number, a new one where it has none."""
        n = self.get(key)
        if n is None:
            n = self[key] = self.next
            self.next += 1
        return n


class TelemetryError(Exception):
    """A source could not deliver this time (counted and survived by the controller)."""


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one instant; `power_w` None when the reading failed."""

    index: int
    uuid: str
    name: str
    power_w: float | None
    energy_j: float | None
    power_limit_w: float
    min_limit_w: float
    max_limit_w: float
    sm_clock_mhz: float | None = None
    service: str | None = None
    variant: str | None = None
    """The service's variant (accelerator type) this GPU serves, where the source knows it."""
    never_read: bool = False
    """A stand-in for a GPU listed and never read (its limits NaN: counted at the most it may draw, never set)."""
    capped_share: float | None = None
    """Share of the time since the last sample that the power limit held the clock down (NVML's power violation
    time); None where unknown (a first read, a driver or source without the counter)."""
    read_error: str | None = None
    """Why this GPU gave no reading this time, where the source knows (an NVML error: the GPU fell off the bus)."""


@dataclass(frozen=True)
class ServiceWindow:
    """Load and latency of one service over a window; None fields were not observable (no traffic)."""

    window_s: float
    rate_rps: float
    """Requests finished per second over the window (`vllm:request_success_total`): served, not offered; the
    estimator adds the queue's growth to read what arrived."""
    in_tokens: float | None
    out_tokens: float | None
    ttft_ms: float | None
    itl_ms: float | None
    ttft_p95_ms: float | None
    itl_p95_ms: float | None
    running: float
    waiting: float
    """Requests queued at the window's end, every replica together (`vllm:num_requests_waiting`)."""
    kv_usage: float
    preemptions: float
    replicas: int
    queue_ms: float | None = None
    """Mean time a request waited to be scheduled (`vllm:request_queue_time_seconds`); None: not reported."""
    tokens_per_step: float | None = None
    """Tokens a decoding request gained per step: the generated tokens less the first ones over the ITL samples
    (vLLM records one a request a step), 1 without speculative decoding; None: no ITL sample in the window."""
    draft_tokens: float | None = None
    """Tokens drafted a step for a decoding request, on average over its steps (`vllm:spec_decode_num_draft_tokens`
    over the ITL samples); None: not exported (no speculative decoding), or no ITL sample in the window."""
    steady: bool = True
    """The same servers served the whole window: none started, stopped or restarted in it (a window that
    spans a restart mixes a dark replica, requeued requests and a cold cache; no steady-state model fits it)."""
    waiting_before: float | None = None
    """Requests queued at the window's start, every replica together (None: not read, or a gauge unreadable at
    either end): with `waiting`, the queue's growth over the window."""
    running_before: float | None = None
    """Requests running at the window's start, likewise: with the waiting, what was offered in the window
    (arrivals = completions + the growth of the requests in the system)."""


class GpuSource(Protocol):
    def sample(self, now: float) -> list[GpuSample]: ...


@runtime_checkable
class DepartingGpus(Protocol):
    """A GPU source that knows when a GPU is gone for good (the operator's node plans: its node left the site),
    where others only see it missing (counted at its last limit, as it may still draw)."""

    def departed(self) -> frozenset[str]:
        """UUIDs of the GPUs gone since the last call."""
        ...


class VllmSource(Protocol):
    def observe(self, now: float, services: list[str]) -> dict[str, ServiceWindow | None]: ...
