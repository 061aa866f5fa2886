"""One contract suite for every replica-scaling backend (dry-run, sim, kubernetes through the official client
against the Kubernetes API emulator), then the kubernetes error map: 404, 409, 500 and timeouts."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cluster_fixtures import NS, deployment
from conftest import small_sim_host
from kube_emulator import KubeEmulator
from kubernetes import client

from actuators import MissingTargetError, PermanentActuatorError, ReplicaScaler, TransientActuatorError
from actuators.dryrun import DryRunReplicaScaler
from actuators.kubernetes import DeploymentRef, KubernetesReplicaScaler
from actuators.sim import SimReplicaScaler
from controller.cli import main
from controller.config_loader import ConfigError
from controller.settings import load_settings
from controller.wiring import build_parts

H100 = "H100-SXM"


SCALE = r"/deployments/{}/scale$"


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    api = KubeEmulator(watch_s=1.0)
    api.put("apps", "deployments", deployment("chat", "chat", 2, 64))
    api.put("apps", "deployments", deployment("batch", "batch", 1, 64))
    try:
        yield api
    finally:
        api.close()


def replicas(api: KubeEmulator, name: str) -> int:
    return int((api.get("apps", "deployments", name, NS) or {})["spec"]["replicas"])


def _kube_scaler(api: KubeEmulator, timeout_s: float = 0.5) -> KubernetesReplicaScaler:
    cfg = client.Configuration()
    cfg.host = api.url
    cfg.retries = 0
    return KubernetesReplicaScaler(client.ApiClient(cfg), {("chat", H100): DeploymentRef("llm", "chat"),
                                                           ("batch", H100): DeploymentRef("llm", "batch")}, timeout_s)


def _sim_scaler() -> SimReplicaScaler:
    return SimReplicaScaler(small_sim_host())


@pytest.fixture(params=["dry-run", "sim", "kubernetes"])
def scaler(request: pytest.FixtureRequest, kube: KubeEmulator) -> ReplicaScaler:
    if request.param == "dry-run":
        return DryRunReplicaScaler({("chat", H100): 2, ("batch", H100): 1})
    if request.param == "sim":
        return _sim_scaler()
    return _kube_scaler(kube)


def test_reads_what_is_in_place(scaler: ReplicaScaler) -> None:
    assert scaler.get_replicas("chat", H100) == 2
    assert scaler.get_replicas("batch", H100) == 1


def test_set_returns_and_reads_back_the_new_count(scaler: ReplicaScaler) -> None:
    assert scaler.set_replicas("chat", H100, 4) == 4
    assert scaler.get_replicas("chat", H100) == 4
    assert scaler.set_replicas("chat", H100, 0) == 0
    assert scaler.get_replicas("batch", H100) == 1


def test_unknown_service_and_negative_counts_are_permanent(scaler: ReplicaScaler) -> None:
    with pytest.raises(PermanentActuatorError):
        scaler.get_replicas("nope", H100)
    with pytest.raises(PermanentActuatorError):
        scaler.set_replicas("chat", H100, -1)
    with pytest.raises(PermanentActuatorError):
        scaler.get_replicas("chat", "L40S")  # a variant it has no target for
    assert scaler.get_replicas("chat", H100) == 2


def test_kubernetes_missing_deployment_is_permanent(kube: KubeEmulator) -> None:
    kube.delete("apps", "deployments", "chat", NS)
    with pytest.raises(MissingTargetError, match="no such object"):  # gone, and what it ran with it
        _kube_scaler(kube).set_replicas("chat", H100, 3)


def test_kubernetes_a_refusal_is_permanent_but_no_missing_target(kube: KubeEmulator) -> None:
    """A 403 (a Role changed) leaves the Deployment and its pods running: the enforcer must not read it as gone (it
    took any permanent error for a deleted Deployment, so a move's old variant read as drained while it drew)."""
    kube.fail("GET", SCALE.format("chat"), 403)
    with pytest.raises(PermanentActuatorError, match="forbidden: the Role must allow get and patch on "
                       "deployments/scale") as err:
        _kube_scaler(kube).get_replicas("chat", H100)
    assert not isinstance(err.value, MissingTargetError)


@pytest.mark.parametrize(("status", "said"), [(403, "forbidden: the Role does not allow this request"),
                                               (404, "no such object"), (409, "conflict: the object changed meanwhile"),
                                               (422, "the API server refused the object as invalid")])
def test_an_api_error_on_any_resource_names_that_resource_not_a_deployments_scale(status: int, said: str) -> None:
    """The map is shared by the node plans, the agent's status reports and the resources' reads: a 422 the agents'
    admission policy answered read "the API server refused the replica count", a 403 named deployments/scale."""
    from kubernetes.client.exceptions import ApiException

    from actuators.kubernetes import translate

    err = translate(ApiException(status=status), "NodePowerPlan gpu-a status")
    assert str(err) == f"NodePowerPlan gpu-a status: {said} (HTTP {status})"


def test_kubernetes_no_answer_at_all_is_transient() -> None:
    """The client reports a TLS failure as an ApiException of status 0: it was permanent, so one hiccup stopped
    every try until the config changed."""
    from kubernetes.client.exceptions import ApiException

    from actuators.kubernetes import translate

    err = translate(ApiException(status=0, reason="SSLError(certificate verify failed)"), "ns/chat")
    assert isinstance(err, TransientActuatorError) and "HTTP 0 SSLError" in str(err)


def test_kubernetes_conflict_is_transient_and_a_retry_lands(kube: KubeEmulator) -> None:
    kube.fail("PATCH", SCALE.format("chat"), 409, times=1)
    scaler = _kube_scaler(kube)
    with pytest.raises(TransientActuatorError, match="conflict") as err:
        scaler.set_replicas("chat", H100, 3)
    assert err.value.delay_s > 0
    assert scaler.set_replicas("chat", H100, 3) == 3
    assert replicas(kube, "chat") == 3


def test_kubernetes_server_error_is_transient_and_changes_nothing(kube: KubeEmulator) -> None:
    kube.fail("PATCH", SCALE.format("chat"), 500)
    with pytest.raises(TransientActuatorError, match="HTTP 500"):
        _kube_scaler(kube).set_replicas("chat", H100, 5)
    assert replicas(kube, "chat") == 2


def test_kubernetes_timeout_is_transient(kube: KubeEmulator) -> None:
    kube.fail("GET", SCALE.format("batch"), delay_s=1.5)
    with pytest.raises(TransientActuatorError, match="too slow"):
        _kube_scaler(kube, timeout_s=0.3).get_replicas("batch", H100)


def test_kubernetes_unreachable_api_is_transient(kube: KubeEmulator) -> None:
    scaler = _kube_scaler(kube)
    kube.close()
    with pytest.raises(TransientActuatorError):
        scaler.get_replicas("chat", H100)


def test_kubernetes_calls_only_the_scale_subresource(kube: KubeEmulator) -> None:
    scaler = _kube_scaler(kube)
    scaler.get_replicas("chat", H100)
    scaler.set_replicas("batch", H100, 2)
    assert [(m, p.split("?")[0]) for _, m, p in kube.requests] == [
        ("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/chat/scale"),
        ("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/batch/scale")]


def test_config_with_a_kubeconfig_builds_the_kubernetes_backend(kube: KubeEmulator, tmp_path: Path) -> None:
    """`replicas = "kubernetes"` with a kubeconfig file: the daemon's wiring reaches the API it names."""
    kube.patch("apps", "deployments", "chat", {"spec": {"replicas": 3}}, NS)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
        f"clusters: [{{name: fake, cluster: {{server: '{kube.url}'}}}}]\n"
        "users: [{name: me, user: {token: t}}]\n"
        "contexts: [{name: fake, context: {cluster: fake, user: me}}]\n")
    text = (Path(__file__).resolve().parents[1] / "config" / "sim.toml").read_text()
    text = text.replace('replicas = "sim"', f'replicas = "kubernetes"\nkubernetes_namespace = "llm"\n'
                                            f'kubeconfig = "{kubeconfig}"\nkubernetes_timeout_s = 2.0')
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    parts = build_parts(load_settings(path))
    assert isinstance(parts.replicas, KubernetesReplicaScaler)
    assert parts.replicas.get_replicas("chat", H100) == 3
    with pytest.raises(PermanentActuatorError, match="no such object"):
        parts.replicas.get_replicas("code", H100)


