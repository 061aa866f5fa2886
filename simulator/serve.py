"""The emulated vLLM servers of a simulated host, run in real time and served on a /metrics endpoint.

What a Prometheus server (or the `scrape` source) scrapes in integration tests: the host advances with the
wall clock in a background thread, and every ready engine renders as one `engine` series. The page is
always the classic text format (as vLLM's own endpoint renders it to Prometheus 2.x): prometheus-client's
OpenMetrics negotiation would rename `vllm:` to `vllm_` on the way.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from simulator.host import SimHost
from simulator.vllm_metrics import EngineView, VllmCollector


class RealTimeEmulator:
    """Steps `host` to the wall clock every `tick_s` and serves its engines on 127.0.0.1:`port`.

    `lock` guards the host: hold it to read engine state consistently. `on_tick(host)` runs under the
    lock after each step (e.g. to record ground truth)."""

    def __init__(self, host: SimHost, port: int, tick_s: float = 0.05,
                 on_tick: Callable[[SimHost], None] | None = None) -> None:
        self.host = host
        self.lock = threading.Lock()
        self.tick_s = tick_s
        self.on_tick = on_tick
        self._collector = VllmCollector(self._engines)
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self._stop = threading.Event()
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = _Quiet(("127.0.0.1", port), Handler)
        threading.Thread(target=self._server.serve_forever, name="emulator-http", daemon=True).start()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="emulator", daemon=True)
        self._thread.start()

    def _engines(self) -> list[EngineView]:
        return list(self.host.scraped_engines())

    def collect(self) -> Iterator[Metric]:
        """One consistent page: the host does not step while it renders."""
        with self.lock:
            families = list(self._collector.collect())
        yield from families

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            with self.lock:
                self.host.advance_to(time.monotonic() - self._t0)
                if self.on_tick is not None:
                    self.on_tick(self.host)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.shutdown()
        self._server.server_close()


class _Quiet(ThreadingHTTPServer):
    """A scraper that hangs up mid-request (Prometheus paused, then resumed, or stopped) is no error of the page's:
    socketserver printed each as a traceback."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)
