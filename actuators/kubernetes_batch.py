"""`--max-num-seqs` of vLLM Deployments through their container args (a rolling update), with the official client.

The vLLM container is the one whose args hold `--max-num-seqs` (else the first). A change patches every
Deployment of the service (each variant's) and is read back as rolling until the Deployment's controller
reports every replica updated; the value it rolls from is kept in an annotation, with a digest of the pod
template the change made, so a later change of the template by anyone else (an image, a `rollout restart`) is
not taken for this one, while a change of replicas is. A rollout of its own the controller reports stalled
(`ProgressDeadlineExceeded`: new pods that never become ready, a max batch too large for the GPU's memory) reads as
mixed at the value it rolled from. The next change (asked because it is mixed, and made only behind the caller's
guards: a read writes nothing) replaces it with another value; one asking the stalled value again puts every
Deployment at it back and fails for good, as the vLLM backend's failed rollout does. Before, it stayed "rolling"
for ever, every later change held, a replica down. Deployments left at different values (a patch that failed on
one of them) read as mixed too. API errors go through the one map in actuators/kubernetes.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from actuators.base import BatchInForce, PermanentActuatorError, TransientActuatorError
from actuators.kubernetes import DeploymentRef, translate
from actuators.kubernetes_calls import within
from actuators.vllm_servers import with_max_num_seqs

log = logging.getLogger(__name__)
FLAG = "--max-num-seqs"
PREVIOUS = "wattscale.dev/previous-max-num-seqs"
"""`<value rolled from, "" for none>@<digest of the pod template the change made>` (a bare value: before the
digest was kept, taken as this sizer's)."""


def _container(deployment: dict[str, Any], where: str) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"].get("containers") or []
    for c in containers:
        if any(str(a).startswith(FLAG) for a in c.get("args") or []):
            return dict(c)
    if not containers:  # an API server refuses this; an emulator or a hand-stored object may not
        raise PermanentActuatorError(f"{where}: the Deployment has no container to run vLLM in")
    return dict(containers[0])


def _where(service: str, ref: DeploymentRef) -> str:
    """A service's Deployment as messages name it."""
    return f"{service} ({ref.namespace}/{ref.name})"


def read_flag(args: Sequence[str]) -> int | None:
    """The value of `--max-num-seqs N` or `--max-num-seqs=N` in an argv; None where absent or unreadable."""
    for i, a in enumerate(args):
        value = a.split("=", 1)[1] if a.startswith(FLAG + "=") else (args[i + 1] if a == FLAG and i + 1 < len(args)
                                                                     else None)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def stalled(deployment: dict[str, Any]) -> str | None:
    """Why the Deployment's controller has given up on its rollout of the latest spec (its Progressing condition
    False, the spec observed: a condition read just after a change is the change before's), or None."""
    status = deployment.get("status") or {}
    if int(status.get("observedGeneration") or 0) < int(deployment["metadata"].get("generation", 1)):
        return None
    for c in status.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("status") == "False":
            return str(c.get("message") or c.get("reason") or "no progress")
    return None


def rolling(deployment: dict[str, Any]) -> bool:
    """The Deployment's rollout is not complete, read as `kubectl rollout status` reads it: its controller has
    not yet seen the latest spec, not every replica is updated (a field the API omits when zero), old replicas
    are still there, or updated ones are not yet available."""
    meta, status = deployment["metadata"], deployment.get("status") or {}
    want = int(deployment["spec"].get("replicas", 1) or 0)
    updated = int(status.get("updatedReplicas") or 0)
    return (int(status.get("observedGeneration") or 0) < int(meta.get("generation", 1))
            or updated < want
            or int(status.get("replicas") or 0) > updated
            or int(status.get("availableReplicas") or 0) < updated)


class KubernetesBatchSizer:
    name = "kubernetes"

    def __init__(self, api_client: Any, targets: dict[str, tuple[DeploymentRef, ...]], initial: dict[str, int],
                 timeout_s: float = 5.0) -> None:
        from kubernetes.client import AppsV1Api

        self.apps = AppsV1Api(api_client)
        self.targets, self.initial, self.timeout_s = targets, initial, timeout_s
        self.stalled: dict[str, tuple[int, str]] = {}
        """Service -> the value of its own rollout the controller gave up on, and why (the last read's)."""

    def _read(self, service: str, ref: DeploymentRef) -> dict[str, Any]:
        try:
            obj = within(self.timeout_s, self.apps.read_namespaced_deployment, ref.name, ref.namespace)
        except Exception as exc:
            raise translate(exc, _where(service, ref)) from exc
        if not isinstance(obj, dict):
            raise TransientActuatorError(f"{_where(service, ref)}: the API server's answer is no Deployment", 10.0)
        return obj

    def get_max_batch(self, service: str) -> BatchInForce:
        values, rolls = [], []
        self.stalled.pop(service, None)
        for ref in self.targets.get(service, ()):
            d = self._read(service, ref)
            value = read_flag([str(a) for a in _container(d, _where(service, ref)).get("args") or []])
            if value is None:
                continue
            if rolling(d):
                ours, before = _rolled_from(d)
                why = stalled(d) if ours else None
                if why is not None:
                    self.stalled[service] = (value, why)
                else:
                    rolls.append(value)
                value = before if ours and before is not None else value
            values.append(value)
        if not values:
            return BatchInForce(self.initial.get(service, 64))
        stuck = service in self.stalled
        return BatchInForce(min(values), max(rolls) if rolls else None, stuck or (not rolls and len(set(values)) > 1),
                            stuck)

    def set_max_batch(self, service: str, max_num_seqs: int) -> None:
        """Every Deployment of the service to `max_num_seqs`; where the last read found a rollout of its own
        stalled, each Deployment at that value put back first, and the stalled value itself refused for good."""
        if not 1 <= max_num_seqs <= 1_000_000:
            raise PermanentActuatorError(f"{service}: --max-num-seqs must be >= 1, got {max_num_seqs}")
        stall = self.stalled.pop(service, None)
        refused = stall is not None and max_num_seqs == stall[0]
        reads = []
        for ref in self.targets.get(service, ()):
            d = self._read(service, ref)
            reads.append((ref, d, read_flag([str(a) for a in _container(d, _where(service, ref)).get("args") or []]),
                          *_rolled_from(d)))
        # the value that served stalls too (a put-back's): nothing of the value to undo, the cluster's problem
        served = refused and any(now == max_num_seqs and ours and before == now for _, _, now, ours, before in reads)
        for ref, d, now, ours, before in reads:
            if refused and not served and now == max_num_seqs and ours:  # its siblings that rolled out go back too
                self._patch(service, ref, d, before, before)
                log.warning("%s: the rollout to --max-num-seqs %d made no progress: put back to %s",
                            _where(service, ref), now, before or "the server's default")
            elif (served or not refused) and now != max_num_seqs:
                # another value replaces a stalled rollout as it is, from the value that served
                self._patch(service, ref, d, max_num_seqs, before if ours and rolling(d) else now)
                log.info("%s/%s: rolling out --max-num-seqs %d (was %s)", ref.namespace, ref.name, max_num_seqs, now)
        if refused and served:
            assert stall is not None
            raise TransientActuatorError(f"{service}: the rollout of --max-num-seqs {stall[0]}, the value that served "
                                         f"before, made no progress ({stall[1]}): the cluster's (quota, nodes, image), "
                                         "not the max batch's", 300.0)
        if refused:
            assert stall is not None
            raise PermanentActuatorError(f"{service}: the rollout to --max-num-seqs {stall[0]} made no progress "
                                         f"({stall[1]}); put back")

    def _patch(self, service: str, ref: DeploymentRef, d: dict[str, Any], max_num_seqs: int | None,
               previous: int | None) -> None:
        """The Deployment's vLLM container to `max_num_seqs` (None: no flag), `previous` kept as the value it rolls
        from, with the digest of the pod template this change makes."""
        c = _container(d, _where(service, ref))
        args = with_max_num_seqs(tuple(str(a) for a in c.get("args") or []), max_num_seqs)
        template = copy.deepcopy(d["spec"]["template"])
        for container in template["spec"]["containers"]:
            if container.get("name") == c["name"]:
                container["args"] = args
        patch = {"metadata": {"annotations": {PREVIOUS: f"{'' if previous is None else previous}@{_digest(template)}"}},
                 "spec": {"template": {"spec": {"containers": [{"name": c["name"], "args": args}]}}}}
        try:
            within(self.timeout_s, self.apps.patch_namespaced_deployment, ref.name, ref.namespace, patch,
                   _content_type="application/strategic-merge-patch+json")
        except Exception as exc:
            raise translate(exc, _where(service, ref)) from exc


def _digest(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _rolled_from(d: dict[str, Any]) -> tuple[bool, int | None]:
    """Whether the Deployment's pod template is as this sizer's last change left it (no one changed it since: a
    change of replicas is no change of it), and the value that change rolled from (None: none, the server's
    default). A bare value, written before the digest was kept, is taken as this sizer's; no annotation, as not."""
    kept = (d["metadata"].get("annotations") or {}).get(PREVIOUS)
    previous, at, made = str(kept or "").partition("@")
    ours = kept is not None and (not at or made == _digest(d["spec"]["template"]))
    return ours, int(previous) if ours and previous.isdigit() else None
