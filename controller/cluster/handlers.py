"""The kopf operator: `kopf run -m controller.cluster.handlers` (what `wattscale operator` runs).

A daemon per PowerPolicy runs the control loop (controller/cluster/operator.py) for as long as the policy
exists; kopf stops it when the policy is deleted (the agents are then told to restore default limits) or the
operator exits (the plans are left to the agents' TTL). Every replica of the operator runs it; only the
holder of the Lease acts. Configuration comes from the environment `wattscale operator` sets:
WATTSCALE_POLICY (the PowerPolicy acted on), WATTSCALE_NAMESPACE (the Lease's and cluster Events'),
WATTSCALE_STATE_DIR (tuner state, decision log), KUBECONFIG (empty: in-cluster), WATTSCALE_PLAN_LISTEN and
WATTSCALE_PLAN_PORT (the agents' plan endpoint; no port: none), WATTSCALE_PLAN_KEY (the key its plans are
signed with), WATTSCALE_AGENT_ACCOUNT (the agents' ServiceAccount in the operator's namespace).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import kopf
from prometheus_client import CollectorRegistry

from actuators import ActuatorError
from actuators.kubernetes import api_client
from controller.cluster.operator import ClusterLoop
from controller.cluster.plan_server import PlanServer, TokenReviewer
from controller.cluster.plan_signing import load_signing_key
from controller.cluster.resources import GROUP, POLICIES, VERSION
from controller.cluster.status import Reporter
from controller.own_metrics import OwnMetrics

log = logging.getLogger("wattscale.operator")


API_RETRIES_S = (1.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, *(30.0,) * 20)
"""kopf's retry delays for a failed API request (s): its own first eight, then every 30 s, some 11 minutes in all.
kopf's default stops after eight: some 54 s of HTTP 500 on the policies' watch ended the operator with six
tracebacks (a new user's trial); for ever, an RBAC mistake (a 403, retried alike) would have looked live. Past these
the operator exits, and its Deployment restarts it."""


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.posting.level = logging.WARNING  # kopf's own Events for problems only; decisions post their own
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = API_RETRIES_S
    memo.policy = os.environ.get("WATTSCALE_POLICY", "default")
    memo.namespace = os.environ.get("WATTSCALE_NAMESPACE") or os.environ.get("POD_NAMESPACE") or "wattscale"
    memo.state_dir = os.environ.get("WATTSCALE_STATE_DIR", "/var/lib/wattscale")
    memo.identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    memo.client = api_client(os.environ.get("KUBECONFIG", ""))
    memo.metrics = OwnMetrics(getattr(memo, "registry", None) or CollectorRegistry())
    memo.plan_server = None
    memo.loops = {}  # the control loop of each policy acted on, for its watch events (`seen`)
    port = int(os.environ.get("WATTSCALE_PLAN_PORT") or 0)
    if port:
        agents = os.environ.get("WATTSCALE_AGENT_ACCOUNT") or "wattscale-agent"
        account = f"system:serviceaccount:{memo.namespace}:{agents}"
        listen = os.environ.get("WATTSCALE_PLAN_LISTEN") or "127.0.0.1"
        try:
            key = load_signing_key(os.environ.get("WATTSCALE_PLAN_KEY", ""))
        except ValueError as exc:
            raise kopf.PermanentError(str(exc)) from exc
        try:
            memo.plan_server = PlanServer(TokenReviewer(memo.client, account), key, listen, port)
        except OSError as exc:
            raise kopf.PermanentError(f"--plan-listen/--plan-port {listen}:{port}: {exc}") from exc


@kopf.on.cleanup()
def close(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "plan_server", None) is not None:
        memo.plan_server.close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """KUBECONFIG as named when the operator starts (the client library reads it once, at its import), else
    the service account's in-cluster credentials."""
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs)


@kopf.on.event(GROUP, VERSION, POLICIES)
def seen(name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Each watch event of a policy: its acting loop takes a new generation's power settings at once, where the slow
    tick would read them only at its period (controller/cluster/policy_watch.py)."""
    loop = getattr(memo, "loops", {}).get(name)
    if loop is not None:
        loop.policy_seen(dict(body))


@kopf.daemon(GROUP, VERSION, POLICIES, cancellation_backoff=5.0, cancellation_timeout=10.0)
def control(name: str, body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any) -> None:
    """The control loop of the policy named by WATTSCALE_POLICY (others are left alone and say so, on their status
    too)."""
    if name != memo.policy:
        log.warning("PowerPolicy %s is not acted on: this operator acts on %r", name, memo.policy)
        Reporter(memo.client, memo.namespace, memo.identity).not_acted(dict(body), memo.policy)
        return
    loop = ClusterLoop(memo.client, name, memo.identity, memo.namespace, memo.state_dir, memo.metrics,
                       server=memo.plan_server)
    memo.loops[name] = loop
    t0 = time.monotonic()
    last = ""
    try:
        while not stopped:
            try:
                wait = loop.step(time.monotonic() - t0)
                last = ""
            except Exception as exc:  # an API outage or a bug: counted, logged once a run, the loop goes on
                loop.metrics.errors.labels("operator_step").inc()
                if repr(exc) != last:  # an API error already translated says all in its line; a bug, its traceback
                    log.warning("operator step failed: %r", exc, exc_info=not isinstance(exc, ActuatorError))
                last = repr(exc)
                wait = 2.0
            stopped.wait(wait)
    finally:
        if memo.loops.get(name) is loop:  # a policy made again may have its own loop here already
            del memo.loops[name]
        reason = stopped.reason
        deleted = reason is not None and kopf.DaemonStoppingReason.RESOURCE_DELETED in reason
        loop.stand_down(release=deleted, now=time.monotonic() - t0)
        threading.Thread(target=_quiet_when_ended, args=(loop, memo), name="wattscale-quiet", daemon=True).start()
        log.info("PowerPolicy %s: %s", name, "deleted, default limits restored" if deleted else "operator stopping")


def _quiet_when_ended(loop: ClusterLoop, memo: kopf.Memo) -> None:
    """The process's gauges cleared again once a gone policy's last threads have ended (a slow tick or a budget step
    in flight set them after its stand-down, and no step of its loop comes to clear them), unless another policy's
    loop holds the Lease by then (leading, or becoming the leader: its gauges are its own)."""
    for thread in loop.ending:  # each ends on its own timeouts
        thread.join()
    if not any(other.lease.held for other in list(memo.loops.values())):  # kopf's thread may add one meanwhile
        loop.quiet()
