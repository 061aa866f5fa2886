"""One contract suite for the vLLM sources that read engines directly (sim, and scrape over the emulator's
real /metrics pages): no window before a second look, the true served rate and live replicas in a steady
window, and a window that spans a restart marked unsteady. The `prometheus` source is held to the same
figures against a real Prometheus in test_prometheus_integration.py."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller.telemetry.base import VllmSource
from controller.telemetry.scrape import ScrapeVllmSource
from controller.telemetry.sim import SimVllmSource
from controller.telemetry.vllm_window import snapshots, window
from simulator.host import SimHost
from simulator.vllm_metrics import EngineMetrics, VllmCollector
from simulator.workload import TokenDist, Workload, constant

MODEL = "llama-3.1-8b"


def host(personality: str = "roofline") -> SimHost:
    h = SimHost("H100-SXM", 2, seed=5, start_delay_s=5.0, personalities={MODEL: personality})
    h.add_service("chat", MODEL, Workload(constant(8.0), TokenDist(400), TokenDist(100), np.random.default_rng(5)),
                  replicas=2, max_num_seqs=64)
    return h


def scrape(h: SimHost) -> ScrapeVllmSource:
    """Pages of the replicas in place, one URL per GPU slot (a restarted replica answers at the same URL)."""
    urls = ("http://replica-0/metrics", "http://replica-1/metrics")

    def fetch(url: str, timeout_s: float) -> str:
        engine = h.services["chat"].replicas[urls.index(url)].engine
        registry = CollectorRegistry()
        registry.register(VllmCollector(lambda: [engine]))
        return generate_latest(registry).decode()

    return ScrapeVllmSource({"chat": urls}, {"chat": MODEL}, fetch=fetch)


@pytest.fixture(params=["sim", "scrape"])
def plant(request: pytest.FixtureRequest) -> tuple[SimHost, VllmSource]:
    h = host()
    return h, (SimVllmSource(h) if request.param == "sim" else scrape(h))


def served(h: SimHost) -> float:
    return sum(r.engine.metrics.success_total for r in h.services["chat"].replicas)


def test_no_window_before_a_second_look_and_none_for_an_unknown_service(plant: tuple[SimHost, VllmSource]) -> None:
    h, source = plant
    h.advance_to(10.0)
    assert source.observe(10.0, ["chat", "nope"]) == {"chat": None, "nope": None}


def test_a_steady_window_reads_the_served_rate_and_the_live_replicas(plant: tuple[SimHost, VllmSource]) -> None:
    h, source = plant
    h.advance_to(20.0)
    source.observe(20.0, ["chat"])
    before = served(h)
    h.advance_to(80.0)
    w = source.observe(80.0, ["chat"])["chat"]
    assert w is not None and w.steady and w.replicas == 2
    assert w.rate_rps == pytest.approx((served(h) - before) / 60.0, rel=0.02)
    assert w.ttft_ms is not None and w.ttft_ms > 0 and w.itl_ms is not None and w.itl_ms > 0
    # the queueing part of TTFT (vLLM's request_queue_time_seconds), which the step family's tuner reads apart
    assert w.queue_ms is not None and 0.0 <= w.queue_ms < w.ttft_ms


def test_a_window_reads_the_tokens_a_step_gives(plant: tuple[SimHost, VllmSource]) -> None:
    """One token a step without speculative decoding, to the digit; with it, the tokens generated after each
    request's first over the ITL samples (one a sequence a step), as the engines counted them."""
    h, source = plant
    h.advance_to(20.0)
    source.observe(20.0, ["chat"])
    h.advance_to(50.0)
    w = source.observe(50.0, ["chat"])["chat"]
    assert w is not None and w.tokens_per_step == 1.0 and w.draft_tokens is None  # no spec_decode counter
    spec = host("spec-decode")
    source = SimVllmSource(spec) if isinstance(source, SimVllmSource) else scrape(spec)
    spec.advance_to(20.0)
    source.observe(20.0, ["chat"])
    before = [counts(r.engine.metrics) for r in spec.services["chat"].replicas]
    spec.advance_to(50.0)
    w = source.observe(50.0, ["chat"])["chat"]
    gained = np.sum([np.subtract(counts(r.engine.metrics), b) for r, b in
                     zip(spec.services["chat"].replicas, before, strict=True)], axis=0)
    assert w is not None and w.tokens_per_step == pytest.approx((gained[0] - gained[1]) / gained[2], rel=1e-9)
    assert 2.0 < w.tokens_per_step < 3.0  # drafts of 3, each kept at 0.7: 2.53 a step, less where answers end
    assert w.draft_tokens == 3.0  # vllm:spec_decode_num_draft_tokens over num_drafts: every step drafts three


def counts(m: EngineMetrics) -> tuple[float, float, float]:
    """Generated tokens, first tokens (TTFT samples) and ITL samples so far."""
    return float(m.generation_tokens_total), float(m.ttft.count), float(m.itl.count)


def test_a_window_that_spans_a_restart_is_not_steady(plant: tuple[SimHost, VllmSource]) -> None:
    h, source = plant
    h.advance_to(20.0)
    source.observe(20.0, ["chat"])
    h.advance_to(30.0)
    h.restart_with_batch("chat", 32)
    h.advance_to(60.0)
    w = source.observe(60.0, ["chat"])["chat"]
    assert w is not None and not w.steady


def test_the_sim_source_reads_the_windows_a_full_page_gives() -> None:
    """The sim source builds only the families a window reads; every engine is in each of them, so its windows
    are exactly those of the whole /metrics page of the same engines, across a restart and a scale-up."""
    h = host()
    sim, last = SimVllmSource(h), None
    steps = [lambda: None, lambda: h.restart_with_batch("chat", 32), lambda: None, lambda: h.scale("chat", 1),
             lambda: None]
    for k, change in enumerate(steps):
        change()
        h.advance_to(10.0 * (k + 1))
        engines = h.ready_engines("chat")
        page = snapshots(VllmCollector(lambda e=engines: e).collect(), h.now_s)[MODEL]
        assert sim.observe(h.now_s, ["chat"])["chat"] == (None if last is None else window(page, last))
        last = page
