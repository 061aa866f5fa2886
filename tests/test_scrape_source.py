"""vLLM source `scrape`: real /metrics pages of the emulator, read directly; true load from counter deltas,
no traffic lost or invented when a page fails, and the same over HTTP from the real-time emulator."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller.telemetry.base import TelemetryError
from controller.telemetry.scrape import HOLD_CYCLES, ScrapeVllmSource
from simulator.host import SimHost
from simulator.serve import RealTimeEmulator
from simulator.vllm_metrics import VllmCollector
from simulator.workload import TokenDist, Workload, constant

MODEL = "llama-3.1-8b"


def _host() -> SimHost:
    host = SimHost("H100-SXM", 2, seed=5, start_delay_s=0.0)
    host.add_service("chat", MODEL, Workload(constant(10.0), TokenDist(500), TokenDist(100),
                                             np.random.default_rng(5)), replicas=2, max_num_seqs=64)
    return host


def _totals(host: SimHost) -> tuple[float, float, float]:
    ms = [r.engine.metrics for r in host.services["chat"].replicas]
    return (sum(m.success_total for m in ms), sum(m.ttft.sum for m in ms), sum(m.ttft.count for m in ms))


class Pages:
    """One URL per replica, each a real text page of that replica's engine; `down` URLs fail."""

    def __init__(self, host: SimHost) -> None:
        self.host, self.down = host, set[str]()
        self.urls = tuple(f"http://replica-{i}/metrics" for i in range(len(host.services["chat"].replicas)))

    def fetch(self, url: str, timeout_s: float) -> str:
        if url in self.down:
            raise TelemetryError(f"scrape: {url} unreachable: refused")
        engine = self.host.services["chat"].replicas[self.urls.index(url)].engine
        registry = CollectorRegistry()
        registry.register(VllmCollector(lambda: [engine]))
        return generate_latest(registry).decode()


def test_scrape_reads_the_true_rate_and_latency_from_counter_deltas() -> None:
    host = _host()
    pages = Pages(host)
    source = ScrapeVllmSource({"chat": pages.urls}, {"chat": MODEL}, fetch=pages.fetch)
    host.advance_to(20.0)
    assert source.observe(20.0, ["chat"]) == {"chat": None}  # a first snapshot has no window yet
    before = _totals(host)
    host.advance_to(80.0)
    w = source.observe(80.0, ["chat", "other"])["chat"]
    after = _totals(host)
    assert w is not None and w.replicas == 2 and w.window_s == 60.0
    assert w.rate_rps == pytest.approx((after[0] - before[0]) / 60.0, rel=1e-9)
    assert w.ttft_ms == pytest.approx(1000 * (after[1] - before[1]) / (after[2] - before[2]), rel=1e-9)
    assert w.rate_rps == pytest.approx(10.0, rel=0.1)
    assert w.itl_ms is not None and w.ttft_p95_ms is not None and w.in_tokens == pytest.approx(500, rel=0.1)


def test_a_failed_page_means_no_observation_and_the_next_window_catches_up() -> None:
    host = _host()
    pages = Pages(host)
    errors: list[str] = []
    source = ScrapeVllmSource({"chat": pages.urls}, {"chat": MODEL}, fetch=pages.fetch,
                              on_error=lambda kind, msg: errors.append(msg))
    host.advance_to(20.0)
    source.observe(20.0, ["chat"])
    start = _totals(host)[0]
    host.advance_to(50.0)
    pages.down.add(pages.urls[1])
    assert source.observe(50.0, ["chat"]) == {"chat": None}
    assert len(errors) == 1 and "replica-1" in errors[0]
    pages.down.clear()
    host.advance_to(80.0)
    w = source.observe(80.0, ["chat"])["chat"]
    assert w is not None and w.window_s == 60.0
    assert w.rate_rps == pytest.approx((_totals(host)[0] - start) / 60.0, rel=1e-9)


def test_not_a_metrics_page_is_an_error_not_a_crash() -> None:
    errors: list[str] = []
    source = ScrapeVllmSource({"chat": ("http://x/metrics",)}, {"chat": MODEL},
                              fetch=lambda url, t: "<html>login</html>\n", on_error=lambda k, m: errors.append(m))
    assert source.observe(1.0, ["chat"]) == {"chat": None}
    assert errors and "not a Prometheus text page" in errors[0]


