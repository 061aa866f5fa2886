"""One bounded HTTP request for every source the daemon reads over HTTP (vLLM pages, Prometheus, budget and carbon
APIs, the operator's node plans).

urllib's timeout bounds each socket operation, not the answer: a server that trickles its body a byte at a time
keeps a read going for ever, and one that streams on fills the memory. Here an answer is read in chunks against
one deadline and a size bound, so a request ends within about twice its timeout whatever the server does. Every
HTTP status comes back as an answer; only a server that cannot be reached, is too slow, breaks off its answer or
sends too much raises `Unreachable`, which each caller sorts into its own errors.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_BODY = 16 << 20
"""Most bytes of an answer read by default: a vLLM page with many histograms is a few MB at most."""
CHUNK = 1 << 16


class Unreachable(Exception):
    """No whole answer: the server could not be reached, did not answer in time, broke off, or sent too much."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: Mapping[str, str]
    """Header names in lower case."""
    body: bytes


def http_request(url: str, headers: Mapping[str, str], timeout_s: float, data: bytes | None = None,
                 opener: urllib.request.OpenerDirector | None = None, max_body: int = MAX_BODY) -> HttpAnswer:
    """GET `url` (POST `data` where given) and read the whole answer within about 2 x `timeout_s`.
    `opener`: how to reach it (None: urllib's default, which honours the environment's proxies)."""
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(url, data=data, headers=dict(headers))
    try:
        try:
            with (opener.open if opener is not None else urllib.request.urlopen)(request, timeout=timeout_s) as r:
                return HttpAnswer(r.status, _lower(r.headers), _body(r, url, deadline, max_body))
        except urllib.error.HTTPError as exc:
            return HttpAnswer(exc.code, _lower(exc.headers), _body(exc, url, deadline, max_body))
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise Unreachable(f"{url} unreachable: {exc!r}") from exc


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _body(r: Any, url: str, deadline: float, max_body: int) -> bytes:
    """The body, chunk by chunk (each chunk what one read brings), until its end, the deadline or `max_body`."""
    chunks: list[bytes] = []
    size = 0
    read = getattr(r, "read1", None) or r.read  # one read's worth at a time (an error's body may lack read1)
    while chunk := read(CHUNK):
        size += len(chunk)
        if size > max_body:
            raise Unreachable(f"{url}: the answer runs past {max_body} bytes")
        if time.monotonic() > deadline:
            raise Unreachable(f"{url}: the answer is still coming after the timeout")
        chunks.append(chunk)
    body = b"".join(chunks)
    stated = r.headers.get("Content-Length", "")
    if stated.isdigit() and len(body) < int(stated):
        raise Unreachable(f"{url}: the answer broke off at {len(body)} of {stated} bytes")
    return body
