"""deploy/kubernetes: the manifests hang together, the Role grants only what the backend calls, and the
ConfigMap's config is one the daemon accepts and wires to the cluster backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from controller.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"


def docs() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def test_role_grants_exactly_get_and_patch_on_the_scale_subresource() -> None:
    (rule,) = docs()["Role/wattscale-scaler"]["rules"]
    assert rule == {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch"]}


def test_binding_service_account_and_pod_agree() -> None:
    d = docs()
    binding = d["RoleBinding/wattscale-scaler"]
    assert binding["roleRef"]["name"] == "wattscale-scaler"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "wattscale", "namespace": "llm"}]
    pod = d["Deployment/wattscale"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "wattscale" and pod["securityContext"]["runAsNonRoot"]
    (container,) = pod["containers"]
    assert container["args"] == ["run", "--config", "/etc/wattscale/config.toml"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config"] == "/etc/wattscale"
    assert {v["name"]: v for v in pod["volumes"]}["config"]["configMap"]["name"] == "wattscale-config"
    assert {d[k]["metadata"]["namespace"] for k in d} == {"llm"}


def test_configmap_config_is_valid_and_names_the_cluster_backends(tmp_path: Path) -> None:
    cm = docs()["ConfigMap/wattscale-config"]
    path = tmp_path / "config.toml"
    path.write_text(cm["data"]["config.toml"])
    s = load_settings(path)
    assert (s.telemetry.gpu_source, s.telemetry.vllm_source, s.actuators.replicas) == ("dcgm", "prometheus",
                                                                                      "kubernetes")
    assert s.actuators.kubernetes_namespace == "llm" and not s.uses_sim
    assert {svc.deployment for svc in s.services} == {"vllm-chat", "vllm-summaries"}
    assert s.metrics.port == 9464


def test_autoscaler_examples_follow_the_desired_replicas_gauge() -> None:
    d = docs()
    keda = d["ScaledObject/vllm-chat"]["spec"]["triggers"][0]["metadata"]["query"]
    hpa = d["HorizontalPodAutoscaler/vllm-chat"]["spec"]["metrics"][0]["external"]["metric"]["name"]
    assert "wattscale_desired_replicas" in keda and hpa == "wattscale_desired_replicas"