def test_scrape_over_http_from_the_real_time_emulator() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    host = _host()
    emulator = RealTimeEmulator(host, port)
    try:
        source = ScrapeVllmSource({"chat": (f"http://127.0.0.1:{port}/metrics",)}, {"chat": MODEL}, timeout_s=2.0)
        with emulator.lock:
            before = _totals(host)
        t0 = time.monotonic()
        source.observe(t0, ["chat"])
        time.sleep(3.0)
        with emulator.lock:
            after = _totals(host)
        t1 = time.monotonic()
        w = source.observe(t1, ["chat"])["chat"]
        assert w is not None and w.replicas == 2
        assert w.rate_rps * w.window_s == pytest.approx(after[0] - before[0], abs=3)
        assert w.ttft_ms == pytest.approx(1000 * (after[1] - before[1]) / (after[2] - before[2]), rel=0.05)
    finally:
        emulator.stop()
    errors: list[str] = []
    dead = ScrapeVllmSource({"chat": (f"http://127.0.0.1:{port}/metrics",)}, {"chat": MODEL}, timeout_s=1.0,
                            on_error=lambda k, m: errors.append(m))
    assert dead.observe(0.0, ["chat"]) == {"chat": None} and "unreachable" in errors[0]


def test_a_bucket_whose_bound_is_no_number_is_skipped_not_the_whole_page() -> None:
    """`le="fast"` (or no `le`), which the text parser accepts, raised out of `observe`: every service lost its
    window, and those read before it lost theirs for good."""
    host = _host()
    pages = Pages(host)

    def hostile(url: str, timeout_s: float) -> str:
        page = pages.fetch(url, timeout_s)
        return page + f'vllm:time_to_first_token_seconds_bucket{{model_name="{MODEL}",le="fast"}} 3.0\n'

    source = ScrapeVllmSource({"chat": pages.urls}, {"chat": MODEL}, fetch=hostile)
    host.advance_to(20.0)
    source.observe(20.0, ["chat"])
    host.advance_to(80.0)
    w = source.observe(80.0, ["chat"])["chat"]
    assert w is not None and w.ttft_p95_ms is not None and w.rate_rps == pytest.approx(10.0, rel=0.1)


def test_a_server_restarted_on_the_same_address_makes_its_window_unsteady() -> None:
    """A restart keeps the page's address and engine label, so the same series; its counters fall to zero. The
    window was called steady, and the tuner learnt from a dark replica and a cold cache (Prometheus' source
    reads resets() for this)."""
    host = _host()
    pages = Pages(host)
    source = ScrapeVllmSource({"chat": pages.urls}, {"chat": MODEL}, fetch=pages.fetch)
    host.advance_to(20.0)
    source.observe(20.0, ["chat"])
    host.advance_to(50.0)
    w = source.observe(50.0, ["chat"])["chat"]
    assert w is not None and w.steady
    engine = host.services["chat"].replicas[1].engine
    engine.metrics = type(engine.metrics)(MODEL)  # the server came back: every counter from zero
    host.advance_to(80.0)
    w = source.observe(80.0, ["chat"])["chat"]
    assert w is not None and not w.steady and w.replicas == 2
    host.advance_to(110.0)
    w = source.observe(110.0, ["chat"])["chat"]
    assert w is not None and w.steady


def test_a_page_of_one_huge_bad_line_is_quoted_short() -> None:
    errors: list[str] = []
    source = ScrapeVllmSource({"chat": ("http://x/metrics",)}, {"chat": MODEL},
                              fetch=lambda url, t: "vllm:x{" + "a" * 1_000_000 + "\n",
                              on_error=lambda k, m: errors.append(m))
    assert source.observe(1.0, ["chat"]) == {"chat": None}
    assert len(errors) == 1 and "not a Prometheus text page" in errors[0] and len(errors[0]) < 300


class Glitch:
    """The emulator's pages with an exporter's glitch while `on`: the lines starting with `prefix` read NaN on
    the page `only` (None: every page), or `extra` lines added."""

    def __init__(self, pages: Pages, prefix: str = "vllm:", only: str | None = None, extra: str = "") -> None:
        self.pages, self.prefix, self.only, self.extra, self.on = pages, prefix, only, extra, False
        self.errors: list[str] = []

    def fetch(self, url: str, timeout_s: float) -> str:
        page = self.pages.fetch(url, timeout_s)
        if not self.on or (self.only is not None and url != self.only):
            return page
        if self.extra:
            return page + self.extra
        return "\n".join(line.rsplit(" ", 1)[0] + " NaN" if line.startswith(self.prefix) else line
                         for line in page.splitlines()) + "\n"

    def source(self) -> ScrapeVllmSource:
        return ScrapeVllmSource({"chat": self.pages.urls}, {"chat": MODEL}, fetch=self.fetch,
                                on_error=lambda kind, msg: self.errors.append(msg))


