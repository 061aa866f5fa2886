"""The vLLM Deployments the operator drives: which one runs each service's variant (the targets the replica
and batch actuators hold), whether each exists, and which pods each runs (which GPUs serve which service)."""

from __future__ import annotations

import logging
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

    def check(self, svc: ServiceSettings) -> None:
        """ConfigError naming the variant whose Deployment does not exist, or lacks the MANAGED label (taken out of
        the actuators' targets at once: settings kept meanwhile, a refused policy's, drove it on); an API error for
        good (a 403) passes through. One that may pass (a 5xx, a timeout) leaves a service the targets hold as it
        is, counted each time and logged once while it lasts (a blip of the API server had taken a running service
        out of the plan, and its GPUs to their lowest limit, for a slow period); a new one waits for a read."""
        ns = svc.name.split("/", 1)[0]
        for i, v in enumerate(svc.variants):
            what, ref = f"Deployment {ns}/{v.deployment}", DeploymentRef(ns, v.deployment)
            try:
                found = self.apps.read_namespaced_deployment(v.deployment, ns, _request_timeout=self.timeout_s)
            except Exception as exc:
                error = translate(exc, what)
                if isinstance(error, MissingTargetError):
                    raise ConfigError(f"spec.variants[{i}].deployment", f"no {what}") from None
                if not isinstance(error, TransientActuatorError):
                    raise error from exc
                self.metrics.errors.labels("deployments").inc()
                if ref not in self.replica_targets.values():  # its label never read: not driven on a blip
                    raise ConfigError(f"spec.variants[{i}].deployment", f"{error}; a new service waits for its "
                                      "Deployment to read") from None
                if what not in self.unread:
                    log.warning("%s; %s kept as it is until it reads", error, svc.name)
                self.unread.add(what)
                continue
            self.unread.discard(what)
            if ((found.metadata.labels if found.metadata else None) or {}).get(MANAGED) != "true":
                _update_in_place(self.replica_targets, {k: r for k, r in self.replica_targets.items() if r != ref})
                _update_in_place(self.batch_targets, {k: r for k, r in self.batch_targets.items() if ref not in r})
                raise ConfigError(f"spec.variants[{i}].deployment", f"{what} has no label {MANAGED}=true, by which "
                                  "its owner lets wattscale scale it and set its --max-num-seqs")

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
        _update_in_place(self.batch_targets, batch)
        _update_in_place(self.replica_targets, replica)

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
                d = self.apps.read_namespaced_deployment(ref.name, ref.namespace, _request_timeout=self.timeout_s)
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
