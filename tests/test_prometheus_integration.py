"""The `prometheus` source against Debian's real `prometheus` on loopback, scraping the vLLM emulator.

The emulator records its own cumulative counters as it steps (the ground truth); the source's figures
over a window must match what the emulator really served in that window within 5 %. Then Prometheus is
stopped mid-test and the source must fail with one TelemetryError, not hang or report zeros.
"""

from __future__ import annotations

import bisect
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

from controller.telemetry.base import TelemetryError
from controller.telemetry.prometheus import PrometheusVllmSource
from controller.telemetry.prometheus_api import PrometheusApi, by_model
from simulator.host import SimHost
from simulator.serve import RealTimeEmulator
from simulator.workload import TokenDist, Workload, constant

WINDOW_S = 20.0
MODEL = "llama-3.1-8b"


@dataclass
class Truth:
    """(unix time, cumulative figure) pairs recorded under the emulator's lock at every step."""

    times: list[float] = field(default_factory=list)
    rows: list[dict[str, float]] = field(default_factory=list)

    def record(self, host: SimHost) -> None:
        totals: dict[str, float] = {}
        for r in host.services["chat"].replicas:
            m = r.engine.metrics
            for key, value in (("success", m.success_total), ("ttft_sum", m.ttft.sum), ("ttft_n", m.ttft.count),
                               ("itl_sum", m.itl.sum), ("itl_n", m.itl.count),
                               ("prompt_sum", m.request_prompt_tokens.sum), ("generated", m.generation_tokens_total),
                               ("prompt_n", m.request_prompt_tokens.count)):
                totals[key] = totals.get(key, 0.0) + float(value)
        self.times.append(time.time())
        self.rows.append(totals)

    def at(self, t: float) -> dict[str, float]:
        return self.rows[max(0, bisect.bisect_right(self.times, t) - 1)]

    def over(self, start: float, end: float) -> dict[str, float]:
        a, b = self.at(start), self.at(end)
        d = {k: b[k] - a[k] for k in b}
        return {"rate_rps": d["success"] / (end - start), "ttft_ms": 1000 * d["ttft_sum"] / d["ttft_n"],
                "itl_ms": 1000 * d["itl_sum"] / d["itl_n"], "in_tokens": d["prompt_sum"] / d["prompt_n"],
                "tokens_per_step": (d["generated"] - d["ttft_n"]) / d["itl_n"]}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Truth, str, subprocess.Popen[bytes]]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("Debian's prometheus is missing: bash tests/run.sh installs it (apt-get install prometheus)")
    # engines that decode speculatively: a step gives a sequence 1-4 tokens, one ITL sample
    host = SimHost("H100-SXM", 2, seed=3, start_delay_s=0.0, personalities={MODEL: "spec-decode"})
    work = Workload(constant(12.0), TokenDist(600), TokenDist(120), np.random.default_rng(3))
    host.add_service("chat", MODEL, work, replicas=2, max_num_seqs=64)
    truth = Truth()
    emu_port, prom_port = free_port(), free_port()
    emulator = RealTimeEmulator(host, emu_port, on_tick=truth.record)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 500ms, scrape_timeout: 400ms}\n"
        "scrape_configs:\n"
        f"  - job_name: vllm\n    static_configs: [{{targets: ['127.0.0.1:{emu_port}']}}]\n")
    prom = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{prom_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("prometheus did not become ready in 30 s")
                time.sleep(0.2)
        yield truth, url, prom
    finally:
        prom.terminate()
        prom.wait(timeout=10)
        emulator.stop()


def test_prometheus_source_reads_the_true_load_and_latency_and_survives_an_outage(
    stack: tuple[Truth, str, subprocess.Popen[bytes]],
) -> None:
    truth, url, prom = stack
    source = PrometheusVllmSource(url, {"chat": MODEL}, window_s=WINDOW_S, wall_time=lambda t: t)
    deadline = time.monotonic() + 3 * WINDOW_S
    filled = f"count_over_time(up[{WINDOW_S + 2:.0f}s])"
    while by_model(PrometheusApi(url).query(filled)).get("", 0) < 2 * (WINDOW_S + 1):
        assert time.monotonic() < deadline, "prometheus did not fill a window of scrapes"
        time.sleep(0.5)  # Prometheus starts scraping a few seconds after it is ready
    at = time.time() - 1.0  # the last scrape is in Prometheus by now
    w = source.observe(at, ["chat", "unknown"])
    assert w["unknown"] is None
    seen = w["chat"]
    assert seen is not None and seen.replicas == 2
    true = truth.over(at - WINDOW_S, at)
    assert seen.rate_rps == pytest.approx(true["rate_rps"], rel=0.05)
    assert seen.ttft_ms == pytest.approx(true["ttft_ms"], rel=0.05)
    assert seen.itl_ms == pytest.approx(true["itl_ms"], rel=0.05)
    assert seen.in_tokens == pytest.approx(true["in_tokens"], rel=0.05)
    assert seen.ttft_p95_ms is not None and seen.ttft_p95_ms > seen.ttft_ms
    assert seen.itl_p95_ms is not None and seen.kv_usage > 0
    assert seen.queue_ms is not None and 0.0 <= seen.queue_ms < seen.ttft_ms  # request_queue_time_seconds
    assert true["tokens_per_step"] > 2.0  # the drafts accepted
    assert seen.tokens_per_step == pytest.approx(true["tokens_per_step"], rel=0.05)
    assert seen.draft_tokens == pytest.approx(3.0)  # the spec_decode counters: three drafted a step

    # Prometheus paused 3 s (the engines serve on): a window that starts in the hole is none, said why (rate() read it
    # short, called steady); one that holds the hole whole still reads the truth (the count rose across it)
    said: list[str] = []
    short = PrometheusVllmSource(url, {"chat": MODEL}, window_s=4.0, wall_time=lambda t: t,
                                 on_error=lambda kind, message: said.append(message))
    os.kill(prom.pid, signal.SIGSTOP)
    try:
        time.sleep(3.0)
    finally:
        os.kill(prom.pid, signal.SIGCONT)
    time.sleep(1.5)
    at = time.time() - 0.5
    assert short.observe(at, ["chat"])["chat"] is None
    assert len(said) == 1 and "no sample of its success counter over the start of the window" in said[0]
    across = source.observe(at, ["chat"])["chat"]
    assert across is not None and across.rate_rps == pytest.approx(truth.over(at - WINDOW_S, at)["rate_rps"], rel=0.05)

    prom.terminate()
    prom.wait(timeout=10)
    started = time.monotonic()
    with pytest.raises(TelemetryError, match="unreachable"):
        source.observe(time.time(), ["chat"])
    assert time.monotonic() - started < 5
