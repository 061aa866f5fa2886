"""The Kubernetes emulator's HTTP face (tests/kube_emulator.py holds its store): request paths, discovery,
list and watch as chunked JSON lines, the scale subresource's shape, and failures answered as the API
server's `Status` objects."""

from __future__ import annotations

import contextlib
import json
import re
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from kube_emulator import Kind, KubeEmulator

PATH = re.compile(r"^/(?:api/(?P<cv>v1)|apis/(?P<g>[^/]+)/(?P<v>[^/]+))(?:/namespaces/(?P<ns>[^/]+)(?=/))?"
                  r"/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$")

REASONS = {404: "NotFound", 409: "Conflict", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
           503: "ServiceUnavailable"}


class ApiError(Exception):
    """A request refused, answered as the API server's `Status` (`details`: a 422's causes per field)."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.details = code, reason, details


def scale(deployment: dict[str, Any]) -> dict[str, Any]:
    """A Deployment's scale subresource."""
    meta = deployment["metadata"]
    n = deployment.get("spec", {}).get("replicas", 1)
    return {"apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace"),
                         "resourceVersion": meta["resourceVersion"]},
            "spec": {"replicas": n}, "status": {"replicas": n}}


def discovery(kinds: list[Kind], path: str) -> dict[str, Any] | None:
    """The discovery documents (`/version`, `/api`, `/apis`, a group version's resources), None elsewhere."""
    if path in ("/version", "/version/"):  # the official client's VersionApi asks the latter, as servers take both
        return {"major": "1", "minor": "31", "gitVersion": "v1.31.0-emulator", "gitCommit": "0" * 40,
                "gitTreeState": "clean", "buildDate": "2024-08-13T07:28:49Z", "goVersion": "go1.22.5",
                "compiler": "gc", "platform": "linux/amd64"}  # every field a server sends (VersionInfo's required)
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"]}
    if path == "/apis":
        groups = sorted({(k.group, k.version) for k in kinds if k.group})
        return {"kind": "APIGroupList", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
             "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}} for g, v in groups]}
    m = re.match(r"^/(?:api/(v1)|apis/([^/]+)/([^/]+))$", path)
    if m is None:
        return None
    group, version = ("", "v1") if m.group(1) else (m.group(2), m.group(3))
    resources = []
    for k in kinds:
        if (k.group, k.version) != (group, version):
            continue
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources.append({"name": k.plural, "singularName": k.kind.lower(), "kind": k.kind,
                          "namespaced": k.namespaced, "verbs": verbs})
        resources += [{"name": f"{k.plural}/{s}", "singularName": "", "kind": k.kind, "namespaced": k.namespaced,
                       "verbs": ["get", "patch", "update"]} for s in k.subresources]
    return {"kind": "APIResourceList", "groupVersion": f"{group}/{version}".lstrip("/"), "resources": resources}



def handler(emu: KubeEmulator) -> type[BaseHTTPRequestHandler]:
    """The request handler of `emu`'s server: each request recorded, then answered from its store."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms delayed-ACK stall)

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any) -> None:
            self._send_bytes(status, json.dumps(body).encode())

        def _send_bytes(self, status: int, data: bytes, trickle_s: float = 0.0) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            try:
                self.end_headers()
                if not trickle_s:
                    self.wfile.write(data)
                for i in range(len(data) if trickle_s else 0):  # a byte at a time, until the emulator closes
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    if emu.closing.wait(trickle_s):
                        break
            except (BrokenPipeError, ConnectionResetError):  # the client stopped waiting: no one to answer
                self.close_connection = True

        def _serve(self, method: str) -> None:
            if emu.closing.is_set():  # closed: a kept-alive connection is dropped unanswered
                self.close_connection = True
                return
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            emu.requests.append((token, method, self.path))
            try:
                fault = emu._fault(method, url.path)
                if fault is not None:
                    emu.closing.wait(fault.delay_s)
                    if fault.code:
                        raise ApiError(fault.code, REASONS.get(fault.code, "InternalError"), "a scripted failure")
                    if fault.body is not None:
                        self._send_bytes(200, fault.body, fault.trickle_s)
                        return
                if method == "GET" and (doc := discovery(list(emu.store.kinds.values()), url.path)) is not None:
                    self._send(200, doc)
                    return
                m = PATH.match(url.path)
                if m is None or (m["g"] or "", m["plural"]) not in emu.store.kinds:
                    raise ApiError(404, "NotFound", f"no resource at {url.path}")
                gp = (m["g"] or "", m["plural"])
                ns, name, sub = m["ns"], m["name"], m["sub"]
                kind = emu.store.kinds[gp]
                key = (*gp, ns or "" if kind.namespaced else "", name or "")
                body = json.loads(raw) if raw else None
                if name is None and method == "GET" and query.get("watch") in ("true", "1"):
                    self._watch(gp, ns, int(query.get("resourceVersion") or 0),
                                float(query.get("timeoutSeconds") or emu.watch_s))
                elif name is None and method == "GET":
                    items, rv = emu._list(gp, ns, query.get("labelSelector", ""), query.get("fieldSelector", ""))
                    self._send(200, {"kind": f"{kind.kind}List", "apiVersion": "v1", "items": items,
                                     "metadata": {"resourceVersion": str(rv)}})
                elif name is None and method == "POST" and gp == ("authentication.k8s.io", "tokenreviews"):
                    self._send(201, emu.review(body))
                elif name is None and method == "POST":
                    self._send(201, emu._create(gp, ns or "", body))
                elif method == "GET":
                    obj = emu.get(*key[:2], key[3], key[2])
                    if obj is None:
                        raise ApiError(404, "NotFound", f"{kind.plural} {name!r} not found")
                    self._send(200, scale(obj) if sub == "scale" else obj)
                elif method in ("PATCH", "PUT"):
                    obj = emu._update(key, sub, body, method, self.headers.get("Content-Type", ""))
                    self._send(200, scale(obj) if sub == "scale" else obj)
                elif method == "DELETE":
                    self._send(200, emu._delete(key))
                else:
                    raise ApiError(405, "MethodNotAllowed", method)
            except ApiError as exc:
                self._send(exc.code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "reason": exc.reason, "code": exc.code, "message": str(exc),
                                      **({"details": exc.details} if exc.details else {})})

        def _watch(self, gp: tuple[str, str], ns: str | None, since: int, timeout_s: float) -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the watcher went: no one to tell
                self._stream(gp, ns, since, timeout_s)
            self.close_connection = True

        def _stream(self, gp: tuple[str, str], ns: str | None, since: int, timeout_s: float) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            store, end = emu.store, time.monotonic() + min(timeout_s, emu.watch_s)
            with store.cond:
                pending = [] if since else [("ADDED", o) for o in emu._list(gp, ns, "")[0]]
                seen = since or store.rv
            while True:
                for kind, obj in pending:
                    line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
                if emu.closing.is_set() or time.monotonic() > end:
                    break
                with store.cond:
                    store.cond.wait(0.5)
                    fresh = [(rv, k, o) for rv, g, k, o in store.log if rv > seen and g == gp
                             and (ns is None or o["metadata"].get("namespace", "") == ns)]
                    seen = store.rv
                pending = [(k, o) for _, k, o in fresh]
            self.wfile.write(b"0\r\n\r\n")

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

    return Handler
