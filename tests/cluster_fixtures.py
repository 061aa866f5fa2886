"""A small cluster on the Kubernetes API emulator: the CRDs from deploy/, one GPU node with its agent on a fake
`pynvml`, a namespace of vLLM Deployments and their pods, and the resources the operator acts on."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fake_pynvml import FakeGpu, FakeNvml
from kube_emulator import KubeEmulator, TokenUser

from actuators.nvml import NvmlDevices
from controller.cluster.agent import NodeAgent
from controller.cluster.plan_server import AUDIENCE, PlanServer, TokenReviewer
from controller.cluster.plan_signing import PlanKeys
from controller.cluster.resources import GROUP, PLANS, SERVICES, VERSION

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "deploy" / "kubernetes" / "base" / "crds.yaml"
NODE, NS = "gpu-a", "llm"
AGENT = "system:serviceaccount:wattscale:wattscale-agent"
"""The node agents' ServiceAccount, as a username (deploy/kubernetes/base/agent-rbac.yaml)."""
PLAN_KEY = Ed25519PrivateKey.generate()
"""The operator's plan key in these tests; its agents hold its public half (`plan_keys`)."""


def key_files(folder: Path, key: Ed25519PrivateKey = PLAN_KEY) -> tuple[str, str]:
    """`key` as the PEM files openssl writes (`genpkey -algorithm ed25519`, `pkey -pubout`): (private, public)."""
    private, public = folder / "plan.key", folder / "plan.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(private), str(public)


def plan_keys(folder: Path, *keys: Ed25519PrivateKey, name: str = "plan-verify.pub") -> PlanKeys:
    """An agent's plan keys: the public halves of `keys` (default PLAN_KEY's) in one file, as a rotation holds them."""
    path = folder / name
    path.write_bytes(b"".join(k.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)
                              for k in keys or (PLAN_KEY,)))
    return PlanKeys(str(path))


@dataclass(frozen=True)
class Link:
    """How an agent reaches the operator's plan endpoint: its port on loopback and the agent's token file."""

    port: int
    token_file: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def agent_token(emu: KubeEmulator, path: Path, node: str | None = NODE, username: str = AGENT,
                audiences: tuple[str, ...] = (AUDIENCE,)) -> str:
    """A pod's projected token (as the kubelet writes it) for `username` on `node`; returns its file."""
    path.write_text(emu.issue(TokenUser(username, audiences, node)))
    return str(path)


@contextmanager
def ready_service(ports: list[int]) -> Iterator[int]:
    """A loopback stand-in for the operator's Service (yields its port): each connection goes to the first of
    `ports` whose /readyz answers 200, as kube-proxy routes only to ready endpoints; closed where none is.
    One request per connection (the plan endpoint closes each), served in turn, every socket timed out."""
    import urllib.request

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def ready(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1.0) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def forward(conn: socket.socket) -> None:
        conn.settimeout(2.0)
        request = b""
        while b"\r\n\r\n" not in request and len(request) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        port = next((p for p in ports if ready(p)), None)
        if port is None:
            return
        with socket.create_connection(("127.0.0.1", port), timeout=2.0) as up:
            up.sendall(request)
            while chunk := up.recv(65536):
                conn.sendall(chunk)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn = listener.accept()[0]
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                forward(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5.0)
        listener.close()


@contextmanager
def plan_server(api: Any, port: int = 0) -> Iterator[PlanServer]:
    """The operator's plan endpoint on loopback, reviewing tokens through `api` (the operator's client)."""
    server = PlanServer(TokenReviewer(api, AGENT), PLAN_KEY, "127.0.0.1", port)
    try:
        yield server
    finally:
        server.close()