@pytest.mark.parametrize("value", ["1" + "0" * 400, "-1000"], ids=["too-big-for-a-float", "negative"])
def test_a_gauge_that_is_no_reading_is_left_out_and_said(value: str) -> None:
    """The text parser gives `1` and 400 zeros as an int, which math.isfinite cannot take (OverflowError): every
    service lost its window that cycle, and those read before it lost theirs for good; summed in, a -1000 took the
    service's queue below 0. A gauge's sample that is no reading is said and left out."""
    host = _host()
    glitch = Glitch(Pages(host), extra=f'vllm:num_requests_waiting{{model_name="{MODEL}"}} {value}\n')
    source = glitch.source()
    host.advance_to(20.0)
    source.observe(20.0, ["chat"])
    glitch.on = True
    host.advance_to(80.0)
    w = source.observe(80.0, ["chat"])["chat"]
    assert w is not None and w.rate_rps == pytest.approx(10.0, rel=0.1) and w.waiting >= 0.0
    assert glitch.errors == [f"chat: {glitch.pages.urls[0]}: vllm:num_requests_waiting of {MODEL} is no reading "
                             "(NaN, infinite or negative): left out"]
    # the sum under-reads: no growth is read across it (it read as the queue emptied, then filled again), and the
    # window teaches the tuner nothing (a queue it cannot tell)
    assert w.waiting_before is None and w.running_before is None and not w.steady


def test_a_window_carries_the_queue_and_batch_at_its_start() -> None:
    """What arrived in a window is what finished plus the growth of the requests in the system over it: the window
    reads them at its start from the last page, as at its end from this one."""
    k = {"i": 1}

    def page(url: str, timeout_s: float) -> str:
        running = f'vllm:num_requests_running{{model_name="{MODEL}"}} {3.0 * k["i"]}\n'
        return _page(url, 10.0 * k["i"], 5.0 * k["i"]) + running

    source = ScrapeVllmSource({"chat": ("http://a/metrics",)}, {"chat": MODEL}, fetch=page)
    assert source.observe(0.0, ["chat"]) == {"chat": None}
    k["i"] = 4
    w = source.observe(10.0, ["chat"])["chat"]
    assert w is not None and (w.waiting_before, w.waiting, w.running_before, w.running) == (5.0, 20.0, 3.0, 12.0)


@pytest.mark.parametrize("glitch_of", ["every page", "the success counter", "one replica"])
def test_an_unreadable_counter_holds_the_window_rather_than_dropping_then_spiking_its_rate(glitch_of: str) -> None:
    """A replica whose every sample read NaN gave a window of rate 0 and no replica, steady, and unsaid: the plan
    took code from 3 replicas to 2 on no word of its demand. Only the success counter NaN, or one replica's whole
    page: that series was left out, so the window read its requests as none, and the next, finding it again,
    counted all it ever served as new. Said, and the window held, so the next good one spans both."""
    host = _host()
    pages = Pages(host)
    glitch = Glitch(pages, "vllm:request_success_total" if glitch_of == "the success counter" else "vllm:",
                    pages.urls[0] if glitch_of == "one replica" else None)
    source = glitch.source()
    host.advance_to(20.0)
    source.observe(20.0, ["chat"])
    start = _totals(host)[0]
    glitch.on = True
    host.advance_to(50.0)
    assert source.observe(50.0, ["chat"]) == {"chat": None} and len(glitch.errors) == 1
    assert glitch.errors[0].startswith(f"chat: {pages.urls[0]}: vllm:") and glitch.errors[0].endswith(
        f" of {MODEL} is no reading (NaN, infinite or negative): its window waits for pages without one")
    glitch.on = False
    host.advance_to(80.0)
    w = source.observe(80.0, ["chat"])["chat"]
    assert w is not None and w.window_s == 60.0 and w.replicas == 2
    assert w.rate_rps == pytest.approx((_totals(host)[0] - start) / 60.0, rel=1e-9)


