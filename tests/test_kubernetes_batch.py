"""`--max-num-seqs` through a Deployment's args, against the API emulator acting as a Deployment controller:
a patch reads as rolling until the rollout is complete as `kubectl rollout status` reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_fixtures import NS, deployment, until
from kube_emulator import KubeEmulator

from actuators import BatchInForce, PermanentActuatorError, TransientActuatorError
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


def sizer_on(emu: KubeEmulator, tmp_path: Path, *names: str) -> KubernetesBatchSizer:
    """A sizer of service chat over the Deployments `names` (one per variant), each at max batch 64."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(emu.kubeconfig()))
    for name in names:
        emu.put("apps", "deployments", deployment(name, name, 2, 64))
    return KubernetesBatchSizer(api_client(str(kubeconfig)), {"chat": tuple(DeploymentRef(NS, n) for n in names)},
                                {"chat": 64})


def args_of(emu: KubeEmulator, name: str) -> list[str]:
    return list((emu.get("apps", "deployments", name, NS) or {})["spec"]["template"]["spec"]["containers"][0]["args"])


def stall(emu: KubeEmulator, name: str) -> None:
    """The Deployment controller gives up on the rollout in flight (progressDeadlineSeconds passed)."""
    emu.patch("apps", "deployments", name, {"status": {"conditions": [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": 'ReplicaSet "x" has timed out progressing.'}]}}, NS)


def stalled_at_256(emu: KubeEmulator, tmp_path: Path) -> KubernetesBatchSizer:
    """The sizer of vllm-chat (at 64), whose rollout to 256 its controller gave up on."""
    sizer = sizer_on(emu, tmp_path, "vllm-chat")
    sizer.set_max_batch("chat", 256)
    stall(emu, "vllm-chat")
    assert sizer.get_max_batch("chat").mixed
    return sizer


def generation(emu: KubeEmulator, name: str) -> int:
    return int((emu.get("apps", "deployments", name, NS) or {})["metadata"]["generation"])


def test_a_rollout_its_controller_gives_up_on_is_put_back_behind_the_guards_and_its_value_refused(
        tmp_path: Path) -> None:
    """New pods that never become ready (a max batch too large for the GPU's memory): the rollout read as rolling
    for ever, every later change held, and a plan going back asked nothing. Once the controller reports
    ProgressDeadlineExceeded it reads as mixed at the value it rolled from, and a read writes nothing (the put-back
    goes through `set_max_batch`, behind the operator's Lease and consent guards). Asked the stalled value again,
    every Deployment at it, the sibling whose rollout finished too, is put back and the change fails for good."""
    emu = KubeEmulator(watch_s=2.0, rollout_s=3600.0)  # the new pods never become ready
    try:
        sizer = sizer_on(emu, tmp_path, "chat-h100", "chat-l40s")
        sizer.set_max_batch("chat", 256)
        assert sizer.get_max_batch("chat") == BatchInForce(64, 256)
        sizer.apps.patch_namespaced_deployment_scale("chat-h100", NS, {"spec": {"replicas": 3}})  # the operator's
        assert sizer.get_max_batch("chat") == BatchInForce(64, 256)  # a change of replicas leaves the rollout its own
        emu.patch("apps", "deployments", "chat-l40s", {"status": {"observedGeneration": generation(emu, "chat-l40s"),
                                                                  "updatedReplicas": 2, "availableReplicas": 2,
                                                                  "replicas": 2}}, NS)  # no pods to wait for
        stall(emu, "chat-h100")
        before = generation(emu, "chat-h100"), generation(emu, "chat-l40s")
        for _ in range(3):
            assert sizer.get_max_batch("chat") == BatchInForce(64, None, True, True)
        assert (generation(emu, "chat-h100"), generation(emu, "chat-l40s")) == before  # a read wrote nothing
        refused = r'^chat: the rollout to --max-num-seqs 256 made no progress \(ReplicaSet "x" has timed out '
        with pytest.raises(PermanentActuatorError, match=refused + r"progressing\.\); put back$"):
            sizer.set_max_batch("chat", 256)
        assert args_of(emu, "chat-h100")[-1] == "64" and args_of(emu, "chat-l40s")[-1] == "64"
    finally:
        emu.close()


def test_another_value_replaces_a_stalled_rollout_and_a_change_never_made_is_never_put_back(tmp_path: Path) -> None:
    """A stall asked another value goes to it at once. A rollout from a Deployment with no flag, stalled, is put
    back to no flag (it read as rolling for ever: the value it rolled from was recorded as nothing). And once
    someone else changes the template (an image) after a change of the sizer's had finished, a stall is theirs:
    it had put back the finished 128 to 64 and refused every later change."""
    emu = KubeEmulator(watch_s=2.0, rollout_s=3600.0)
    try:
        sizer = stalled_at_256(emu, tmp_path)
        sizer.set_max_batch("chat", 128)
        assert args_of(emu, "vllm-chat")[-1] == "128" and sizer.get_max_batch("chat") == BatchInForce(64, 128)
        emu.patch("apps", "deployments", "vllm-chat", {"status": {"observedGeneration": generation(emu, "vllm-chat"),
                                                                  "updatedReplicas": 2, "availableReplicas": 2,
                                                                  "replicas": 2}}, NS)
        assert sizer.get_max_batch("chat") == BatchInForce(128)
        sizer.apps.patch_namespaced_deployment(  # through the API, its Deployment controller observing it
            "vllm-chat", NS, {"spec": {"template": {"spec": {"containers": [
                {"name": "vllm", "image": "vllm/vllm-openai:broken"}]}}}},
            _content_type="application/strategic-merge-patch+json")
        stall(emu, "vllm-chat")
        assert sizer.get_max_batch("chat") == BatchInForce(128, 128)  # theirs: rolling, not put back
        sizer.set_max_batch("chat", 128)
        assert args_of(emu, "vllm-chat")[-1] == "128"
        bare = deployment("vllm-bare", "bare", 2, 64)
        bare["spec"]["template"]["spec"]["containers"][0]["args"] = ["--model", "m"]
        emu.put("apps", "deployments", bare)
        plain = KubernetesBatchSizer(sizer.apps.api_client, {"bare": (DeploymentRef(NS, "vllm-bare"),)}, {"bare": 64})
        plain.set_max_batch("bare", 512)
        stall(emu, "vllm-bare")
        assert plain.get_max_batch("bare").mixed
        with pytest.raises(PermanentActuatorError, match="512 made no progress"):
            plain.set_max_batch("bare", 512)
        assert args_of(emu, "vllm-bare") == ["--model", "m"]
    finally:
        emu.close()


def test_deployments_a_change_reached_only_in_part_read_as_mixed_until_asked_again(tmp_path: Path) -> None:
    """A cut to 32 whose patch of the second variant's Deployment failed (409) read back as the least value, 32:
    the plan's own, so it was never asked again and the second variant would start at 64. It reads as mixed, and
    the enforcer asks again; the second Deployment is patched, the first left as it is."""
    from prometheus_client import CollectorRegistry

    from actuators.dryrun import DryRunReplicaScaler
    from controller.enforce import Enforcer
    from controller.optimizer import Assignment
    from controller.own_metrics import OwnMetrics

    emu = KubeEmulator(watch_s=2.0)
    try:
        sizer = sizer_on(emu, tmp_path, "chat-h100", "chat-l40s")
        emu.fail("PATCH", "/deployments/chat-l40s$", 409, times=1)
        with pytest.raises(TransientActuatorError, match=r"conflict"):
            sizer.set_max_batch("chat", 32)
        assert sizer.get_max_batch("chat") == BatchInForce(32, None, True)
        enforcer = Enforcer(DryRunReplicaScaler({("chat", "H100-SXM"): 2}), sizer, OwnMetrics(CollectorRegistry()))
        believed = Assignment("H100-SXM", 2, 32, 700.0)
        got, _ = enforcer.in_force("chat", ("H100-SXM",), believed, {})
        _, done = enforcer.apply(15.0, "chat", got, Assignment("H100-SXM", 2, 32, 700.0), serving=2)
        assert done.asked == ("max batch mixed -> 32",) and args_of(emu, "chat-l40s")[-1] == "32"
        assert sizer.get_max_batch("chat") == BatchInForce(32)
    finally:
        emu.close()


def test_a_put_back_that_stalls_too_is_the_clusters_problem_not_the_values(tmp_path: Path) -> None:
    """256 stalls and 64, the value that served, replaces it and stalls too (a quota, a node gone): asked 64 again,
    a patch of the same args had left the generation as it was, refused 64 for good and read as rolling for ever.
    Nothing is patched, and the change fails for a while, not for good."""
    emu = KubeEmulator(watch_s=2.0, rollout_s=3600.0)
    try:
        sizer = stalled_at_256(emu, tmp_path)
        sizer.set_max_batch("chat", 64)
        stall(emu, "vllm-chat")
        assert sizer.get_max_batch("chat") == BatchInForce(64, None, True, True)
        before = generation(emu, "vllm-chat")
        with pytest.raises(TransientActuatorError, match="the value that served before, made no progress"):
            sizer.set_max_batch("chat", 64)
        assert generation(emu, "vllm-chat") == before and args_of(emu, "vllm-chat")[-1] == "64"
    finally:
        emu.close()


def test_a_stalled_rollout_is_replaced_though_it_holds_a_replica_down(tmp_path: Path) -> None:
    """A stall holds a replica down (maxUnavailable): the enforcer's wait for every replica serving before a batch
    change held the repair for ever. A mixed read is asked again whatever serves."""
    from prometheus_client import CollectorRegistry

    from actuators.dryrun import DryRunReplicaScaler
    from controller.enforce import Enforcer
    from controller.optimizer import Assignment
    from controller.own_metrics import OwnMetrics

    emu = KubeEmulator(watch_s=2.0, rollout_s=3600.0)
    try:
        sizer = sizer_on(emu, tmp_path, "vllm-chat")
        sizer.set_max_batch("chat", 256)
        stall(emu, "vllm-chat")
        enforcer = Enforcer(DryRunReplicaScaler({("chat", "H100-SXM"): 2}), sizer, OwnMetrics(CollectorRegistry()))
        got, _ = enforcer.in_force("chat", ("H100-SXM",), Assignment("H100-SXM", 2, 64, 700.0), {})
        _, done = enforcer.apply(15.0, "chat", got, Assignment("H100-SXM", 2, 128, 700.0), serving=1)
        assert done.asked == ("max batch mixed -> 128",) and args_of(emu, "vllm-chat")[-1] == "128"
    finally:
        emu.close()


def test_a_put_back_stalled_still_moves_the_siblings_to_the_value_asked(tmp_path: Path) -> None:
    """The value that served stalls on one Deployment (the cluster's problem) while its sibling runs another: the
    sibling was never moved, the service read mixed for as long as the cluster's problem lasted."""
    emu = KubeEmulator(watch_s=2.0, rollout_s=3600.0)
    try:
        sizer = sizer_on(emu, tmp_path, "chat-h100", "chat-l40s")
        sizer.set_max_batch("chat", 256)
        stall(emu, "chat-h100")
        sizer.get_max_batch("chat")
        sizer.set_max_batch("chat", 64)  # replaces both rollouts, from 64
        emu.patch("apps", "deployments", "chat-l40s", {"spec": {"template": {"spec": {"containers": [
            {**(emu.get("apps", "deployments", "chat-l40s", NS) or {})["spec"]["template"]["spec"]["containers"][0],
             "args": ["--model", "m", "--max-num-seqs", "128"]}]}}}}, NS)  # someone moved it
        stall(emu, "chat-h100")
        assert sizer.get_max_batch("chat").stalled
        with pytest.raises(TransientActuatorError, match="the value that served before"):
            sizer.set_max_batch("chat", 64)
        assert args_of(emu, "chat-h100")[-1] == "64" and args_of(emu, "chat-l40s")[-1] == "64"
    finally:
        emu.close()
