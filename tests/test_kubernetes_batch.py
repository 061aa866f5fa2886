"""`--max-num-seqs` through a Deployment's args, against the API emulator acting as a Deployment controller:
a patch reads as rolling until the rollout is complete as `kubectl rollout status` reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_fixtures import NS, deployment, until
from kube_emulator import KubeEmulator

from actuators import BatchInForce, PermanentActuatorError
from actuators.kubernetes import DeploymentRef, api_client
from actuators.kubernetes_batch import KubernetesBatchSizer, rolling


def rollout(want: int, **status: int) -> dict[str, Any]:
    """A Deployment at generation 2 that wants `want` replicas, with this status."""
    return {"metadata": {"generation": 2}, "spec": {"replicas": want}, "status": status}


@pytest.mark.parametrize(("d", "expected"), [
    (rollout(2, observedGeneration=2, replicas=2, availableReplicas=2), True),  # maxSurge 0: none updated yet
    (rollout(2, observedGeneration=1, replicas=2, updatedReplicas=2, availableReplicas=2), True),  # not seen
    (rollout(2, replicas=2, updatedReplicas=2, availableReplicas=2), True),  # observedGeneration omitted
    (rollout(2, observedGeneration=2, replicas=3, updatedReplicas=2, availableReplicas=2), True),  # an old pod
    (rollout(2, observedGeneration=2, replicas=2, updatedReplicas=2, availableReplicas=1), True),  # not ready
    (rollout(2, observedGeneration=2, replicas=2, updatedReplicas=2, availableReplicas=2), False),
    (rollout(0, observedGeneration=2), False),  # scaled to zero: every count omitted
])
def test_rolling_reads_the_status_as_kubectl_rollout_status_does(d: dict[str, Any], expected: bool) -> None:
    assert rolling(d) is expected


def test_a_patch_reads_as_rolling_until_the_deployment_controller_has_rolled_it_out(tmp_path: Path) -> None:
    """The emulator's Deployment controller takes 1 s: meanwhile the old value is the one in force, and the new
    one is reported as rolling out (the status says no replica is updated yet, by omitting the field)."""
    emu = KubeEmulator(watch_s=2.0, rollout_s=1.0)
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(emu.kubeconfig()))
        emu.put("apps", "deployments", deployment("vllm-chat", "chat", 2, 100))
        sizer = KubernetesBatchSizer(api_client(str(kubeconfig)), {"chat": (DeploymentRef(NS, "vllm-chat"),)},
                                     {"chat": 64})
        assert sizer.get_max_batch("chat") == BatchInForce(100, 100)  # its first rollout
        until(lambda: sizer.get_max_batch("chat") == BatchInForce(100), what="the first rollout done")
        sizer.set_max_batch("chat", 32)
        got = emu.get("apps", "deployments", "vllm-chat", NS) or {}
        assert got["metadata"]["generation"] == 2 and "updatedReplicas" not in got["status"]
        assert sizer.get_max_batch("chat") == BatchInForce(100, 32)
        until(lambda: sizer.get_max_batch("chat") == BatchInForce(32), what="the rollout done")
        assert rolling(emu.get("apps", "deployments", "vllm-chat", NS) or {}) is False
    finally:
        emu.close()


def test_a_deployment_without_a_container_is_one_services_permanent_error(tmp_path: Path) -> None:
    """Its IndexError had failed the operator's whole slow tick: no service was planned. Now the service whose
    Deployment it is gets an actuator error (logged, counted), and the others go on."""
    emu = KubeEmulator(watch_s=2.0, rollout_s=1.0)
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(emu.kubeconfig()))
        empty = deployment("vllm-chat", "chat", 2, 100)
        empty["spec"]["template"]["spec"]["containers"] = []
        emu.put("apps", "deployments", empty)
        sizer = KubernetesBatchSizer(api_client(str(kubeconfig)), {"chat": (DeploymentRef(NS, "vllm-chat"),)},
                                     {"chat": 64})
        for act in (lambda: sizer.get_max_batch("chat"), lambda: sizer.set_max_batch("chat", 32)):
            with pytest.raises(PermanentActuatorError, match=r"^chat \(llm/vllm-chat\): the Deployment has no "
                                                             r"container to run vLLM in$"):
                act()
    finally:
        emu.close()
