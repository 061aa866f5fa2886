"""One active operator: a `coordination.k8s.io/v1` Lease, taken and renewed with the resourceVersion checked,
so of two operators that race for it one wins (the API server answers the other 409). A passive operator
watches and waits; it takes the Lease once it has seen no renewal for `duration_s` on its own clock (never
by comparing the holder's renewTime with it), or at once when the holder gives it back on a clean exit."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from actuators.kubernetes import translate

log = logging.getLogger("wattscale.operator")
LEASE = "get, create and update on coordination.k8s.io leases in its namespace"
"""What the operator's Role grants for the Lease (deploy/kubernetes/base/operator-rbac.yaml)."""

RENEW_SHARE = 3.0
"""A held Lease is renewed once a `duration / RENEW_SHARE` has passed (client-go's retry period), not on every
fast tick; the acting operator renews it in a thread of its own (`due`), so the governor never waits on it."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Lease:
    def __init__(self, api_client: Any, namespace: str, name: str, identity: str, duration_s: float = 15.0,
                 timeout_s: float = 5.0) -> None:
        from kubernetes.client import CoordinationV1Api

        self.api = CoordinationV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration_s, self.timeout_s = duration_s, timeout_s
        self.held = False
        self.renewed_at = -1e18
        """When (monotonic) the request that last took or renewed the Lease was started."""
        self.failing = False
        """A renewal failed and none has succeeded since (logged once)."""
        self.refused: str | None = None
        """Why the Lease could not be taken, as last logged (a Role missing, a namespace the Role is not in: once
        while it lasts, where an operator that never acted had said nothing)."""
        self.observed: tuple[Any, ...] | None = None
        self.observed_at = 0.0
        """The Lease's record (holder, renewTime, resourceVersion) as last read, and when (monotonic) it last
        changed: another holder's Lease expires `duration` after this process last saw it move, as client-go
        times it, so no clock skew between pods shortens or stretches it."""

    def valid(self) -> bool:
        """Whether this operator may act now: it holds the Lease and renewed it within its duration (a step
        blocked on the API past that may have let a standby take over)."""
        return self.held and time.monotonic() - self.renewed_at < self.duration_s

    def due(self) -> bool:
        """Whether a held Lease is old enough to renew (`hold` asks the API only then)."""
        return self.held and time.monotonic() - self.renewed_at >= self.duration_s / RENEW_SHARE

    def _body(self, old: Any, acquire: bool) -> Any:
        from kubernetes.client import V1Lease, V1LeaseSpec, V1ObjectMeta

        now = _now()
        spec = V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=int(self.duration_s),
                           renew_time=now, acquire_time=now if acquire else old.spec.acquire_time,
                           lease_transitions=(old.spec.lease_transitions or 0) + (1 if acquire else 0) if old else 0)
        meta = V1ObjectMeta(name=self.name, namespace=self.namespace,
                            resource_version=old.metadata.resource_version if old else None)
        return V1Lease(metadata=meta, spec=spec)

    def hold(self) -> bool:
        """Take or renew the Lease; whether this operator holds it now. A renewal that fails on a timeout or an
        outage leaves the Lease held while it is `valid` (renewed within its duration, timed from the start of
        the last request that renewed it: no standby may take it before then), to be tried again; a conflict
        (another wrote it), another holder or a term that ran out unrenewed ends it, and a Lease not held stays not
        held on any failure."""
        from kubernetes.client.exceptions import ApiException

        started = time.monotonic()
        if self.held and not self.due():
            return True  # renewed a moment ago: no request
        if self.held and not self.valid():  # its term ran out unrenewed: a standby may act, so this term is over
            return self._became(False)  # (as client-go's elector stops leading past its renew deadline)
        renewing = self.held  # a renewal never takes a Lease back that was given back or taken meanwhile
        try:
            try:
                old = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.timeout_s)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                if renewing:  # deleted under it: a standby may create it now, so this term is over
                    return self._became(False)
                self.api.create_namespaced_lease(self.namespace, self._body(None, True),
                                                 _request_timeout=self.timeout_s)
                self.renewed_at, self.refused = started, None
                return self._became(True)
            holder, renewed = old.spec.holder_identity, old.spec.renew_time
            duration = old.spec.lease_duration_seconds or self.duration_s
            record = (holder, renewed, old.metadata.resource_version)
            if record != self.observed:
                self.observed, self.observed_at = record, started
            expired = renewed is None or started - self.observed_at > duration
            if holder != self.identity and (renewing or (holder and not expired)):
                return self._became(False)
            self.api.replace_namespaced_lease(self.name, self.namespace, self._body(old, holder != self.identity),
                                              _request_timeout=self.timeout_s)
            self.renewed_at = started
            self.failing, self.refused = False, None
            return self._became(True)
        except Exception as exc:  # a conflict (another took it), a timeout, a refusal
            conflict = isinstance(exc, ApiException) and exc.status == 409
            if self.held and not self.failing:
                log.warning("lease %s/%s not renewed: %s", self.namespace, self.name, exc)
            if not self.held and not conflict and (said := str(translate(exc, f"lease {self.namespace}/{self.name}",
                                                                          LEASE))) != self.refused:
                log.warning("%s: this operator does not act until it can take the Lease", said)
                self.refused = said
            self.failing = self.held
            return self._became(not conflict and self.valid())

    def lapse(self) -> None:
        """Count the Lease as no longer held: its term ran out unrenewed (so `give_back` sends nothing)."""
        self._became(False)

    def _became(self, held: bool) -> bool:
        if held != self.held:
            log.info("lease %s/%s %s by %s", self.namespace, self.name, "taken" if held else "not held",
                     self.identity)
        self.held = held
        return held

    def give_back(self) -> None:
        """On a clean exit: empty the holder, so a successor need not wait for the Lease to expire."""
        if not self.held:
            return
        try:
            old = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.timeout_s)
            if old.spec.holder_identity == self.identity:
                old.spec.holder_identity = None
                old.spec.renew_time = None
                self.api.replace_namespaced_lease(self.name, self.namespace, old, _request_timeout=self.timeout_s)
        except Exception as exc:
            log.warning("lease %s/%s not given back: %s", self.namespace, self.name, exc)
        self.held = False
