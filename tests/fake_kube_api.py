"""An HTTP fake of the two Kubernetes API endpoints the kubernetes actuator calls (GET and PATCH of
`/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale`), on loopback, with scripted failures per Deployment.

Failures: "404" (unknown), "409" (conflict, on the next PATCH only), "500" (every call), "slow" (answers after
`slow_s`, past the client's timeout). The server runs in a daemon thread and is shut down by `close()`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATH = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)/scale$")


class FakeKubeApi:
    def __init__(self, deployments: dict[tuple[str, str], int], slow_s: float = 2.0) -> None:
        self.replicas = dict(deployments)
        self.fail: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.slow_s = slow_s
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                                  "code": code, "message": reason})

            def _serve(self, method: str) -> None:
                m = PATH.match(self.path.split("?")[0])
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if m is None:
                    self._status(404, "NotFound")
                    return
                ns, name = m.groups()
                api.calls.append((method, f"{ns}/{name}"))
                mode = api.fail.get(name)
                if mode == "slow":
                    time.sleep(api.slow_s)
                if mode == "500":
                    self._status(500, "InternalError")
                    return
                if mode == "404" or (ns, name) not in api.replicas:
                    self._status(404, "NotFound")
                    return
                if method == "PATCH":
                    if mode == "409":
                        del api.fail[name]
                        self._status(409, "Conflict")
                        return
                    patch = json.loads(body)
                    api.replicas[(ns, name)] = int(patch["spec"]["replicas"])
                n = api.replicas[(ns, name)]
                self._send(200, {"apiVersion": "autoscaling/v1", "kind": "Scale",
                                 "metadata": {"name": name, "namespace": ns},
                                 "spec": {"replicas": n}, "status": {"replicas": n}})

            def do_GET(self) -> None:
                self._serve("GET")

            def do_PATCH(self) -> None:
                self._serve("PATCH")

        return Handler
