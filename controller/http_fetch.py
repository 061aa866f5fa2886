"""One bounded HTTP request for every source the daemon reads over HTTP (vLLM pages, Prometheus, budget and carbon
APIs, the operator's node plans, the health of the vLLM servers the daemon restarts).

urllib's timeout bounds each socket operation, not the answer: a server that trickles its status line, headers or
body a byte at a time keeps a read going for ever, and one that streams on fills the memory. Here the request's
socket is shut at a deadline `timeout_s` after it starts, whatever it is waiting for, and the body is read against
a size bound. Every HTTP status comes back as an answer (an error's body cut at the bound or the deadline); only a
server that cannot be reached, is too slow, breaks off an answer or sends too large a one raises `Unreachable`,
which each caller sorts into its own errors.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_BODY = 4 << 20
"""Most bytes of an answer read by default: a vLLM page with many histograms is a few hundred KB, Prometheus' answer
of one GPU series for each of 4,000 GPUs 1.1 MB. The JSON parser holds the interpreter's lock throughout: 16 MB of a
hostile shape held the governor's thread 1-3 s (4 MB of the worst shape, empty lists, parses in 0.5 s on a slow
core)."""
CHUNK = 1 << 16


class Unreachable(Exception):
    """No whole answer: the server could not be reached, did not answer in time, broke off, or sent too much."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: Mapping[str, str]
    """Header names in lower case."""
    body: bytes


class _Watch:
    """The deadline of one request: the sockets its connections open are shut when it passes, which ends any read.
    A socket opened after it passed is shut at once; once the answer is whole, nothing is shut."""

    def __init__(self, timeout_s: float) -> None:
        self.deadline = time.monotonic() + timeout_s
        self.sockets: list[socket.socket] = []
        self.fired = False
        """Whether the deadline shut the sockets: what was read after may look whole (headers end at EOF)."""
        self.done = False
        self.lock = threading.Lock()
        self.timer = threading.Timer(timeout_s, self.shut)
        self.timer.daemon = True

    def add(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.append(sock)
            if self.fired:
                _shutdown(sock)

    def shut(self) -> None:
        with self.lock:
            if self.done:
                return
            self.fired = True
            for sock in self.sockets:
                _shutdown(sock)

    def finish(self) -> bool:
        """The answer is in (or given up): no socket is shut from now on. Whether the deadline came first."""
        with self.lock:
            self.done = True
            return self.fired


def _shutdown(sock: socket.socket) -> None:
    """The OS socket's shutdown, also under TLS (the reading thread's SSL object is left to it)."""
    with contextlib.suppress(OSError):  # already closed
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_current = threading.local()
"""The watch of the request this thread is making: every connection it opens meanwhile (a redirect's, a proxy's)
registers with it."""


def _watched(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
    class Watched(base):  # type: ignore[valid-type, misc]
        """A connection whose sockets the watch of the request being made can shut: the plain one as soon as it is
        connected (a proxy's tunnel is covered; a TLS handshake is bounded per read only), and the TLS one."""

        def connect(self) -> None:
            watch: _Watch | None = getattr(_current, "watch", None)
            if watch is None:
                return super().connect()  # type: ignore[no-any-return]
            create = self._create_connection  # type: ignore[has-type]

            def created(*args: Any, **kwargs: Any) -> socket.socket:
                sock: socket.socket = create(*args, **kwargs)
                watch.add(sock)
                return sock

            self._create_connection = created
            super().connect()
            if self.sock is not None:
                watch.add(self.sock)
            return None

    return Watched


_HTTP, _HTTPS = _watched(http.client.HTTPConnection), _watched(http.client.HTTPSConnection)


class WatchedHttp(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTP, req)


class WatchedHttps(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPS, req, context=self._context)  # type: ignore[attr-defined]


class SameOrigin(urllib.request.HTTPRedirectHandler):
    """Redirects followed within the request's own scheme, host and port only; another's 3xx is the answer. urllib
    followed one to ftp:// (whose reads no deadline here bounds: the source hung for good, unsaid) and sent every
    header, an API's token included, to any host, plain http too."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        old, new = (urllib.parse.urlsplit(u) for u in (req.full_url, urllib.parse.urljoin(req.full_url, newurl)))
        if (old.scheme, old.netloc) != (new.scheme, new.netloc):
            return None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def opener(proxies: Mapping[str, str] | None = None) -> urllib.request.OpenerDirector:
    """An opener whose requests `http_request` can end at their deadline, redirected within their origin only;
    `proxies` as urllib's ProxyHandler takes them (None: the environment's, as urllib's default; {}: none, as in a
    cluster)."""
    handlers: list[Any] = [WatchedHttp, WatchedHttps, SameOrigin]
    if proxies is not None:
        handlers.append(urllib.request.ProxyHandler(dict(proxies)))
    return urllib.request.build_opener(*handlers)


@functools.cache
def _default() -> urllib.request.OpenerDirector:
    """The environment's proxies, read once (as urllib's own default opener reads them)."""
    return opener()


def http_request(url: str, headers: Mapping[str, str], timeout_s: float, data: bytes | None = None,
                 via: urllib.request.OpenerDirector | None = None, max_body: int = MAX_BODY) -> HttpAnswer:
    """GET `url` (POST `data` where given) and read the whole answer within `timeout_s`, redirects within its origin
    included. `via`:
    an `opener` (None: one with the environment's proxies)."""
    request = urllib.request.Request(url, data=data, headers=dict(headers))
    watch = _current.watch = _Watch(timeout_s)
    watch.timer.start()
    try:
        try:
            with (via or _default()).open(request, timeout=timeout_s) as r:
                answer = HttpAnswer(r.status, _lower(r.headers), _body(r, url, watch.deadline, max_body, True))
                late = watch.finish()  # before the socket closes: a shut one's number may be another's by then
            if late:
                raise Unreachable(f"{url}: no whole answer within {round(timeout_s, 2):g} s")
            return answer
        except urllib.error.HTTPError as exc:
            answer = HttpAnswer(exc.code, _lower(exc.headers), _body(exc, url, watch.deadline, max_body, False))
            watch.finish()
            return answer
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        # the deadline shut the socket (a server that never answered read as one that hung up), or the socket's own
        # timeout came first (its TimeoutError, or urllib's URLError around it)
        if watch.finish() or isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
            raise Unreachable(f"{url}: no whole answer within {round(timeout_s, 2):g} s") from exc
        raise Unreachable(f"{url} unreachable: {exc!r}") from exc
    finally:
        watch.finish()
        watch.timer.cancel()
        _current.watch = None


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in (headers or {}).items()}


