"""Every HTTP read the daemon makes ends in bounded time and memory, whatever the server does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from controller.http_fetch import Unreachable, http_request
from controller.telemetry.base import TelemetryError
from controller.telemetry.scrape import http_get


@contextmanager
def serving(body: bytes, pause_s: float = 0.0, status: int = 200) -> Iterator[str]:
    """A loopback server answering every request with `body`, a byte per `pause_s` where that is set (for at
    most 3 s: it stops by itself)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not pause_s:
                self.wfile.write(body)
                return
            until = time.monotonic() + 3.0
            for k in range(len(body)):
                if time.monotonic() > until:
                    return
                self.wfile.write(body[k:k + 1])
                self.wfile.flush()
                time.sleep(pause_s)

        do_GET = do_POST = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_a_whole_answer_comes_back_with_its_status() -> None:
    with serving(b"vllm:num_requests_running 3\n", status=503) as url:
        answer = http_request(url, {}, 1.0, data=b"query=up")
    assert answer.status == 503 and answer.body == b"vllm:num_requests_running 3\n"


def test_a_server_that_trickles_its_answer_is_cut_off_near_the_timeout() -> None:
    """Each byte comes well within the timeout, so only a deadline over the whole answer ends the read."""
    with serving(b"x" * 200, pause_s=0.02) as url:
        started = time.monotonic()
        with pytest.raises(Unreachable, match="still coming"):
            http_request(url, {}, 0.3)
        assert time.monotonic() - started < 1.0


def test_an_answer_past_the_size_bound_is_refused() -> None:
    with serving(b"#" * 5000) as url, pytest.raises(Unreachable, match="past 4096 bytes"):
        http_request(url, {}, 1.0, max_body=4096)


def test_a_vllm_page_that_trickles_is_a_telemetry_error() -> None:
    with serving(b"y" * 200, pause_s=0.02) as url, pytest.raises(TelemetryError, match=r"scrape: .*still coming"):
        http_get(url, 0.3)
