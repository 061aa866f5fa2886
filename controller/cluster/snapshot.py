"""What the custom resources say this cycle: the PowerPolicy and the LLMServices read into the daemon's settings.

A resource that cannot be read is left out with the error naming its field (its status says so), and the
others go on: one bad LLMService never stops the policy, and a cross-field error falls on the service it names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from actuators.kubernetes import translate
from controller.budget.assemble import check_secrets
from controller.budget.settings import budget_settings
from controller.cluster.deployments import Deployments
from controller.cluster.nodes import NodePlans
from controller.cluster.resources import (
    GROUP,
    POLICIES,
    SERVICES,
    VERSION,
    PowerPolicySpec,
    policy_field,
    policy_spec,
    service_field,
    service_settings,
    settings_of,
)
from controller.config_loader import ConfigError, unchecked
from controller.service_settings import ServiceSettings
from controller.settings import Settings


def resource_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """A resource's spec: ConfigError where it is no object (a schema-less write)."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise ConfigError("spec", f"must be an object, got {type(spec).__name__}")
    return spec


@dataclass
class Resources:
    """What the resources say this cycle: the settings (None: no valid policy) and each resource's error."""

    settings: Settings | None
    policy: PowerPolicySpec | None
    errors: dict[str, ConfigError]
    """`namespace/name` of an LLMService (or `policy`) -> why it is left out."""
    objects: dict[str, dict[str, Any]]
    """`namespace/name` -> the LLMService object as read."""
    policy_obj: dict[str, Any]
    """The PowerPolicy object as read."""


def read_resources(custom: Any, policy_name: str, deployments: Deployments, plans: NodePlans | None,
                   state_dir: str, timeout_s: float) -> Resources:
    """The policy named and every LLMService not being deleted, through `custom` (a CustomObjectsApi), each
    checked against its Deployments; `plans` gives the domains' GPUs (None: not leading, none known)."""
    try:
        policy_obj = custom.get_cluster_custom_object(GROUP, VERSION, POLICIES, policy_name,
                                                      _request_timeout=timeout_s)
        items = custom.list_cluster_custom_object(GROUP, VERSION, SERVICES, _request_timeout=timeout_s)["items"]
    except Exception as exc:
        raise translate(exc, "custom resources") from exc
    return resources_of(policy_obj, items, deployments, plans, state_dir)


def resources_of(policy_obj: dict[str, Any], items: list[dict[str, Any]], deployments: Deployments | None,
                 plans: NodePlans | None, state_dir: str, environ: Mapping[str, str] | None = os.environ) -> Resources:
    """`read_resources` of objects read already: each checked (against its Deployments where `deployments` is given,
    its budget sources' secrets against `environ` where given), then together as the operator plans them. Offline
    (`wattscale check-config` of a YAML file) neither is read."""
    objects = {f"{o['metadata'].get('namespace', 'default')}/{o['metadata']['name']}": o for o in items
               if not o["metadata"].get("deletionTimestamp")}
    errors: dict[str, ConfigError] = {}
    try:
        policy: PowerPolicySpec | None = policy_spec(resource_spec(policy_obj))
        if policy is not None and policy.budget and environ is not None:
            check_secrets(budget_settings(policy.budget, "spec.budget"), environ, "spec.budget")
    except ConfigError as exc:
        errors["policy"] = exc
        return Resources(None, None, errors, objects, policy_obj)
    except Exception as exc:  # a value no check caught: on the policy's status, not a traceback every step
        errors["policy"] = unchecked("spec", exc)
        return Resources(None, None, errors, objects, policy_obj)
    assert policy is not None
    read: dict[str, ServiceSettings] = {}
    # oldest first (then by name, within a timestamp's second): a cross-field error (min_replicas past the inventory)
    # or a Deployment claimed twice falls on the newcomer, not on a service that was running before it came
    for key, obj in sorted(objects.items(), key=lambda kv: (str(kv[1]["metadata"].get("creationTimestamp")),
                                                            kv[0])):
        ns, name = key.split("/", 1)
        try:
            read[key] = service_settings(ns, name, resource_spec(obj))
            if deployments is not None:
                deployments.check(read[key])
        except ConfigError as exc:
            errors[key] = exc
            read.pop(key, None)
        except Exception as exc:  # the API failed on a Deployment: this service waits, the others go on
            errors[key] = ConfigError("spec.variants", str(exc))
            read.pop(key, None)
    left_out: dict[str, ConfigError] = {}
    while True:  # a cross-field error names its service: that one is left out, and the others' claims read again
        services, claimed = _claims({k: v for k, v in read.items() if k not in left_out})
        try:
            domains = {} if plans is None else plans.domain_gpus({d.name: d.node_selector for d in policy.domains})
            settings = settings_of(policy, list(services.values()), state_dir, domains)
            errors.update(claimed | left_out)
            return Resources(settings, policy, errors, objects, policy_obj)
        except ConfigError as exc:
            named = service_field(exc.where)
            if named is None or named[0] not in services:
                errors.update(claimed | left_out)
                errors["policy"] = ConfigError(policy_field(exc.where), exc.reason)
                return Resources(None, policy, errors, objects, policy_obj)
            left_out[named[0]] = ConfigError(named[1], exc.reason)
        except Exception as exc:
            errors.update(claimed | left_out)
            errors["policy"] = unchecked("spec", exc)
            return Resources(None, policy, errors, objects, policy_obj)


def _claims(read: dict[str, ServiceSettings]) -> tuple[dict[str, ServiceSettings], dict[str, ConfigError]]:
    """The services whose Deployments no service before them (oldest first) claims, and why each other is refused.
    Run again once a service is left out, its Deployments free: refused later for another field, it had held them,
    and the one it blocked was refused too, no service driving the Deployment."""
    owners: dict[tuple[str, str], str] = {}
    services: dict[str, ServiceSettings] = {}
    refused: dict[str, ConfigError] = {}
    for key, svc in read.items():
        ns = key.split("/", 1)[0]
        taken = next(((i, v.deployment, owners[ns, v.deployment]) for i, v in enumerate(svc.variants)
                      if (ns, v.deployment) in owners), None)
        if taken is not None:
            i, deployment, other = taken
            refused[key] = ConfigError(f"spec.variants[{i}].deployment", f"{ns}/{deployment} is already LLMService "
                                       f"{other}'s")
            continue
        owners.update(((ns, v.deployment), key) for v in svc.variants)
        services[key] = svc
    return services, refused
