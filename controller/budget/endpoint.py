"""The demand-response endpoint: a loopback-only HTTP server that takes a POSTed signal and stores it in the
source's signal file (the source reads it back like any other change), so a building management system or
a grid-event script lowers the budget with one request:

    curl -X POST -d '{"budget_w": 1500, "deadline": "2026-12-01T17:00:00Z", "reason": "grid event"}' \\
        http://127.0.0.1:PORT/signal
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from controller.budget.demand_response import MAX_SIGNAL_BYTES, accept_signal


def serve_signals(path: str, port: int) -> ThreadingHTTPServer:
    """Listen on 127.0.0.1:`port` (0: any free port) in a thread of its own; `shutdown()` stops it."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass  # the source logs what a signal changes

        def _answer(self, method: str) -> None:
            try:
                length = max(0, min(int(self.headers.get("Content-Length") or 0), MAX_SIGNAL_BYTES + 1))
            except ValueError:
                status, reply = 400, {"error": "Content-Length is not a number"}
            else:
                body = self.rfile.read(length) if method == "POST" else b""
                status, reply = accept_signal(self.client_address[0], method, body, time.time(), path)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            self._answer("POST")

        def do_GET(self) -> None:
            self._answer("GET")

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="wattscale-signal", daemon=True).start()
    return server