def test_a_counter_that_stays_no_reading_holds_the_window_a_while_then_goes_on_without_it() -> None:
    """One replica's success counter read NaN for good: every window was held, so the service's demand froze at
    its last reading for as long as the exporter lived. Held HOLD_CYCLES windows, then read without it (not
    steady); back, the series counts from its first reading (not all it ever counted)."""
    host = _host()
    pages = Pages(host)
    glitch = Glitch(pages, "vllm:request_success_total", pages.urls[0])
    source = glitch.source()
    host.advance_to(20.0)
    source.observe(20.0, ["chat"])
    glitch.on = True
    got = []
    for t in range(50, 50 + 30 * (HOLD_CYCLES + 2), 30):
        host.advance_to(float(t))
        got.append(source.observe(float(t), ["chat"])["chat"])
    assert got[:HOLD_CYCLES] == [None] * HOLD_CYCLES and all(w is not None for w in got[HOLD_CYCLES:])
    assert not any(w.steady for w in got[HOLD_CYCLES:] if w is not None)  # a series left out: the tuner waits
    assert glitch.errors[HOLD_CYCLES].endswith(f"left out after {HOLD_CYCLES} windows held for it")
    glitch.on = False
    t0, start = float(t), _totals(host)[0]
    host.advance_to(t0 + 30.0)
    back = source.observe(t0 + 30.0, ["chat"])["chat"]
    assert back is not None and back.rate_rps <= (_totals(host)[0] - start) / 30.0 * 1.01  # no spike


def _page(instance: str, success: float | None, waiting: float = 0.0) -> str:
    """A vLLM page of one engine: its waiting gauge, and its success counter where it has one (vLLM < 0.13 made
    a counter's series on its first use)."""
    out = f'vllm:num_requests_waiting{{model_name="{MODEL}"}} {waiting}\n'
    if success is not None:
        out += f'vllm:request_success_total{{model_name="{MODEL}",finished_reason="stop"}} {success}\n'
    return out


def test_a_counter_an_engine_makes_on_its_first_use_counts_from_zero() -> None:
    """A replica idle at one window has no success series yet; at the next it has served 30: those are its
    requests, not all it ever counted before (a rule that counted from the first reading lost them for good)."""
    urls = ("http://a/metrics", "http://b/metrics")
    served = {"http://a/metrics": [10.0, 40.0], "http://b/metrics": [None, 30.0]}
    k = {"i": 0}
    source = ScrapeVllmSource({"chat": urls}, {"chat": MODEL}, fetch=lambda url, t: _page(url, served[url][k["i"]]))
    assert source.observe(0.0, ["chat"]) == {"chat": None}
    k["i"] = 1
    w = source.observe(10.0, ["chat"])["chat"]
    assert w is not None and w.rate_rps == pytest.approx((30.0 + 30.0) / 10.0) and w.steady


def test_a_request_counter_unread_on_every_replica_is_no_demand_of_zero() -> None:
    """Past the hold, the success counter NaN on every page read as 0 requests a second: the plan took the
    service to its minimum. Its demand is unknown: the window waits."""
    urls = ("http://a/metrics", "http://b/metrics")
    source = ScrapeVllmSource({"chat": urls}, {"chat": MODEL}, fetch=lambda url, t: _page(url, float("nan"), 3.0),
                              on_error=lambda kind, msg: None)
    assert all(source.observe(float(t), ["chat"]) == {"chat": None} for t in range(0, 30 * (HOLD_CYCLES + 3), 30))


def test_a_page_cut_short_of_a_counter_holds_the_window_rather_than_reading_no_demand_then_a_spike() -> None:
    """A page cut at a line's end, with no length to tell (Connection: close), lacked the success counter: its
    window read 0 rps, steady, and the next, finding it again, counted all it ever served (6,727 rps read)."""
    host = _host()
    pages = Pages(host)
    cut = {"on": False}
    errors: list[str] = []

    def fetch(url: str, timeout_s: float) -> str:
        page = pages.fetch(url, timeout_s)
        if not cut["on"] or url != pages.urls[0]:
            return page
        return "".join(line for line in page.splitlines(keepends=True)
                       if not line.startswith("vllm:request_success_total"))

    source = ScrapeVllmSource({"chat": pages.urls}, {"chat": MODEL}, fetch=fetch,
                              on_error=lambda kind, msg: errors.append(msg))
    host.advance_to(20.0)
    source.observe(20.0, ["chat"])
    start = _totals(host)[0]
    cut["on"] = True
    host.advance_to(50.0)
    assert source.observe(50.0, ["chat"]) == {"chat": None}
    assert errors and "success of llama-3.1-8b is missing from its page" in errors[0]
    cut["on"] = False
    host.advance_to(80.0)
    w = source.observe(80.0, ["chat"])["chat"]
    assert w is not None and w.window_s == 60.0 and w.steady
    assert w.rate_rps == pytest.approx((_totals(host)[0] - start) / 60.0, rel=1e-9)


