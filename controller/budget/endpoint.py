"""The demand-response endpoint: a loopback-only HTTP server that takes a POSTed signal and stores it in the
source's signal file (the source reads it back like any other change), so a building management system or
a grid-event script lowers the budget with one request:

    printf 'header = "Authorization: Bearer %s"\\n' "$WATTSCALE_SIGNAL_TOKEN" | curl --config - -X POST \\
        -d '{"budget_w": 1500, "deadline": "2026-12-01T17:00:00Z", "reason": "grid event"}' http://127.0.0.1:PORT/signal

(the token through curl's standard input: on its command line every local user's `ps` would read it). The token is
read at start: a new one takes a restart.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any

from controller import strict_json
from controller.bounded_server import BoundedServer, serve_in_thread
from controller.budget.assemble import secret
from controller.budget.base import utc_iso
from controller.budget.demand_response import MAX_SIGNAL_BYTES, accept_signal
from controller.config_loader import ConfigError
from controller.telemetry.base import shortened

log = logging.getLogger(__name__)


MAX_CLIENTS = 16
"""Connections served at once (a signal is one short request from one system; more are closed unanswered, each
counted)."""
REQUEST_CUT_S = 2.0
"""Longest one connection is served: a signal is a few hundred bytes on loopback, and connections that sent
nothing held every slot for the server-wide 10 s, each time they were opened again."""


MIN_TOKEN_CHARS = 16
"""The shortest token a signal must carry (one a local user could guess is none)."""


def signal_token(env: Mapping[str, str], variable: str, where: str) -> str:
    """The token the endpoint asks of each request, from the environment (ConfigError naming `where`: unset, or
    shorter than MIN_TOKEN_CHARS)."""
    token = secret(env, variable, where)
    if not re.fullmatch(rf"[!-~]{{{MIN_TOKEN_CHARS},}}", token):  # as a header carries it: printable ASCII, no space
        raise ConfigError(where, f"environment variable {variable} holds {len(token)} characters; a token needs "
                          f"{MIN_TOKEN_CHARS} at least, printable ASCII without spaces (e.g. openssl rand -hex 16)")
    return token


def serve_signals(path: str, port: int, token: str, dropped: Callable[[], None] = lambda: None,
                  stored: Callable[[], None] = lambda: None, idle_w: Callable[[], float] = lambda: 0.0,
                  ) -> BoundedServer:
    """Listen on 127.0.0.1:`port` (0: any free port) in a thread of its own, answering only requests that carry
    `token` (`Authorization: Bearer`; 401 else); `shutdown()` stops it. Bounded
    (controller.bounded_server): a connection is cut REQUEST_CUT_S after it was accepted, however it sends, and at
    most MAX_CLIENTS are served at once. A client gone before its answer, or a signal refused, is counted through
    `dropped` each time and logged the first time of its kind (a signal that could not be stored: the first of each
    run of them); `stored` is called once a signal is stored (the daemon steps its budget then), and the signal
    logged with what it replaces (at DEBUG where it is the same signal again). `idle_w`: the fleet's idle draw now,
    which a signal's budget below is warned of."""
    expected = token.encode("ascii")  # printable ASCII (signal_token); a header's bytes are read as latin-1
    logged: set[str] = set()
    lock = threading.Lock()
    """Held over the logged kinds, and over a signal's read of the one in force and its store (two POSTs at once
    would each say they replaced the same one)."""

    def hung_up(why: str, kind: str = "client", level: int = logging.WARNING) -> None:
        dropped()
        with lock:
            first = kind not in logged
            logged.add(kind)
        if first:
            log.log(level, "demand-response endpoint: %s%s (counted in wattscale_errors_total"
                    "{kind=\"signal_client\"}; logged once%s)", "a client " if kind == "client" else "", why,
                    " a run" if level >= logging.ERROR else "")

    def said(status: int, reply: dict[str, Any]) -> None:
        if status == 200:
            with lock:
                logged.discard("refused 500")  # stored again: the next failure to store is said
            replaced, warning = reply.get("replaced"), reply.get("warning")
            same = replaced is not None and (replaced["budget_w"], replaced["deadline_s"]) == (
                reply["budget_w"], reply["deadline_s"])
            log.log(logging.DEBUG if same else logging.WARNING if warning else logging.INFO,
                    "demand-response signal stored: %g W until %s%s%s", reply["budget_w"], utc_iso(reply["deadline_s"]),
                    "" if replaced is None else f", replacing {replaced['budget_w']:g} W until "
                    f"{utc_iso(replaced['deadline_s'])}", f"; {warning}" if warning else "")
        elif status >= 400 and status != 404:
            hung_up(f"a signal refused ({status}): {shortened(reply['error'], 200)}", f"refused {status}",
                    logging.ERROR if status >= 500 else logging.WARNING)

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_CUT_S  # each read's; the connection's whole time is the server's cut

        def log_message(self, *args: Any) -> None:
            pass  # the source logs what a signal changes

        def _answer(self, method: str) -> None:
            refusal = _length_refusal(self.headers.get("Content-Length"), self.headers.get("Transfer-Encoding"), method)
            scheme, _, given = (self.headers.get("Authorization") or "").strip().partition(" ")
            if refusal is None and not (scheme.lower() == "bearer"
                                        and hmac.compare_digest(given.strip().encode("latin-1", "replace"), expected)):
                refusal = 401, {"error": "a signal needs the endpoint's token: Authorization: Bearer <token>"}
            if refusal is not None:
                status, reply = refusal
            else:
                length = min(int(self.headers.get("Content-Length") or 0), MAX_SIGNAL_BYTES + 1) if method == "POST" \
                    else 0  # a GET's body is not read (its length unchecked: a chunked GET's garbage had raised)
                body = self.rfile.read(length) if method == "POST" else b""
                if method == "POST" and len(body) < length:  # closed with its body short: nobody reads an answer
                    hung_up(f"sent {len(body)} of its {length} body bytes and closed")
                    return
                if urllib.parse.urlsplit(self.path).path != "/signal":  # read first: a reset would hide the 404
                    status, reply = 404, {"error": "no such endpoint; POST a signal to /signal"}
                else:
                    with lock:
                        status, reply = accept_signal(self.client_address[0], method, body, time.time(), path,
                                                      idle_w())
                    if method == "POST" and status == 200:
                        stored()
            if method == "POST" or status == 401:  # a GET that reads the signal is said by no one
                said(status, reply)
            data = strict_json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            self._answer("POST")

        def do_GET(self) -> None:
            self._answer("GET")

    server = BoundedServer(("127.0.0.1", port), Handler, hung_up, MAX_CLIENTS, REQUEST_CUT_S,
                           per_address=MAX_CLIENTS)  # loopback
    serve_in_thread(server, "wattscale-signal")
    return server


def _length_refusal(given: str | None, transfer: str | None, method: str) -> tuple[int, dict[str, Any]] | None:
    """The answer to a Content-Length no body can be read by: none on a POST (a chunked body, read as empty, had
    said "not JSON"), not a number, or negative; None where it is a count."""
    if given is None or transfer is not None:
        return (411, {"error": "a signal needs a Content-Length header and no Transfer-Encoding (a chunked body "
                               "is not read)"}) if method == "POST" else None
    try:
        length = int(given)
    except ValueError:
        return 400, {"error": "Content-Length is not a number"}
    return (400, {"error": "Content-Length must be >= 0"}) if length < 0 else None
