"""An HTTP emulator of the Kubernetes API on loopback, with watches, for the operator, the node agent and the
kubernetes actuators.

kopf and the official client talk to it as to an API server: discovery (`/api`, `/apis`), list and watch
(chunked JSON lines from a resourceVersion), get, create, merge and JSON patches, replace with the
resourceVersion checked (409 on a stale one, as a Lease's leader election needs), delete with finalizers
(a deletionTimestamp until they are gone), and the `status` and `scale` subresources. A minimal Deployment
controller writes a Deployment's rollout status after each change of its spec (`rollout_s` later). Custom
resources are served once their CustomResourceDefinition is created (the files in deploy/), and every write
of one is pruned and validated against the CRD's openAPIV3Schema (tests/kube_schema.py), a refusal answered
422 Invalid with a cause per field as the API server answers. `fail` scripts the failures a real server has
(a 409, a 500, a slow answer) for the actuators' error maps. TokenReviews are answered from `tokens` (issued
by `issue`) as the API server answers them: the token's user with its `extra` (the node of a pod's bound
token) and the audiences it shares with `spec.audiences`, or unauthenticated with an error. This module
holds the store; the HTTP side (paths, discovery, watches) is tests/kube_http.py. Kept in memory; the server
runs in daemon threads, every watch ends within half a second of `close()` and by itself after `watch_s`.

Why not kmock (PyPI, by kopf's author): its emulator serves from the test's asyncio loop (async tests and
pytest-asyncio throughout) and merges every write without a resourceVersion check, so a Lease held by two
operators could not conflict.
"""

from __future__ import annotations

import copy
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from kube_http import ApiError, handler
from kube_schema import CrdSchema


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: tuple[str, ...] = ()


BUILTIN = (
    Kind("", "v1", "events", "Event", True),
    Kind("", "v1", "pods", "Pod", True),
    Kind("", "v1", "nodes", "Node", False),
    Kind("", "v1", "namespaces", "Namespace", False),
    Kind("apps", "v1", "deployments", "Deployment", True, ("scale", "status")),
    Kind("coordination.k8s.io", "v1", "leases", "Lease", True),
    Kind("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False),
    Kind("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False),
)
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
"""The API server's own audience: a token's where it names none, and a review's where it asks for none."""


@dataclass(frozen=True)
class TokenUser:
    """Who a token is: a ServiceAccount's username, the audiences it was issued for and, for a pod's bound
    token, the pod's node (the `authentication.kubernetes.io/node-name` extra, Kubernetes 1.30+)."""

    username: str
    audiences: tuple[str, ...] = (API_AUDIENCE,)
    node: str | None = None


def merge(target: Any, patch: Any, strategic: bool = False) -> Any:
    """RFC 7386 JSON merge patch (null deletes; lists are replaced); `strategic`: lists of named objects (a
    pod's containers) are merged by name, as a strategic merge patch does."""
    if strategic and isinstance(patch, list) and isinstance(target, list) and all(
            isinstance(x, dict) and "name" in x for x in [*patch, *target]):
        old = {x["name"]: x for x in target}
        new = {x["name"]: merge(old.get(x["name"]), x, strategic) for x in patch}
        return [new.get(x["name"], x) for x in target] + [x for n, x in new.items() if n not in old]
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v, strategic)
    return out


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 add, replace and remove (what clients send here)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), op["value"]) if op["op"] == "add" else \
                node.__setitem__(int(last), op["value"])
        else:
            node[last] = op["value"]
    return doc


@dataclass
class Store:
    kinds: dict[tuple[str, str], Kind] = field(default_factory=dict)
    schemas: dict[tuple[str, str], CrdSchema] = field(default_factory=dict)
    """The served version's schema of each custom resource, by (group, plural)."""
    objects: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[int, tuple[str, str], str, dict[str, Any]]] = field(default_factory=list)
    rv: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)