def test_a_request_counter_missing_past_the_hold_is_no_demand_of_zero() -> None:
    """Past its hold, a success counter missing from every page read as a steady 0 rps, where one that read NaN
    was no window: both are now no word on the service's demand."""
    host = _host()
    pages = Pages(host)

    def fetch(url: str, timeout_s: float) -> str:
        page = pages.fetch(url, timeout_s)
        if host.now_s <= 20.0:
            return page
        return "".join(line for line in page.splitlines(keepends=True)
                       if not line.startswith("vllm:request_success_total"))

    source = ScrapeVllmSource({"chat": pages.urls}, {"chat": MODEL}, fetch=fetch, on_error=lambda kind, msg: None)
    host.advance_to(20.0)
    source.observe(20.0, ["chat"])
    got = []
    for t in range(50, 50 + 30 * (HOLD_CYCLES + 3), 30):
        host.advance_to(float(t))
        got.append(source.observe(float(t), ["chat"])["chat"])
    assert got == [None] * (HOLD_CYCLES + 3)


@pytest.mark.parametrize("bound", ["NaN", "-5", "1e308"])
def test_a_bucket_bound_that_is_no_bound_is_skipped(bound: str) -> None:
    """`le="NaN"` read every p95 as NaN, an SLO missed each window (the margin rose to its most); `-5` a p95 of
    -4,318 ms, met."""
    host = _host()
    glitch = Glitch(Pages(host), extra=f'vllm:time_to_first_token_seconds_bucket{{model_name="{MODEL}",le="{bound}"}}'
                                       f" 1e9\n")
    glitch.on = True
    source = glitch.source()
    host.advance_to(20.0)
    source.observe(20.0, ["chat"])
    host.advance_to(80.0)
    w = source.observe(80.0, ["chat"])["chat"]
    assert w is not None and w.ttft_p95_ms is not None and 0.0 < w.ttft_p95_ms < 10_000.0


def test_a_histogram_sum_that_fell_while_its_count_rose_is_a_restart() -> None:
    """A server restarted in the window that served more than before: its _count rose and its _sum fell, and the
    window read 10 ms of TTFT for 7.5, steady."""
    from controller.telemetry.vllm_window import Snapshot, window

    key = ("a/0", "ttft")
    old = Snapshot(0.0, counters={("a/0", "success"): 100.0}, hist_sum={key: 10.0}, hist_count={key: 100.0},
                   engines={"a/0"})
    new = Snapshot(30.0, counters={("a/0", "success"): 400.0}, hist_sum={key: 3.0}, hist_count={key: 400.0},
                   engines={"a/0"})
    w = window(new, old)
    assert w is not None and not w.steady


@pytest.mark.parametrize(("urls", "late"), [(("http://a/metrics",), "page"), (("http://a/metrics",), "tick"),
                                             (("http://a/metrics", "http://b/metrics"), "page")])
def test_a_page_is_timed_when_it_came_not_when_the_tick_asked_for_it(urls: tuple[str, ...], late: str) -> None:
    """A page 4 s slow within its 5-s timeout, timed at the tick's start, read a steady 20 rps as 28, then 12; so did
    4 s of the tick's other reads before this one. Each page is timed by the clock when it came, and a service's
    window at its pages' mean time (stamped after the last, one slow page of two skewed the other)."""
    real = {"t": 0.0, "delay": 0.0}

    def fetch(url: str, timeout_s: float) -> str:
        if late == "page" and url == urls[-1]:
            real["t"] += real["delay"]
        return _page(url, 20.0 / len(urls) * real["t"])  # each engine's counter at the time it renders its page

    source = ScrapeVllmSource({"chat": urls}, {"chat": MODEL}, fetch=fetch, clock=lambda: real["t"])
    rates = []
    for now, delay in ((0.0, 0.0), (10.0, 4.0), (20.0, 0.0)):
        real["t"], real["delay"] = max(real["t"], now), delay
        if late == "tick":  # the tick's other reads, before this source's
            real["t"] += delay
        w = source.observe(now, ["chat"])["chat"]
        rates.append(None if w is None else w.rate_rps)
    assert rates == [None, pytest.approx(20.0), pytest.approx(20.0)]