def policy(budget_w: float = 2400.0, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PowerPolicy", "metadata": {"name": "default"},
            "spec": {**spec, "power": {"budget_w": budget_w, "headroom": 0.03}, "node_selector": {"gpu": "h100"},
                     "accelerators": [{"name": "H100-SXM", "count": 4}], "plan_ttl_s": 5.0,
                     "daemon": {"fast_interval_s": 0.2, "slow_interval_s": 1.0},
                     "optimizer": {"time_limit_s": 0.5},
                     "stability": {"cooldown_s": 0.0, "confirm_cycles": 1, "max_cap_step_w": 1000.0},
                     "telemetry": {"timeout_s": 0.5}}}


def service(name: str, deployment: str, accelerator: str = "H100-SXM", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LLMService", "metadata": {"name": name, "namespace": NS},
            "spec": {"model": "meta-llama/Llama-3.1-8B-Instruct", "ttft_ms": 500, "itl_ms": 50, "min_replicas": 2,
                     "max_replicas": 4, "variants": [{"accelerator": accelerator, "deployment": deployment}],
                     **spec}}


def deployment(name: str, app: str, replicas: int, max_num_seqs: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
                "name": name, "namespace": NS, "labels": {"wattscale.dev/managed": "true"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
                     "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": [
                         {"name": "vllm", "image": "vllm/vllm-openai:v0.8.5",
                          "args": ["--model", "m", "--max-num-seqs", str(max_num_seqs)]}]}}}}


def pod(name: str, app: str, gpus: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
            "spec": {"nodeName": NODE, "containers": [{"name": "vllm", "resources": {"limits": {
                "nvidia.com/gpu": str(gpus)}}}]}, "status": {"phase": "Running"}}


def start(emu: KubeEmulator) -> None:
    """CRDs, the node, one vLLM Deployment with two one-GPU pods (the other GPUs idle)."""
    for crd in yaml.safe_load_all(CRDS.read_text()):
        emu.put("apiextensions.k8s.io", "customresourcedefinitions", crd)
    emu.put("", "nodes", {"metadata": {"name": NODE, "labels": {"gpu": "h100", "rack": "r1"}}})
    emu.put("apps", "deployments", deployment("vllm-chat", "chat", 0, 100))
    for k in range(2):
        emu.put("", "pods", pod(f"vllm-chat-{k}", "chat", 1))


def granted(who: str) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) the deploy/ RBAC grants the operator or the agent, discovery included."""
    out = {("", "", "discovery")}
    for doc in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "base" / f"{who}-rbac.yaml").read_text()):
        if doc["kind"] in ("ClusterRole", "Role"):
            out |= {(g, r, v) for rule in doc["rules"] for g in rule["apiGroups"] for r in rule["resources"]
                    for v in rule["verbs"]}
    return out


def until(check: Callable[[], Any], timeout_s: float = 15.0, what: str = "") -> Any:
    """Poll until `check` returns something truthy (bounded)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


@contextmanager
def running_agent(client: Any, nvml: FakeNvml, link: Link, interval_s: float = 0.1) -> Iterator[NodeAgent]:
    """The node agent stepped in a thread of its own on the fake NVML, asking `link` for its plan; its limits kept
    on exit, as the agent keeps them."""
    keys = plan_keys(Path(link.token_file).parent)
    agent = NodeAgent(NODE, NvmlDevices(nvml), client, link.url, link.token_file, keys, safe_cap_share=0.6,
                      default_ttl_s=5.0, timeout_s=1.0)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            agent.step(time.monotonic())
            stop.wait(interval_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        stop.set()
        thread.join(5.0)
        agent.close()


def gpus(n: int = 4) -> FakeNvml:
    return FakeNvml([FakeGpu(demand_mw=300_000) for _ in range(n)])


def plan(emu: KubeEmulator) -> dict[str, Any] | None:
    return emu.get(GROUP, PLANS, NODE)


def status_of(emu: KubeEmulator, name: str) -> dict[str, Any]:
    obj = emu.get(GROUP, SERVICES, name, NS) or {}
    return dict(obj.get("status") or {})


