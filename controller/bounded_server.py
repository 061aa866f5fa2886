"""The HTTP server behind every endpoint wattscale listens on (the operator's plan endpoint, the daemon's
demand-response endpoint, every /metrics), bounded so no client can hold it.

`http.server` bounds each socket read, not a request: a client that sends a byte a second holds its thread for as
long as it likes, and a single-threaded server with it. Here each connection has a thread of its own, at most
`max_clients` at once and `per_address` from one address (more are closed unanswered: one host cannot take every
slot), and is shut `request_s` after it was accepted whatever it is doing. A client gone before its answer (a
hang-up, a reset, the cut) is reported to `hung_up`, never as socketserver's traceback on stderr.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler

MAX_CLIENTS = 256
"""Connections served at once."""
PER_ADDRESS = 16
"""Connections served at once from one address."""
REQUEST_S = 10.0
"""Longest one connection is served, from accept to answer."""


def address_family(host: str) -> socket.AddressFamily:
    """The socket family a listen address takes: IPv6 for one with a colon, IPv4 otherwise."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_clients` of them (`per_address` from one address), each connection
    shut after `request_s`."""

    daemon_threads = True
    block_on_close = False  # close() waits for no client: each is cut within request_s anyway

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 hung_up: Callable[[str], None] = lambda why: None, max_clients: int = MAX_CLIENTS,
                 request_s: float = REQUEST_S, per_address: int = PER_ADDRESS) -> None:
        self.address_family = address_family(address[0])  # before the socket is made: an IPv6 listen address too
        super().__init__(address, handler)
        self.hung_up, self.request_s = hung_up, request_s
        """`hung_up`: told how each client went before its answer (the caller counts and logs)."""
        self.slots = threading.BoundedSemaphore(max_clients)
        self.per_address = per_address
        self.by_address: dict[str, int] = {}
        """Connections in service by client address (guarded by `lock`)."""
        self.lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0])
        with self.lock:
            held = self.by_address.get(host, 0)
            full = held >= self.per_address or not self.slots.acquire(blocking=False)
            if not full:
                self.by_address[host] = held + 1
        if full:  # told, not only closed: clients that hold every slot made a valid one's loss silent
            self.hung_up(f"was closed unanswered: {'its address holds' if held >= self.per_address else 'others hold'} "
                         "every slot")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread left to serve it (a flood): closed unanswered, its slot free again
            self.shutdown_request(request)
            self._free(host)
            self.hung_up("was closed unanswered: no thread left to serve it")
        except BaseException:
            self._free(host)
            raise

    def _free(self, host: str) -> None:
        with self.lock:
            self.slots.release()
            left = self.by_address.pop(host) - 1
            if left:
                self.by_address[host] = left

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        timer = threading.Timer(self.request_s, _cut, (request,))
        try:
            timer.start()
        except RuntimeError:  # no thread left for the cut (a flood): not served, its slot freed
            self.shutdown_request(request)
            self._free(str(client_address[0]))
            return
        try:
            super().process_request_thread(request, client_address)
        finally:
            timer.cancel()
            self._free(str(client_address[0]))

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):  # a hang-up, a reset or the cut
            self.hung_up(f"went before its answer ({type(error).__name__}, or cut after {self.request_s:g} s)")
        else:
            super().handle_error(request, client_address)


def _cut(request: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed meanwhile
        request.shutdown(socket.SHUT_RDWR)  # ends the handler's read or write at once


def serve_in_thread(server: BoundedServer, name: str) -> threading.Thread:
    """Serve until `server.shutdown()`, in a daemon thread of its own."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True, name=name)
    thread.start()
    return thread


def serve_metrics(listen: str, port: int, registry: CollectorRegistry, alive: Callable[[], bool] | None = None,
                  hung_up: Callable[[str], None] = lambda why: None) -> BoundedServer:
    """`registry` on http://listen:port/metrics, bounded as every endpoint here (prometheus_client's own server
    gave each connection a thread without cap or deadline: 400 idle connections held 364 threads), and `alive()` on
    /healthz where given (200, or 503: a liveness probe of /metrics passed while the governor had stopped); each
    client closed unanswered or gone before its answer told to `hung_up` (200 idle connections had starved the
    scraper unsaid). OSError where the address cannot be bound."""
    server = BoundedServer((listen, port), MetricsHandler.factory(registry) if alive is None else _healthz(registry,
                                                                                                          alive),
                           hung_up)
    serve_in_thread(server, "metrics")
    return server


def _healthz(registry: CollectorRegistry, alive: Callable[[], bool]) -> type[BaseHTTPRequestHandler]:
    metrics = MetricsHandler.factory(registry)

    class Handler(metrics):  # type: ignore[misc, valid-type]
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/healthz":
                super().do_GET()
                return
            ok = alive()
            body = b"ok\n" if ok else b"the control loop has not stepped in time: nothing is acting on the GPUs\n"
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