def _body(r: Any, url: str, deadline: float, max_body: int, whole: bool) -> bytes:
    """The body, chunk by chunk, until its end; one that runs past `max_body` or the deadline raises where the
    answer must be `whole` (a success) and is cut there otherwise (an error's status says what it has to)."""
    chunks: list[bytes] = []
    size = 0
    read = getattr(r, "read1", None) or r.read  # one read's worth at a time (an error's body may lack read1)
    try:
        while chunk := read(CHUNK):
            size += len(chunk)
            chunks.append(chunk)
            if size > max_body or time.monotonic() > deadline:
                if whole:
                    raise Unreachable(f"{url}: the answer runs past {max_body} bytes" if size > max_body
                                      else f"{url}: the answer is still coming after the timeout")
                return b"".join(chunks)[:max_body]
    except (OSError, http.client.HTTPException):
        if whole:
            raise
        return b"".join(chunks)[:max_body]
    body = b"".join(chunks)
    stated = (r.headers or {}).get("Content-Length", "")
    if whole and stated.isdigit() and len(body) < int(stated):
        why = "is still coming after the timeout" if time.monotonic() > deadline else "broke off"
        raise Unreachable(f"{url}: the answer {why} short of its stated length")  # no counts: said once a run
    return body


@functools.cache
def _local() -> urllib.request.OpenerDirector:
    """An opener without proxies, built once (the probe's servers are this host's)."""
    return opener({})


def healthy_within(url: str, timeout_s: float) -> bool:
    """A server's /health answers 200 within `timeout_s`, the whole answer (urllib's timeout bounds each read: a
    server trickling its answer a byte a read held a probe, and a rollout, for ever); no proxy."""
    try:
        return http_request(url, {}, timeout_s, via=_local(), max_body=4096).status == 200
    except Unreachable:
        return False
