"""Bad custom resources refused by the CRD schemas in deploy/ as the API server refuses them (through the
official client against the emulator: 422 Invalid, a cause naming each field), what a schema cannot say
admitted (and reported by the operator in status conditions: tests/test_cluster_operator.py), unknown fields
pruned, and a bad update or status write refused with the stored object left as it was."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_fixtures import NODE, NS, policy, service, start
from kube_emulator import KubeEmulator
from kube_http import ApiError
from kubernetes.client import CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from actuators.kubernetes import api_client
from controller.cluster.resources import GROUP, PLANS, POLICIES, SERVICES, VERSION


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[KubeEmulator, CustomObjectsApi]]:
    emu = KubeEmulator(watch_s=1.0)
    start(emu)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(emu.kubeconfig()))
    try:
        yield emu, CustomObjectsApi(api_client(str(kubeconfig)))
    finally:
        emu.close()


def refused(call: Any) -> list[dict[str, str]]:
    """The causes of a 422 Invalid answer (fails if the call was admitted)."""
    with pytest.raises(ApiException) as info:
        call()
    body = json.loads(info.value.body)
    assert info.value.status == 422 and body["reason"] == "Invalid", body
    return list(body["details"]["causes"])


def with_spec(obj: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {**obj, "spec": {**obj["spec"], **spec}}


def test_the_schema_refuses_what_it_can_express_naming_each_field(
        api: tuple[KubeEmulator, CustomObjectsApi]) -> None:
    emu, custom = api
    good = service("chat", "vllm-chat")
    variant = {"accelerator": "B300", "deployment": "vllm-chat"}
    bad_services = [
        ("spec.variants[0].accelerator", with_spec(good, variants=[variant])),
        ("spec.max_replicas", with_spec(good, max_replicas="four")),
        ("spec.max_replicas", with_spec(good, max_replicas=0)),  # the loader's 1..1024: admitted, then refused
        ("spec.min_replicas", with_spec(good, min_replicas=-1)),
        ("spec.priority", with_spec(good, priority=0)),
        ("spec.ttft_ms", with_spec(good, ttft_ms=0)),
        ("spec.itl_ms", with_spec(good, itl_ms=2e7)),  # past MAX_SLO_MS, as check_service_bounds says
        ("spec.in_tokens", with_spec(good, in_tokens=-5)),  # these four had no bounds in the schema (a trial)
        ("spec.out_tokens", with_spec(good, out_tokens=0)),
        ("spec.in_tokens_cv", with_spec(good, in_tokens_cv=1e300)),
        ("spec.out_tokens_cv", with_spec(good, out_tokens_cv=-1)),
        ("spec.statistic", with_spec(good, statistic="p50")),
        ("spec.variants", with_spec(good, variants=[])),
        ("spec.model", {**good, "spec": {k: v for k, v in good["spec"].items() if k != "model"}}),
        ("spec.model", with_spec(good, model="")),  # matched no vLLM's series, planned from its priors for good
        ("spec.model", with_spec(good, model="  ")),
        ("spec", {**good, "spec": "not an object"}),
    ]
    for field, body in bad_services:
        causes = refused(lambda body=body: custom.create_namespaced_custom_object(GROUP, VERSION, NS, SERVICES, body))
        assert [c["field"] for c in causes] == [field], causes
    accelerator = refused(lambda: custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, SERVICES, bad_services[0][1]))[0]
    assert accelerator["reason"] == "FieldValueNotSupported" and '"B300"' in accelerator["message"]
    assert refused(lambda: custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, SERVICES, bad_services[13][1]))[0]["reason"] == "FieldValueRequired"
    pp = policy()
    bad_policies = {"spec.power.budget_w": {**pp, "spec": {**pp["spec"], "power": {"budget_w": -1.0}}},
                    "spec.safe_cap_share": with_spec(pp, safe_cap_share=1.5),
                    "spec.plan_ttl_s": with_spec(pp, plan_ttl_s=1.0),
                    "spec.accelerators[0].name": with_spec(pp, accelerators=[{"name": "B300", "count": 4}]),
                    # a list the operator refuses with an item given twice: the schema says so (a set)
                    "spec.optimizer.batch_sizes[2]": with_spec(pp, optimizer={"batch_sizes": [16, 32, 16]})}
    for field, body in bad_policies.items():
        causes = refused(lambda body=body: custom.create_cluster_custom_object(GROUP, VERSION, POLICIES, body))
        assert [c["field"] for c in causes] == [field], causes
    assert emu.items(GROUP, SERVICES) == [] and emu.items(GROUP, POLICIES) == []
    # What only the fields together say is the operator's to report: the schema admits it.
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, SERVICES,
                                           with_spec(good, min_replicas=5, max_replicas=2))


def test_unknown_fields_are_pruned_and_a_bad_update_leaves_the_object_as_it_was(
        api: tuple[KubeEmulator, CustomObjectsApi]) -> None:
    emu, custom = api
    body = with_spec(service("chat", "vllm-chat"), max_replica=3)  # a typo: the server drops it silently
    stored = custom.create_namespaced_custom_object(GROUP, VERSION, NS, SERVICES, body)
    assert "max_replica" not in stored["spec"] and stored["spec"]["max_replicas"] == 4
    causes = refused(lambda: custom.patch_namespaced_custom_object(GROUP, VERSION, NS, SERVICES, "chat",
                                                                   {"spec": {"min_replicas": -1}}))
    assert [c["field"] for c in causes] == ["spec.min_replicas"]
    assert (emu.get(GROUP, SERVICES, "chat", NS) or {})["spec"] == stored["spec"]
    with pytest.raises(ApiError, match=r"spec\.max_replicas"):  # the tests' own writes are admitted alike
        emu.patch(GROUP, SERVICES, "chat", {"spec": {"max_replicas": 5000}}, NS)
    # The status subresource is validated too: an agent's status with a mode the schema does not know.
    emu.put(GROUP, PLANS, {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NodePowerPlan", "metadata": {"name": NODE},
                           "spec": {"sequence": 1}})
    causes = refused(lambda: custom.patch_cluster_custom_object_status(GROUP, VERSION, PLANS, NODE, {
        "status": {"beat": 1, "mode": "cruising"}}))
    assert [c["field"] for c in causes] == ["status.mode"]
    custom.patch_cluster_custom_object_status(GROUP, VERSION, PLANS, NODE, {"status": {"beat": 1, "mode": "following"}})
    assert (emu.get(GROUP, PLANS, NODE) or {})["status"] == {"beat": 1, "mode": "following"}
