"""vLLM source `scrape`: the same figures as the `prometheus` source, read straight from each replica's
`/metrics` page, for hosts without a Prometheus server.

Rates come from counter deltas between this observation and the last (vllm_window does what rate() does).
Each page's series carry the page's URL as `instance`, so replicas and restarts stay apart. When a page of
a service cannot be fetched or parsed, the failure goes to `on_error` and the service has no observation
this time; its last snapshot is kept, so the next window spans both and no traffic is lost or invented. So
does a page that holds no sample of the service's model (a model name that is not served), and, for up to
HOLD_CYCLES windows, one whose counter or histogram sample is no reading (NaN, infinite, negative): left out,
that series would read as no requests, then, back, as all it ever counted. Past that the window goes on without
it: not steady (the tuner learns nothing from it), that series' requests missing from its rate until it reads
again, from its next reading on; while no finished-request counter of the model reads anywhere, the window waits.
A gauge that is no reading is left out at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from controller.http_fetch import Unreachable, http_request
from controller.telemetry.base import WINDOW_TIMEOUTS, ServiceWindow, TelemetryError, shortened, window_late
from controller.telemetry.vllm_window import Snapshot, gone, is_gauge, snapshots, unreadable, window

log = logging.getLogger(__name__)

FetchPage = Callable[[str, float], str]
OnError = Callable[[str, str], None]


def http_get(url: str, timeout_s: float) -> str:
    """The page at `url` (controller.http_fetch: read whole within `timeout_s`, at most 4 MiB)."""
    try:
        answer = http_request(url, {}, timeout_s)
    except Unreachable as exc:
        raise TelemetryError(f"scrape: {exc}") from exc
    if not 200 <= answer.status < 300:
        raise TelemetryError(f"scrape: HTTP {answer.status} from {url}")
    return answer.body.decode("utf-8", errors="replace")


def parse_page(text: str, instance: str) -> list[Metric]:
    """A text-format page as metric families, every sample labelled with `instance`."""
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        # the parser quotes the whole line it stopped at: a page may be one line of 4 MiB
        raise TelemetryError(f"scrape: {instance}: not a Prometheus text page ({shortened(str(exc))})") from exc
    for fam in families:
        fam.samples = [s._replace(labels={**s.labels, "instance": instance}) for s in fam.samples]
    return families


HOLD_CYCLES = 3
"""Windows in a row a service's window is held for a counter that is no reading, before it goes on without it
(an exporter that keeps one froze the service's demand for good)."""


def _log_error(kind: str, message: str) -> None:
    log.warning("%s: %s", kind, message)


class ScrapeVllmSource:
    def __init__(self, urls: dict[str, tuple[str, ...]], models: dict[str, str], timeout_s: float = 5.0,
                 fetch: FetchPage = http_get, on_error: OnError | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.urls, self.models = urls, models
        self.timeout_s = timeout_s
        self.fetch, self.on_error = fetch, on_error or _log_error
        self.clock = clock
        """Seconds (the daemon's: time.monotonic) each page is timed by when it came, not by the tick that asked for it
        (one 4 s slow within its timeout read a steady 20 rps as 28, then 12); a service's window is at its pages'
        mean time. Only this source's windows read it (their lengths), so it need not be the caller's clock. None:
        every page at `now`."""
        self._last: dict[str, Snapshot] = {}
        self._held: dict[str, int] = {}
        """Per service: windows held in a row for a counter that is no reading."""
        self._first = 0
        """Which service a window reads first (the one after last window's first): past the deadline the same
        services had always been the ones left unread."""
        self._gaps: dict[str, int] = {}
        """Per service, the windows held in a row for a counter or histogram its last page had and this one lacks."""

    def _read(self, url: str, deadline: float) -> list[Metric] | None:
        if time.monotonic() > deadline:  # no count or time in the line: it is said once while it repeats
            self.on_error("scrape", f"{window_late('pages', self.timeout_s)}: the pages after were not read")
            return None
        try:
            return parse_page(self.fetch(url, self.timeout_s), url)
        except TelemetryError as exc:
            self.on_error("scrape", str(exc).removeprefix("scrape: "))  # said under its kind, once
            return None

    def observe(self, now: float, services: list[str]) -> dict[str, ServiceWindow | None]:
        out: dict[str, ServiceWindow | None] = {}
        deadline = time.monotonic() + WINDOW_TIMEOUTS * self.timeout_s
        start = self._first % len(services) if services else 0  # where the deadline cuts moves window by window
        self._first += 1
        for name in services[start:] + services[:start]:
            model, urls = self.models.get(name), self.urls.get(name, ())
            pages, came = [], []
            for url in urls:
                pages.append(self._read(url, deadline))
                came.append(now if self.clock is None else self.clock())
            read_at = sum(came) / len(came) if came else now  # the mean page's time: the window's rates are sums
            if model is None or not urls or any(p is None for p in pages):
                out[name] = None
                continue
            families = [f for page in pages if page for f in page]
            bad = unreadable(families, model)
            counter = next((b for b in bad if not is_gauge(b)), None)  # left out, one reads as a rate from nothing
            held = self._held[name] = self._held.get(name, 0) + 1 if counter else 0
            if bad:
                first = counter or bad[0]
                what = ("its window waits for pages without one" if held <= HOLD_CYCLES else
                        f"left out after {HOLD_CYCLES} windows held for it") if counter else "left out"
                self.on_error("scrape", f"{name}: {first.labels.get('instance', '')}: {first.name} of {model} is no "
                              f"reading (NaN, infinite or negative): {what}")
            if 0 < held <= HOLD_CYCLES:
                out[name] = None
                continue
            snap = snapshots(families, read_at).get(model)
            if snap is None or not snap.engines:  # nothing of the model: no word on its demand, not a demand of 0
                if not bad:  # (else said above)
                    self.on_error("scrape", f"{name}: no vLLM sample of {model} on {', '.join(urls)}; its window "
                                  "waits for one")
                out[name] = None
                continue
            if snap.repeated:
                where, what = snap.repeated[0]
                self.on_error("scrape", f"{name}: {where}: {what} of {model} is on its page twice with the same labels "
                              "(and so are others): the first of each is read")
            if snap.unread and not any(k[1] == "success" for k in snap.counters):  # no finished request readable:
                out[name] = None  # its demand is unknown, not 0
                continue
            last = self._last.get(name)
            if last is not None and (missing := gone(snap, last)):
                waited = self._gaps[name] = self._gaps.get(name, 0) + 1
                if waited <= HOLD_CYCLES:  # read as 0 it was no demand, and back, all it ever counted
                    self.on_error("scrape", f"{name}: {missing[0][0]}: {missing[0][1]} of {model} is missing from "
                                  "its page (cut short?): its window waits for a page with it")
                    out[name] = None
                    continue
                snap.unread |= set(missing)  # left out, and counted from its next reading
                if not any(k[1] == "success" for k in snap.counters):  # as unread: its demand unknown, not 0
                    out[name] = None
                    continue
            self._gaps[name] = 0
            self._last[name] = snap
            out[name] = window(snap, last) if last is not None else None
        return out