class KubeEmulator:
    def __init__(self, watch_s: float = 30.0, rollout_s: float = 0.0) -> None:
        self.store = Store()
        self.rollout_s = rollout_s
        """How long a Deployment's rollout takes (0: its status is written at once)."""
        for k in BUILTIN:
            self.store.kinds[k.group, k.plural] = k
        self.watch_s = watch_s
        self.requests: list[tuple[str, str, str]] = []
        """(bearer token, method, path) of every request."""
        self.tokens: dict[str, TokenUser] = {}
        """Bearer token -> who it is, for TokenReviews."""
        self.faults: list[Fault] = []
        """Scripted failures, the first that matches a request answering it (see `fail`)."""
        self.closing = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        with self.store.cond:
            self.store.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, token: str = "emulator") -> dict[str, Any]:
        """A kubeconfig that points the official client (and kopf's login through it) here; the token tells
        whose requests are whose in `requests`."""
        return {"apiVersion": "v1", "kind": "Config", "current-context": "emu",
                "clusters": [{"name": "emu", "cluster": {"server": self.url}}],
                "users": [{"name": "emu", "user": {"token": token}}],
                "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "emu"}}]}

    def fail(self, method: str, path: str, code: int = 0, delay_s: float = 0.0, times: int | None = None,
             body: bytes | None = None, trickle_s: float = 0.0) -> None:
        """Requests of `method` whose path matches the regex `path` answered with HTTP `code` (a Status as the
        server sends it), or with `body` as it is (a byte every `trickle_s`), and/or `delay_s` late, for the next
        `times` of them (None: every one): the failures a real API server has (a 409 on a write that raced, a 500, a
        slow answer, a body a proxy cut short or trickles) on demand."""
        self.faults.append(Fault(method, re.compile(path), code, delay_s, times, body, trickle_s))

    def _fault(self, method: str, path: str) -> Fault | None:
        with self.store.cond:
            for f in self.faults:
                if f.method == method and f.path.search(path) and f.times != 0:
                    if f.times is not None:
                        f.times -= 1
                    return f
            return None

    def issue(self, user: TokenUser) -> str:
        """A new token for `user`, as the kubelet's TokenRequest gets a pod's projected token."""
        token = f"tok-{uuid.uuid4().hex}"
        self.tokens[token] = user
        return token

    def review(self, body: dict[str, Any]) -> dict[str, Any]:
        """A TokenReview's answer (nothing is stored): authenticated where the token is known and shares an
        audience with the review's (the API server's own where it names none)."""
        spec = body.get("spec") or {}
        user = self.tokens.get(str(spec.get("token") or ""))
        wanted = spec.get("audiences") or [API_AUDIENCE]
        status: dict[str, Any] = {"user": {}}
        if user is None:
            status.update(authenticated=False, error="[invalid bearer token, token lookup failed]")
        elif not set(wanted) & set(user.audiences):
            status.update(authenticated=False, error=f"[invalid bearer token, token audiences {list(user.audiences)} "
                          f"is invalid for the target audiences {wanted}]")
        else:
            ns = user.username.split(":")[2] if user.username.startswith("system:serviceaccount:") else ""
            extra = {} if user.node is None else {"authentication.kubernetes.io/node-name": [user.node]}
            status = {"authenticated": True, "audiences": [a for a in wanted if a in user.audiences],
                      "user": {"username": user.username, "uid": str(uuid.uuid5(uuid.NAMESPACE_OID, user.username)),
                               "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}",
                                          "system:authenticated"], "extra": extra}}
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": spec,
                "status": status}

    # -- direct access for tests ---------------------------------------------------------------
    def put(self, group: str, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return self._create((group, plural), meta.get("namespace", ""), copy.deepcopy(obj))

    def stored(self, group: str, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """An object already in storage, written before its CRD's schema refused it (the server never
        re-validates stored objects when a CRD changes): what a schema cannot keep out of the operator's reads."""
        with self.store.cond:
            schema = self.store.schemas.pop((group, plural))
            try:
                return self.put(group, plural, obj)
            finally:
                self.store.schemas[group, plural] = schema

    def get(self, group: str, plural: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        with self.store.cond:
            obj = self.store.objects.get((group, plural, namespace, name))
            return copy.deepcopy(obj)

    def items(self, group: str, plural: str) -> list[dict[str, Any]]:
        with self.store.cond:
            return [copy.deepcopy(o) for (g, p, _, _), o in self.store.objects.items() if (g, p) == (group, plural)]

    def patch(self, group: str, plural: str, name: str, patch: dict[str, Any], namespace: str = "") -> None:
        with self.store.cond:
            old = self.store.objects[group, plural, namespace, name]
            new = merge(old, patch)
            if new.get("spec") != old.get("spec"):  # as the server counts a spec's changes
                new["metadata"] = {**new["metadata"], "generation": old["metadata"].get("generation", 1) + 1}
            self._write((group, plural, namespace, name), self._admit((group, plural), new, old))

    def delete(self, group: str, plural: str, name: str, namespace: str = "") -> None:
        self._delete((group, plural, namespace, name))

    # -- the store -----------------------------------------------------------------------------
    def _event(self, gp: tuple[str, str], kind: str, obj: dict[str, Any]) -> None:
        self.store.log.append((self.store.rv, gp, kind, copy.deepcopy(obj)))
        self.store.cond.notify_all()

    def _write(self, key: tuple[str, str, str, str], obj: dict[str, Any], kind: str = "MODIFIED") -> dict[str, Any]:
        s = self.store
        s.rv += 1
        obj["metadata"]["resourceVersion"] = str(s.rv)
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            s.objects.pop(key, None)
            self._event(key[:2], "DELETED", obj)
            return obj
        s.objects[key] = obj
        self._event(key[:2], kind, obj)
        return obj

    def _create(self, gp: tuple[str, str], ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.store.cond:
            kind = self.store.kinds[gp]
            meta = obj.setdefault("metadata", {})
            if "name" not in meta and "generateName" in meta:
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            ns = ns if kind.namespaced else ""
            key = (*gp, ns, meta["name"])
            if key in self.store.objects:
                raise ApiError(409, "AlreadyExists", f"{kind.plural} {meta['name']!r} already exists")
            if ns:
                meta["namespace"] = ns
            meta.update(uid=str(uuid.uuid4()), generation=1,
                        creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            obj.setdefault("apiVersion", f"{gp[0]}/{kind.version}".lstrip("/"))
            obj.setdefault("kind", kind.kind)
            obj = self._admit(gp, obj)
            if gp == ("apiextensions.k8s.io", "customresourcedefinitions"):
                self._register(obj)
            out = copy.deepcopy(self._write(key, obj, "ADDED"))
            self._roll(key)
            return out

    def _register(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        version = next(v for v in spec["versions"] if v.get("served", True))
        subs = tuple(version.get("subresources", {}))
        gp = (spec["group"], spec["names"]["plural"])
        self.store.kinds[gp] = Kind(spec["group"], version["name"], spec["names"]["plural"], spec["names"]["kind"],
                                    spec["scope"] == "Namespaced", subs)
        if "schema" in version:
            self.store.schemas[gp] = CrdSchema(version["schema"]["openAPIV3Schema"])

    def _admit(self, gp: tuple[str, str], obj: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
        """A custom resource as stored: pruned to its schema; ApiError 422 where the schema refuses it (on an
        update from `old`, a field left as it was is not refused: the server's ratcheting)."""
        schema = self.store.schemas.get(gp)
        if schema is None:
            return obj
        obj, causes = schema.admit(obj, old)
        if causes:
            kind = self.store.kinds[gp]
            raise ApiError(422, "Invalid", f"{kind.kind}.{gp[0]} {obj['metadata'].get('name', '')!r} is invalid: "
                           + ", ".join(f"{c.field}: {c.message}" for c in causes),
                           {"name": obj["metadata"].get("name", ""), "group": gp[0], "kind": kind.kind,
                            "causes": [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes]})
        return obj

    def _delete(self, key: tuple[str, str, str, str]) -> dict[str, Any]:
        with self.store.cond:
            obj = self.store.objects.get(key)
            if obj is None:
                raise ApiError(404, "NotFound", f"{key[1]} {key[3]!r} not found")
            obj = copy.deepcopy(obj)
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            return self._write(key, obj)

    def _update(self, key: tuple[str, str, str, str], sub: str | None, body: Any, method: str,
                content_type: str) -> dict[str, Any]:
        with self.store.cond:
            kind = self.store.kinds[key[:2]]
            old = self.store.objects.get(key)
            if old is None:
                raise ApiError(404, "NotFound", f"{key[1]} {key[3]!r} not found")
            if sub == "scale":
                body = {"spec": {"replicas": (body if method == "PUT" else merge({}, body))["spec"]["replicas"]}}
                method = "PATCH"
            if method == "PUT":
                sent = body.get("metadata", {}).get("resourceVersion")
                if sent and sent != old["metadata"]["resourceVersion"]:
                    raise ApiError(409, "Conflict", "the object has been modified; apply your changes to the "
                                   "latest version and try again")
                new = {**copy.deepcopy(body), "metadata": {**old["metadata"], **body.get("metadata", {})}}
            elif isinstance(body, list):
                new = json_patch(old, body)
            else:
                new = merge(old, body, "strategic" in content_type)
            if sub == "status":  # the status alone changes (an absent one stays absent, as the server keeps it)
                new = {**{k: v for k, v in old.items() if k != "status"},
                       **({"status": new["status"]} if new.get("status") is not None else {})}
            elif "status" in kind.subresources:  # the object itself or its scale: spec changes count
                new = {k: v for k, v in new.items() if k != "status"}
                if old.get("status") is not None:
                    new["status"] = old["status"]
                if new.get("spec") != old.get("spec"):
                    new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            out = copy.deepcopy(self._write(key, self._admit(key[:2], new, old)))
            if sub != "status":
                self._roll(key)
            return out

    # -- the Deployment controller -------------------------------------------------------------
    def _roll(self, key: tuple[str, str, str, str]) -> None:
        """A Deployment whose spec is not yet observed: observed at once; with a `rollout_s`, first with no
        replica updated (a maxSurge 0 rollout's start: the old pods serve, and the API omits a zero field),
        then, `rollout_s` later and if no newer change came, every replica updated and available."""
        obj = self.store.objects.get(key)
        if key[:2] != ("apps", "deployments") or obj is None or obj["metadata"].get("deletionTimestamp"):
            return
        generation, status = obj["metadata"].get("generation", 1), dict(obj.get("status") or {})
        if status.get("observedGeneration") == generation:
            return
        want = int(obj["spec"].get("replicas", 1))
        done = {"observedGeneration": generation, "replicas": want, "updatedReplicas": want,
                "availableReplicas": want}
        if self.rollout_s <= 0:
            self._write(key, {**obj, "status": {k: v for k, v in done.items() if v}})
            return
        serving = int(status.get("availableReplicas", 0))
        interim = {"observedGeneration": generation, "replicas": serving, "availableReplicas": serving}
        self._write(key, {**obj, "status": {k: v for k, v in interim.items() if v}})
        timer = threading.Timer(self.rollout_s, self._rolled, (key, generation, done))
        timer.daemon = True
        timer.start()

    def _rolled(self, key: tuple[str, str, str, str], generation: int, status: dict[str, int]) -> None:
        with self.store.cond:
            obj = self.store.objects.get(key)
            if obj is not None and obj["metadata"].get("generation") == generation and not self.closing.is_set():
                self._write(key, {**obj, "status": {k: v for k, v in status.items() if v}})

    def _list(self, gp: tuple[str, str], ns: str | None, selector: str,
              fields: str = "") -> tuple[list[dict[str, Any]], int]:
        """The objects a list returns: by label selector (k=v, comma-separated) and by the one field selector
        every kind has, `metadata.name=<name>` (another is refused, as the server refuses a field it lacks)."""
        want = dict(p.split("=", 1) for p in selector.split(",") if "=" in p)
        named = dict(p.split("=", 1) for p in fields.split(",") if "=" in p)
        if set(named) - {"metadata.name"}:
            raise ApiError(400, "BadRequest", f"field label not supported: {sorted(set(named))}")
        with self.store.cond:
            out = [copy.deepcopy(o) for (g, p, n, name), o in self.store.objects.items()
                   if (g, p) == gp and (ns is None or n == ns) and named.get("metadata.name", name) == name
                   and all(o["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
            return out, self.store.rv


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    code: int
    delay_s: float
    times: int | None
    body: bytes | None = None
    """Answered with HTTP 200 and these bytes as they are (a body cut short, not JSON)."""
    trickle_s: float = 0.0
    """The body sent a byte at a time, this many seconds apart (a server or proxy that trickles), until closed."""
