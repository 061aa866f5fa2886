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
def serving(body: bytes, pause_s: float = 0.0, status: int = 200, header_pause_s: float = 0.0) -> Iterator[str]:
    """A loopback server answering every request with `body`, a byte per `pause_s` where that is set, after a
    header line per `header_pause_s` for as long (for at most 3 s: it stops by itself)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            if header_pause_s:  # a status line, then a header line at a time and never their end
                self.wfile.write(f"HTTP/1.0 {status} OK\r\n".encode())
                until = time.monotonic() + 3.0
                while time.monotonic() < until:
                    self.wfile.write(b"X-Slow: 1\r\n")
                    self.wfile.flush()
                    time.sleep(header_pause_s)
                return
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

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that hung up on a trickle: expected

    server = Server(("127.0.0.1", 0), Handler)
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


def test_a_server_that_trickles_its_answer_is_cut_off_at_the_timeout() -> None:
    """Each byte comes well within the timeout, so only a deadline over the whole answer ends the read."""
    with serving(b"x" * 200, pause_s=0.02) as url:
        started = time.monotonic()
        with pytest.raises(Unreachable, match="still coming"):
            http_request(url, {}, 0.3)
        assert time.monotonic() - started < 0.6


def test_a_server_that_trickles_its_headers_is_cut_off_at_the_timeout() -> None:
    with serving(b"{}", status=200, header_pause_s=0.05) as url:
        started = time.monotonic()
        with pytest.raises(Unreachable):
            http_request(url, {}, 0.3)
        assert time.monotonic() - started < 0.6


def test_an_error_keeps_its_status_whatever_its_body() -> None:
    """A 401 with an endless or oversized page is still a refusal (the caller's recovery hangs on the status)."""
    with serving(b"<html>" * 2000, status=401) as url:
        answer = http_request(url, {}, 1.0, max_body=4096)
    assert answer.status == 401 and len(answer.body) == 4096
    with serving(b"z" * 200, pause_s=0.02, status=429) as url:
        answer = http_request(url, {}, 0.3)
    assert answer.status == 429 and 0 < len(answer.body) < 200


def test_an_answer_past_the_size_bound_is_refused() -> None:
    with serving(b"#" * 5000) as url, pytest.raises(Unreachable, match="past 4096 bytes"):
        http_request(url, {}, 1.0, max_body=4096)


def test_a_vllm_page_that_trickles_is_a_telemetry_error() -> None:
    with serving(b"y" * 200, pause_s=0.02) as url, pytest.raises(TelemetryError, match=r"scrape: .* still coming"):
        http_get(url, 0.3)


def test_a_redirect_is_followed_within_its_origin_under_the_same_deadline() -> None:
    """A 302 to a whole page of the same server is followed; to one that trickles, the second request is cut at the
    first one's deadline too. A 302 to another origin is the answer: urllib followed one to ftp:// (whose reads no
    deadline here bounds) and sent every header, an API's token included, to any host."""
    seen: list[tuple[str, str | None]] = []
    away = [""]

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Auth-Token")))
            target = {"/old": "/new", "/slow": "/trickle", "/away": away[0]}.get(self.path)
            body = b"x" * 200 if self.path == "/trickle" else b"moved"
            self.send_response(302 if target else 200)
            if target:
                self.send_header("Location", target)
            self.send_header("Content-Length", "0" if target else str(len(body)))
            self.end_headers()
            if not target:
                for k in range(len(body)):  # a byte at a time where it trickles
                    self.wfile.write(body[k:k + 1])
                    self.wfile.flush()
                    if self.path == "/trickle":
                        time.sleep(0.02)

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # the client cut the trickle at its deadline: expected (socketserver printed it to the terminal)

    server = Server(("127.0.0.1", 0), Redirect)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert http_request(url + "/old", {"Auth-Token": "t0k"}, 1.0).body == b"moved"
        started = time.monotonic()
        with pytest.raises(Unreachable):
            http_request(url + "/slow", {}, 0.3)
        assert time.monotonic() - started < 0.6
        with serving(b"elsewhere") as away[0]:
            answer = http_request(url + "/away", {"Auth-Token": "t0k"}, 1.0)
        assert answer.status == 302 and answer.body == b""
        away[0] = "ftp://127.0.0.1:9/x"
        assert http_request(url + "/away", {}, 1.0).status == 302
        assert [path for path, _ in seen] == ["/old", "/new", "/slow", "/trickle", "/away", "/away"]
        assert seen[1] == ("/new", "t0k")  # within its origin the headers go along, as before
    finally:
        server.shutdown()
        server.server_close()
