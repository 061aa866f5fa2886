"""`--max-num-seqs` of vLLM Deployments through their container args (a rolling update), with the official client.

The vLLM container is the one whose args hold `--max-num-seqs` (else the first). A change patches every
Deployment of the service (each variant's) and is read back as rolling until the Deployment's controller
reports every replica updated; the value it rolls from is kept in an annotation. A rollout the controller
reports stalled (`ProgressDeadlineExceeded`: new pods that never become ready, a max batch too large for the
GPU's memory) is put back to that value, as the vLLM backend rolls back, and fails the next change for good;
before, it stayed "rolling" for ever, every later change held, a replica down. Deployments left at different
values (a patch that failed on one of them) read as mixed, so the next cycle asks again. API errors go through
the one map in actuators/kubernetes.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from actuators.base import BatchInForce, PermanentActuatorError
from actuators.kubernetes import DeploymentRef, translate
from actuators.vllm_servers import with_max_num_seqs

log = logging.getLogger(__name__)
FLAG = "--max-num-seqs"
PREVIOUS = "wattscale.dev/previous-max-num-seqs"


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
    """Why the Deployment's controller has given up on its rollout (its Progressing condition False), or None."""
    for c in (deployment.get("status") or {}).get("conditions") or []:
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
        self.plain = api_client.sanitize_for_serialization
        self.targets, self.initial, self.timeout_s = targets, initial, timeout_s
        self.failures: dict[str, PermanentActuatorError] = {}
        """A stalled rollout put back, raised on the service's next change."""

    def _read(self, service: str, ref: DeploymentRef) -> dict[str, Any]:
        try:
            obj = self.apps.read_namespaced_deployment(ref.name, ref.namespace, _request_timeout=self.timeout_s)
        except Exception as exc:
            raise translate(exc, _where(service, ref)) from exc
        return dict(self.plain(obj))

    def get_max_batch(self, service: str) -> BatchInForce:
        values, rolls = [], []
        for ref in self.targets.get(service, ()):
            d = self._read(service, ref)
            value = read_flag([str(a) for a in _container(d, _where(service, ref)).get("args") or []])
            if value is None:
                continue
            if rolling(d):
                before = (d["metadata"].get("annotations") or {}).get(PREVIOUS)
                prior = int(before) if before and before.isdigit() else value
                why = stalled(d)
                if why is not None and prior != value:
                    self._patch(service, ref, d, prior, prior)
                    self.failures[service] = PermanentActuatorError(
                        f"{_where(service, ref)}: the rollout to --max-num-seqs {value} made no progress ({why}); put "
                        f"back to {prior}")
                    log.warning("%s", self.failures[service])
                else:
                    rolls.append(value)
                value = prior
            values.append(value)
        if not values:
            return BatchInForce(self.initial.get(service, 64))
        return BatchInForce(min(values), max(rolls) if rolls else None, not rolls and len(set(values)) > 1)

    def set_max_batch(self, service: str, max_num_seqs: int) -> None:
        if not 1 <= max_num_seqs <= 1_000_000:
            raise PermanentActuatorError(f"{service}: --max-num-seqs must be >= 1, got {max_num_seqs}")
        failure = self.failures.pop(service, None)
        if failure is not None:
            raise failure
        for ref in self.targets.get(service, ()):
            d = self._read(service, ref)
            before = read_flag([str(a) for a in _container(d, _where(service, ref)).get("args") or []])
            if before == max_num_seqs:
                continue
            self._patch(service, ref, d, max_num_seqs, before)
            log.info("%s/%s: rolling out --max-num-seqs %d (was %s)", ref.namespace, ref.name, max_num_seqs, before)

    def _patch(self, service: str, ref: DeploymentRef, d: dict[str, Any], max_num_seqs: int,
               previous: int | None) -> None:
        """The Deployment's vLLM container to `max_num_seqs`, `previous` kept as the value it rolls from."""
        c = _container(d, _where(service, ref))
        args = tuple(str(a) for a in c.get("args") or [])
        patch = {"metadata": {"annotations": {PREVIOUS: str(previous or "")}},
                 "spec": {"template": {"spec": {"containers": [{"name": c["name"],
                                                                "args": with_max_num_seqs(args, max_num_seqs)}]}}}}
        try:
            self.apps.patch_namespaced_deployment(ref.name, ref.namespace, patch, _request_timeout=self.timeout_s,
                                                  _content_type="application/strategic-merge-patch+json")
        except Exception as exc:
            raise translate(exc, _where(service, ref)) from exc