def test_a_queue_gauge_one_page_lacks_reads_no_growth() -> None:
    """Two replicas, 50 running and 100 waiting each, steady: one page without its gauges at one end read the
    other's count as the queue and batch emptying, then filling (30 rps offered read for 20)."""
    urls = ("http://a/metrics", "http://b/metrics")
    k = {"i": 0}

    def page(url: str, timeout_s: float) -> str:
        gauges = f'vllm:num_requests_running{{model_name="{MODEL}"}} 50\n' if (url, k["i"]) != (urls[1], 1) else ""
        return _page(url, 150.0 * k["i"], 0.0 if gauges == "" else 100.0).replace(
            f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0.0\n', "") + gauges

    source = ScrapeVllmSource({"chat": urls}, {"chat": MODEL}, fetch=page)
    for i, now in enumerate((0.0, 15.0, 30.0)):
        k["i"] = i
        w = source.observe(now, ["chat"])["chat"]
        if i:
            assert w is not None and (w.waiting_before, w.running_before) == (None, None), (i, w)


def test_a_page_that_gives_a_sample_twice_is_read_once_and_said() -> None:
    """A page with each line twice read 1.5 times the rate, and the window after it was taken at 48.7 rps for 12 (a
    trial; Prometheus keeps the first of such samples): now the first of each is read, and the page is said."""
    said: list[str] = []
    count = {"http://a/metrics": [100.0, 400.0]}
    k = {"i": 0}

    def fetch(url: str, timeout_s: float) -> str:
        page = _page(url, count[url][k["i"]], waiting=2.0)
        return page + page if k["i"] == 1 else page

    source = ScrapeVllmSource({"chat": ("http://a/metrics",)}, {"chat": MODEL}, fetch=fetch,
                              on_error=lambda kind, msg: said.append(msg))
    assert source.observe(0.0, ["chat"]) == {"chat": None} and not said
    k["i"] = 1
    w = source.observe(10.0, ["chat"])["chat"]
    assert w is not None and w.rate_rps == pytest.approx(30.0) and w.waiting == 2.0
    assert said == ["chat: http://a/metrics: vllm:num_requests_waiting of llama-3.1-8b is on its page twice with the "
                    "same labels (and so are others): the first of each is read"]


def test_a_window_reads_no_page_past_three_timeouts_in_all() -> None:
    """Engines whose pages each take nearly their whole timeout: read one after another, 40 of them held the slow
    loop 200 s at a 5-s timeout. The window now starts no read past three timeouts in all, and says so once."""
    host = _host()
    pages, errors, asked, begun = Pages(host), list[str](), list[str](), list[float]()

    def slow(url: str, timeout_s: float) -> str:
        asked.append(url)
        begun.append(time.monotonic())
        time.sleep(timeout_s * 0.9)
        return pages.fetch(url.split("#")[0], timeout_s)

    urls = {f"svc-{i}": tuple(f"{u}#{i}" for u in pages.urls) for i in range(6)}  # 12 pages of 0.045 s each
    source = ScrapeVllmSource(urls, dict.fromkeys(urls, MODEL), timeout_s=0.05, fetch=slow,
                              on_error=lambda kind, message: errors.append(f"{kind}: {message}"))
    started = time.monotonic()
    source.observe(20.0, list(urls))
    # every read begun within the three timeouts, however long a loaded machine's sleeps overran (three or four of
    # them fit on an idle one, two under a busy test run)
    assert time.monotonic() - started < 4 * 0.05 + 0.1 and 2 <= len(asked) <= 5, len(asked)
    assert max(begun) - started < 3 * 0.05, [t - started for t in begun]
    assert set(errors) == {"scrape: a window's pages took longer than 3 x telemetry.timeout_s (0.15 s): the pages "
                           "after were not read"}
    read = len(asked)
    source.observe(40.0, list(urls))  # the next window starts one service on: not always the same ones left out
    assert asked[read] != asked[0], asked