def test_run_asks_a_credential_plugin_once(kube: KubeEmulator, tmp_path: Path,
                                           sim_config: Callable[..., Path]) -> None:
    """A kubeconfig's exec plugin (`aws eks get-token`, `gke-gcloud-auth-plugin`: a second or more each) ran twice
    as `run` started, once in its preflight and once to build the backend: the client preflight built is used."""
    calls = tmp_path / "calls"
    plugin = tmp_path / "plugin.py"
    plugin.write_text(f"import json\nwith open({str(calls)!r}, 'a') as f:\n    f.write('called\\n')\n"
                      "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential', "
                      "'status': {'token': 'emulator'}}))\n")
    config = kube.kubeconfig()
    config["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                                           "args": [str(plugin)], "interactiveMode": "Never"}}
    (tmp_path / "kubeconfig").write_text(json.dumps(config))  # JSON is YAML
    path = sim_config({'replicas = "sim"': f'replicas = "kubernetes"\nkubernetes_namespace = "{NS}"\n'
                                           f'kubeconfig = "{tmp_path / "kubeconfig"}"\nkubernetes_timeout_s = 2.0'})
    assert main(["run", "--config", str(path), "--duration", "1"]) == 0
    assert calls.read_text() == "called\n"


def test_a_missing_kubeconfig_refuses_the_config(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "config" / "sim.toml").read_text()
    path = tmp_path / "cluster.toml"
    path.write_text(text.replace('replicas = "sim"', f'replicas = "kubernetes"\nkubeconfig = "{tmp_path}/none"'))
    with pytest.raises(ConfigError) as err:
        build_parts(load_settings(path))
    assert err.value.where == "actuators.kubeconfig"


def test_kubernetes_a_body_the_client_cannot_read_is_transient(kube: KubeEmulator) -> None:
    """Every answer cut short (a proxy, a broken API server): the client hands back no Scale, and reading its
    replicas raised AttributeError out of the slow tick, a traceback each cycle."""
    s = _kube_scaler(kube)
    kube.fail("GET", "/scale$", body=b'{"kind": "Scale", "spec": {"repl')
    with pytest.raises(TransientActuatorError, match="an answer that is not JSON"):
        s.get_replicas("chat", H100)
    kube.faults.clear()
    kube.fail("GET", "/scale$", body=b'{"kind": "Scale", "status": {}}')
    with pytest.raises(TransientActuatorError, match="holds no replica count"):
        s.get_replicas("chat", H100)


@pytest.mark.parametrize("trickle_s", [0.0, 0.05])
def test_kubernetes_an_answer_that_trickles_or_runs_on_is_cut_at_its_deadline_and_bound(
        kube: KubeEmulator, trickle_s: float) -> None:
    """A Scale trickled a byte every 50 ms (the client's timeout bounds each read, not the answer: a byte every 2 s
    held the slow loop for good), or 3 MB long (parsed whole holding the interpreter's lock, 24 MB held the governor
    4.7 s): each is a transient failure within the call's timeout."""
    s = _kube_scaler(kube)
    s.timeout_s = 0.5
    scale = {"kind": "Scale", "spec": {"replicas": 2}, "pad": "x" * (60 if trickle_s else 3 << 20)}
    kube.fail("GET", "/scale$", body=json.dumps(scale).encode(), trickle_s=trickle_s)
    started = time.monotonic()
    with pytest.raises(TransientActuatorError, match="unreachable or too slow" if trickle_s else "past 2097152 bytes"):
        s.get_replicas("chat", H100)
    assert time.monotonic() - started < 0.5 + 0.3
    if trickle_s:  # a call cut short leaves no thread behind: one a call had piled up, 3,600 an hour at 1 Hz
        before = threading.active_count()
        for _ in range(5):
            with pytest.raises(TransientActuatorError, match="unreachable or too slow"):
                s.get_replicas("chat", H100)
        time.sleep(0.3)
        assert threading.active_count() <= before, threading.enumerate()


def test_kubernetes_an_answer_whole_but_late_is_a_transient_failure(kube: KubeEmulator,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline falls while the worker parses a whole answer (its connection back in the pool): shutting that
    answer raised urllib3's RuntimeError, which `translate` took for a refusal for good, and the service's scaling
    was given up until a reload (a review)."""
    import actuators.kubernetes_calls as calls

    s = _kube_scaler(kube)
    s.timeout_s = 0.3
    parse = calls.json.loads
    monkeypatch.setattr(calls.json, "loads", lambda body: (time.sleep(0.5), parse(body))[1])
    with pytest.raises(TransientActuatorError, match="unreachable or too slow"):
        s.get_replicas("chat", H100)
