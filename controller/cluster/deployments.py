"""The vLLM Deployments the operator drives: which one runs each service's variant (the targets the replica
and batch actuators hold), whether each exists, and which pods each runs (which GPUs serve which service)."""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any, TypeVar

from actuators.base import MissingTargetError, TransientActuatorError
from actuators.kubernetes import DeploymentRef, translate
from controller.config_loader import ConfigError
from controller.own_metrics import OwnMetrics
from controller.service_settings import ServiceSettings
from controller.settings import Settings

log = logging.getLogger("wattscale.operator")
MANAGED = "wattscale.dev/managed"
"""The label (value "true") by which a Deployment's owner lets the operator scale it and set its --max-num-seqs:
whoever may create an LLMService could otherwise have it drive any Deployment of the namespace."""
K = TypeVar("K")
V = TypeVar("V")


def _update_in_place(target: dict[K, V], new: dict[K, V]) -> None:
    target.update(new)
    for key in [k for k in target if k not in new]:
        del target[key]


class Deployments:
    def __init__(self, api_client: Any, metrics: OwnMetrics, timeout_s: float = 5.0) -> None:
        from kubernetes.client import AppsV1Api, CoreV1Api

        self.client, self.metrics, self.timeout_s = api_client, metrics, timeout_s
        self.apps, self.core = AppsV1Api(api_client), CoreV1Api(api_client)
        self.replica_targets: dict[tuple[str, str], DeploymentRef] = {}
        """(service, variant) -> its Deployment (the replica actuator holds this dict)."""
        self.batch_targets: dict[str, tuple[DeploymentRef, ...]] = {}
        """Service -> its variants' Deployments (the batch actuator holds this dict)."""
        self.failing: set[str] = set()
        """Deployments whose pods could not be listed (logged once while so)."""
        self.unread: set[str] = set()
        """Deployments whose check failed on an error that may pass (logged once while so)."""
        self.consented: set[DeploymentRef] = set()
        """Deployments driven whose MANAGED label read true the last time: read in this leadership (emptied as it
        ends), forgotten as they leave the targets. A blip at a read keeps a service planned, driven only so."""
        self.reads = itertools.count()
        """Numbers each label read as it starts: a read's answer is noted only if no later-started read's was (the
        owners' thread and the slow one read the same Deployment), and none started before `forget`."""
        self.noted: dict[DeploymentRef, int] = {}
        self.since: dict[DeploymentRef, int] = {}
        """Per Deployment driven, the first read number that counts for it: one drawn as it became a target, so a
        label read before (for a service since gone, by a worker of an ended leadership) is no consent."""
        self.floor = 0
        self.lock = threading.Lock()
        """Held over the consent's notes (the slow worker's check and prune, the owners' worker's reads)."""

    def check(self, svc: ServiceSettings) -> None:
        """ConfigError naming the first variant whose Deployment does not exist, or lacks the MANAGED label (each
        variant read, its consent noted); an API error for good (a 403) passes through. One that may pass (a 5xx, a
        timeout) leaves the service as it is, counted each time and logged once while it lasts: a blip of the API
        server had taken a running service out of the plan, and its GPUs to their lowest limit, for a slow period.
        Such a Deployment is driven only as far as its label was last read (`consents`)."""
        ns = svc.name.split("/", 1)[0]
        refused: ConfigError | None = None
        for i, v in enumerate(svc.variants):
            what, ref, n = f"Deployment {ns}/{v.deployment}", DeploymentRef(ns, v.deployment), next(self.reads)
            try:
                found = self.apps.read_namespaced_deployment(v.deployment, ns, _request_timeout=self.timeout_s)
            except Exception as exc:
                error = translate(exc, what)
                if isinstance(error, MissingTargetError):
                    self._consent(ref, None, n)
                    refused = refused or ConfigError(f"spec.variants[{i}].deployment", f"no {what}")
                    continue
                if not isinstance(error, TransientActuatorError):
                    raise error from exc
                self.metrics.errors.labels("deployments").inc()
                if what not in self.unread:
                    log.warning("%s; %s kept as it is until it reads", error, svc.name)
                self.unread.add(what)
                continue
            self.unread.discard(what)
            if not self._consent(ref, found, n):
                refused = refused or ConfigError(f"spec.variants[{i}].deployment", f"{what} has no label "
                                                 f"{MANAGED}=true, by which its owner lets wattscale scale it and set "
                                                 "its --max-num-seqs")
        if refused is not None:
            raise refused

    def _consent(self, ref: DeploymentRef, found: Any, n: int) -> bool:
        """Whether a Deployment as read (None: gone) carries the MANAGED label, noted for `consents` where read `n`
        started after every read noted before it and after the last `forget`."""
        given = found is not None and ((found.metadata.labels if found.metadata else None) or {}).get(MANAGED) == "true"
        with self.lock:
            if n >= max(self.floor, self.noted.get(ref, -1)):
                self.noted[ref] = n
                (self.consented.add if given else self.consented.discard)(ref)
        return given

    def prune(self) -> None:
        """Consent kept for the Deployments driven only (each slow tick, its settings handed over)."""
        with self.lock:
            self.consented &= set(self.replica_targets.values())

    def lead(self, s: Settings) -> None:
        """A leadership begins: labels read before it (a standby's, a worker's of the last) count not."""
        self.forget()
        self.target(s)

    def forget(self) -> None:
        """Every consent dropped as a leadership ends or begins, with the answers of reads in flight, and each
        Deployment's next read counting only as it is targeted again."""
        with self.lock:
            self.consented.clear()
            self.since.clear()
            self.floor = next(self.reads)

    def consents(self, service: str, variant: str | None = None) -> bool:
        """Whether the Deployment of a service's variant (None: of every variant) carried the MANAGED label when
        last read (at each slow tick's check and each refresh of the owners, whatever the policy): the actuators
        act on no other, so one whose owner took the label back is left alone even while settings read before
        are kept (a refused policy). One with no Deployment is left to the actuator, which says so."""
        refs = [self.replica_targets.get((service, variant))] if variant else list(self.batch_targets.get(service, ()))
        return all(r is None or (r in self.consented and self.noted.get(r, -1) >= self.since.get(r, self.floor))
                   for r in refs)

    def target(self, s: Settings) -> None:
        """The Deployments per (service, variant) and per service, updated in place (the actuators hold them;
        the owners' worker reads them meanwhile, so they are never empty between two settings)."""
        batch: dict[str, tuple[DeploymentRef, ...]] = {}
        replica: dict[tuple[str, str], DeploymentRef] = {}
        for svc in s.services:
            ns = svc.name.split("/", 1)[0]
            refs = tuple(DeploymentRef(ns, v.deployment) for v in svc.variants)
            batch[svc.name] = refs
            for v, ref in zip(svc.variants, refs, strict=True):
                replica[svc.name, v.accelerator] = ref
        with self.lock:
            self.since = {ref: self.since[ref] if ref in self.since else next(self.reads) for ref in replica.values()}
        _update_in_place(self.batch_targets, batch)
        _update_in_place(self.replica_targets, replica)
        self.prune()  # one no longer driven is read no more: its label may go unseen

    def pods(self) -> dict[tuple[str, str], list[dict[str, Any]]] | None:
        """Each variant's Deployment's pods (by its selector), for which GPUs serve which service; None where
        one could not be read (the owners known are kept: a GPU of an unread service is not dropped to its
        minimum). A failure is counted each time, logged once while it lasts."""
        out: dict[tuple[str, str], list[dict[str, Any]]] = {}
        sanitize = self.client.sanitize_for_serialization
        complete = True
        for (service, variant), ref in list(self.replica_targets.items()):
            what = f"{ref.namespace}/{ref.name}"
            try:
                n = next(self.reads)
                d = self.apps.read_namespaced_deployment(ref.name, ref.namespace, _request_timeout=self.timeout_s)
                self._consent(ref, d, n)
                selector = label_selector(d.spec.selector)
                pods = self.core.list_namespaced_pod(ref.namespace, label_selector=selector,
                                                     _request_timeout=self.timeout_s) if selector else None
            except Exception as exc:
                self.metrics.errors.labels("pods").inc()
                if what not in self.failing:
                    log.warning("%s", translate(exc, f"pods of {what}"))
                self.failing.add(what)
                complete = False
                continue
            self.failing.discard(what)
            out[service, variant] = [sanitize(p) for p in pods.items] if pods is not None else []
        return out if complete else None


def label_selector(selector: Any) -> str:
    """A Deployment's selector as a list's `labelSelector`, its expressions too ("" where it selects nothing read
    here): its match labels alone had read a selector of expressions as every pod of the namespace, whose GPUs
    then took the service's caps."""
    parts = [f"{k}={v}" for k, v in sorted(((selector.match_labels if selector else None) or {}).items())]
    for e in (selector.match_expressions if selector else None) or []:
        values = ",".join(e.values or [])
        parts.append({"In": f"{e.key} in ({values})", "NotIn": f"{e.key} notin ({values})", "Exists": e.key,
                      "DoesNotExist": f"!{e.key}"}.get(e.operator, ""))
    return "" if "" in parts else ",".join(parts)
