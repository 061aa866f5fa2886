"""The bounded HTTP server behind the plan and demand-response endpoints: one address cannot take every slot."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from controller.bounded_server import BoundedServer, serve_in_thread


class Hello(BaseHTTPRequestHandler):
    timeout = 5.0

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture
def server() -> Iterator[BoundedServer]:
    served = BoundedServer(("127.0.0.1", 0), Hello, max_clients=8, request_s=3.0, per_address=3)
    serve_in_thread(served, "test-bounded")
    try:
        yield served
    finally:
        served.shutdown()
        served.server_close()


def connect(server: BoundedServer, source: str) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5, source_address=(source, 0))
    conn.sendall(b"GET / HTTP/1.1\r\n")  # and nothing more: it holds its slot until the cut
    return conn


def test_one_address_holding_its_share_of_slots_leaves_the_rest_to_others(server: BoundedServer) -> None:
    """256 slow connections from one host filled every slot of the plan endpoint for 10 s at a time, and so on
    for as long as the host liked: now each address gets `per_address` of them."""
    with ExitStack() as stack:
        held = [stack.enter_context(connect(server, "127.0.0.2")) for _ in range(3)]
        extra = stack.enter_context(connect(server, "127.0.0.2"))
        started = time.monotonic()
        assert extra.recv(64) == b"" and time.monotonic() - started < 1.0  # closed unanswered, not cut at 3 s
        deadline = time.monotonic() + 5.0
        while server.by_address.get("127.0.0.2") != 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/", timeout=5) as answer:
            assert answer.read() == b"ok"  # another address is served meanwhile
        for conn in held:
            assert conn.recv(64) == b""  # each cut at request_s
    deadline = time.monotonic() + 5.0
    while server.by_address and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.by_address == {}  # every slot given back
    with connect(server, "127.0.0.2") as again:  # and the address may come back
        again.sendall(b"Host: x\r\n\r\n")
        assert again.recv(64).startswith(b"HTTP/1.0 200")
