"""A loopback HTTP fake for the budget APIs: scripted replies per path, served from recorded answers.

Each path has a list of replies, taken in turn (the last one repeats): a status, a body, headers, and a delay
before answering (past a client's timeout to test one). The server runs in a daemon thread, records every
request, and shuts itself down after `life_s` even if a test forgets to close it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

RECORDED = Path(__file__).parent / "data" / "budget"


def recorded(name: str) -> bytes:
    """A recorded answer from tests/data/budget/."""
    return (RECORDED / name).read_bytes()


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True)
class Request:
    path: str
    """Path with its query string."""
    headers: dict[str, str]
    """Header names in lower case."""


class FakeBudgetApi:
    def __init__(self, routes: dict[str, list[Reply]], life_s: float = 10.0) -> None:
        self.routes = {path: list(replies) for path, replies in routes.items()}
        self.requests: list[Request] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.timer = threading.Timer(life_s, self.server.shutdown)
        self.timer.daemon = True
        self.timer.start()

    def __enter__(self) -> FakeBudgetApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    def paths(self) -> list[str]:
        """The paths asked, without query strings, in order."""
        return [r.path.split("?")[0] for r in self.requests]

    def _next(self, path: str) -> Reply:
        replies = self.routes.get(path)
        if not replies:
            return Reply(404, b'{"error": "not found"}')
        return replies.pop(0) if len(replies) > 1 else replies[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api.requests.append(Request(self.path, {k.lower(): v for k, v in self.headers.items()}))
                reply = api._next(self.path.split("?")[0])
                time.sleep(reply.delay_s)
                try:
                    self.send_response(reply.status)
                    for name, value in {"Content-Type": "application/json", **reply.headers}.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        return Handler
