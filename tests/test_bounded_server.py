"""The bounded HTTP server behind the plan and demand-response endpoints: one address cannot take every slot."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge

from controller.bounded_server import PER_ADDRESS, BoundedServer, serve_in_thread, serve_metrics


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


def test_metrics_are_served_bounded_and_answer_a_scrape_beside_idle_connections() -> None:
    """prometheus_client's server gave each connection a thread of its own, without cap or deadline: 400 idle
    connections held 364 threads. Now one address holds its share, and a scrape from another is answered."""
    registry, said = CollectorRegistry(), list[str]()
    Gauge("wattscale_test_up", "A test gauge.", registry=registry).set(1.0)
    served = serve_metrics("127.0.0.1", 0, registry, hung_up=said.append)
    try:
        before = threading.active_count()
        with ExitStack() as stack:
            for _ in range(40):  # connections past the address's share are closed at once
                stack.enter_context(connect(served, "127.0.0.2"))
            time.sleep(0.3)
            assert threading.active_count() - before <= 2 * PER_ADDRESS  # a thread and a cut timer each
            url = f"http://127.0.0.1:{served.server_address[1]}/metrics"
            with urllib.request.urlopen(url, timeout=5) as answer:
                assert b"wattscale_test_up 1.0" in answer.read()
        # each closed unanswered is told (the daemon counts and logs it): 200 idle ones had starved a scraper unsaid
        assert said.count("was closed unanswered: its address holds every slot") >= 40 - PER_ADDRESS
    finally:
        served.shutdown()
        served.server_close()


def test_healthz_says_whether_the_governor_ticks_where_metrics_answer_regardless() -> None:
    """A liveness probe of /metrics passed while the fast loop had stopped (a wall clock stepped back held it 41 s):
    /healthz answers 503 while `alive` says the loop has not ticked, and deploy/kubernetes probes it."""
    import urllib.error

    import yaml
    from conftest import ROOT

    ticking = [True]
    served = serve_metrics("127.0.0.1", 0, CollectorRegistry(), lambda: ticking[0])
    base = f"http://127.0.0.1:{served.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as answer:
            assert (answer.status, answer.read()) == (200, b"ok\n")
        ticking[0] = False
        with pytest.raises(urllib.error.HTTPError) as stalled:
            urllib.request.urlopen(f"{base}/healthz", timeout=5)
        assert stalled.value.code == 503 and b"nothing is acting on the GPUs" in stalled.value.read()
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
            assert answer.status == 200
    finally:
        served.shutdown()
        served.server_close()
    deployment = next(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text()))
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    assert probe["httpGet"]["path"] == "/healthz" and probe["periodSeconds"] * probe["failureThreshold"] <= 30


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this system")
def test_an_ipv6_listen_address_is_served_by_every_endpoint() -> None:
    """The family was the metrics server's own (the plan endpoint's `--plan-listen ::1` failed to bind)."""
    served = BoundedServer(("::1", 0), Hello)
    serve_in_thread(served, "test-ipv6")
    try:
        with urllib.request.urlopen(f"http://[::1]:{served.server_address[1]}/", timeout=5) as answer:
            assert answer.read() == b"ok"
    finally:
        served.shutdown()
        served.server_close()
