"""The operator's plan endpoint: `GET /v1/nodes/<node>/plan` serves a node agent its own node's plan, so the
agent needs no read of NodePowerPlans at all (RBAC cannot hold a DaemonSet pod's reads to its own node).

The agent sends its projected ServiceAccount token, bound to the audience `wattscale-operator` (useless
against the API server). The operator asks the API server about it (a TokenReview with that audience), needs
the agent's ServiceAccount, and serves only the node the token names in its
`authentication.kubernetes.io/node-name` extra: 401 for a token the API server refuses, 403 for another
account or another node. Answers are cached `cache_s` so the API is not asked at every agent step. Only the
Lease holder serves (503 elsewhere); `/readyz` says the same, so the Service routes to the leader.

Every answer to an agent is signed (controller/cluster/plan_signing.py): the agent sends a fresh nonce with each
request, and the plan (or the 404 saying there is none) carries the operator's Ed25519 signature over the node,
that nonce and the body's exact bytes. A request with no nonce, an agent's from before plans were signed, is
answered unsigned (plans are not secret, and no agent that verifies sends none), so a rolling upgrade keeps the
agents not yet rolled following.

Bounded (controller.bounded_server): a thread per connection, at most MAX_CLIENTS at once (more are closed
unanswered), each cut after REQUEST_S (a TokenReview's wait included) whatever it sends (a client that sends a
byte a second holds no agent's request up), GET only with no body, a header of bounded size.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller import strict_json
from controller.bounded_server import BoundedServer, serve_in_thread
from controller.cluster.plan_signing import NONCE, NONCE_HEADER, SIGNATURE_HEADER, sign
from controller.cluster.resources import GROUP, VERSION

log = logging.getLogger("wattscale.operator")
AUDIENCE = "wattscale-operator"
NODE_EXTRA = "authentication.kubernetes.io/node-name"
PLAN_PATH = re.compile(r"^/v1/nodes/([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)/plan$")
MAX_TOKEN_CHARS = 16384
MAX_CACHED = 1024
FAILED_REVIEW_S = 5.0
"""How long a TokenReview that failed (the API unreachable) answers 503 for its token before it is asked again:
with the API down, one request per token waits on it, not every one."""


class Refused(Exception):
    """A request refused: `code` 401 (the token), 403 (not this caller's), 503 (not answerable now)."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


@dataclass(frozen=True)
class Caller:
    username: str
    node: str | None


class TokenReviewer:
    """Who a token is, as the API server says (TokenReview, `spec.audiences`), cached `cache_s` by its hash."""

    def __init__(self, api_client: Any, account: str, audience: str = AUDIENCE, cache_s: float = 60.0,
                 timeout_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        from kubernetes.client import AuthenticationV1Api

        self.api = AuthenticationV1Api(api_client)
        self.account, self.audience, self.cache_s, self.timeout_s = account, audience, cache_s, timeout_s
        """`account`: the agents' ServiceAccount as a username, `system:serviceaccount:<namespace>:<name>`."""
        self.clock = clock
        self.cache: dict[str, tuple[float, Caller | Refused]] = {}
        self.lock = threading.Lock()
        """Guards the cache (requests are served in threads of their own; a review is asked outside it)."""
        self.failing = False

    def node_of(self, token: str) -> str:
        """The node an agent's token may read the plan of; Refused (401, 403, 503) otherwise."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self.clock()
        with self.lock:
            hit = self.cache.get(key)
        if hit is None or hit[0] <= now:
            answer = self._review(token)
            hold = FAILED_REVIEW_S if isinstance(answer, Refused) and answer.code == 503 else self.cache_s
            with self.lock:
                if len(self.cache) >= MAX_CACHED:
                    self.cache = {k: v for k, v in self.cache.items() if v[0] > now}
                    while len(self.cache) >= MAX_CACHED:
                        del self.cache[next(iter(self.cache))]
                hit = self.cache[key] = (now + hold, answer)
        answer = hit[1]
        if isinstance(answer, Refused):
            raise answer
        if answer.username != self.account:
            raise Refused(403, f"{answer.username} is not the node agents' ServiceAccount")
        if not answer.node:
            raise Refused(403, f"the token names no node (its {NODE_EXTRA} extra)")
        return answer.node

    def _review(self, token: str) -> Caller | Refused:
        from kubernetes.client import V1TokenReview, V1TokenReviewSpec

        body = V1TokenReview(spec=V1TokenReviewSpec(token=token, audiences=[self.audience]))
        try:
            status = self.api.create_token_review(body, _request_timeout=self.timeout_s).status
        except Exception as exc:
            if not self.failing:
                log.warning("TokenReview failed (agents answered 503): %s", exc)
            self.failing = True
            return Refused(503, f"TokenReview failed: {exc}")
        self.failing = False
        if status is None or not status.authenticated or self.audience not in (status.audiences or []):
            return Refused(401, (status.error if status is not None else None) or "token not authenticated")
        user = status.user
        extra = (user.extra or {}).get(NODE_EXTRA) or []
        return Caller(str(user.username or ""), str(extra[0]) if extra else None)


PlanOf = Callable[[str], dict[str, Any] | None]
"""Node -> its plan's spec as last written (None: no plan for it)."""
Reply = tuple[int, bytes, dict[str, str]]
"""An answer: HTTP status, JSON body, extra headers (a plan's signature)."""


def _json(status: int, body: dict[str, Any]) -> Reply:
    return status, strict_json.dumps(body).encode(), {}


class PlanServer:
    """The endpoint in a thread of its own; `attach` says whose plans it serves and while what holds."""

    def __init__(self, reviewer: TokenReviewer, signing_key: Ed25519PrivateKey, listen: str, port: int,
                 timeout_s: float = 2.0) -> None:
        self.reviewer, self.signing_key = reviewer, signing_key
        self.source: tuple[PlanOf, Callable[[], bool]] | None = None
        self.lock = threading.Lock()
        self.server = BoundedServer((listen, port), _handler(self, timeout_s))
        self.port = int(self.server.server_address[1])
        self.thread = serve_in_thread(self.server, "plan-server")
        log.info("serving node plans on %s:%d", listen, self.port)

    def attach(self, plan_of: PlanOf, serving: Callable[[], bool]) -> None:
        """Serve `plan_of` while `serving()` (the Lease held); replaces what was attached."""
        with self.lock:
            self.source = (plan_of, serving)

    def detach(self) -> None:
        with self.lock:
            self.source = None

    def ready(self) -> bool:
        with self.lock:
            source = self.source
        return source is not None and source[1]()

    def answer(self, path: str, authorization: str, nonce: str | None) -> Reply:
        """One GET's answer; a node's signed for `nonce` (the agent's `Wattscale-Nonce`; None: unsigned)."""
        if path == "/readyz":
            return _json(200, {"ready": True}) if self.ready() else _json(503, {"ready": False})
        m = PLAN_PATH.match(path)
        if m is None:
            return _json(404, {"error": "not found: GET /v1/nodes/<node>/plan"})
        with self.lock:
            source = self.source
        if source is None or not source[1]():
            return _json(503, {"error": "not the acting operator"})
        token = authorization.removeprefix("Bearer ").strip() if authorization.startswith("Bearer ") else ""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return _json(401, {"error": "a bearer token is needed"})
        if nonce is not None and NONCE.fullmatch(nonce) is None:
            return _json(400, {"error": f"{NONCE_HEADER} must be 32-128 lowercase hex digits"})
        try:
            node = self.reviewer.node_of(token)
        except Refused as exc:
            return _json(exc.code, {"error": str(exc)})
        if node != m.group(1):
            return _json(403, {"error": f"the token is node {node}'s"})
        spec = source[0](node)
        plan = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NodePowerPlan", "metadata": {"name": node}, "spec": spec}
        status, data, _ = _json(404, {"error": f"no plan for node {node}"}) if spec is None else _json(200, plan)
        return status, data, {} if nonce is None else {SIGNATURE_HEADER: sign(self.signing_key, node, nonce, data)}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(2.0)


def _handler(plans: PlanServer, timeout_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = timeout_s  # the socket's: a client that stalls holds the thread no longer
        server_version = "wattscale"
        sys_version = ""

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, reply: Reply) -> None:
            status, data, headers = reply
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.headers.get("Content-Length", "0") not in ("", "0"):
                self._send(_json(413, {"error": "a GET has no body"}))
                return
            try:
                reply = plans.answer(self.path.split("?", 1)[0], self.headers.get("Authorization", ""),
                                     self.headers.get(NONCE_HEADER))
            except Exception as exc:  # a bug must not end the thread that serves every node
                log.warning("plan request %s failed: %r", self.path, exc)
                reply = _json(500, {"error": "internal error"})
            self._send(reply)

    return Handler
