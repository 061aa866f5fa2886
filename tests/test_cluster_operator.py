"""The operator (kopf, through kopf.testing.KopfRunner) and the node agent against the Kubernetes API emulator:
the resources in, the Deployments scaled and re-argued, status and events written, the caps applied on a fake
`pynvml`; bad resources reported by field; the policy's deletion restores defaults; a restart raises no cap;
a second operator stays passive until the Lease is free."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_fixtures import (
    NODE,
    NS,
    Link,
    agent_token,
    deployment,
    gpus,
    granted,
    key_files,
    plan,
    plan_server,
    pod,
    policy,
    ready_service,
    running_agent,
    service,
    start,
    status_of,
    until,
)
from conftest import ROOT, free_port
from kopf.testing import KopfRunner
from kube_emulator import KubeEmulator
from kube_http import PATH
from prometheus_client import CollectorRegistry

from actuators import ActuatorError
from actuators.kubernetes import DeploymentRef, api_client
from actuators.kubernetes_batch import read_flag
from controller.cluster import operator, snapshot
from controller.cluster.acting import SlowWorker
from controller.cluster.lease import RENEW_SHARE, Lease
from controller.cluster.nodes import NodePlans
from controller.cluster.operator import ClusterLoop
from controller.cluster.plan_spec import read_spec
from controller.cluster.resources import GROUP, PLANS, POLICIES, SERVICES
from controller.cluster.snapshot import Resources
from controller.cluster.status import Reporter, condition, since
from controller.config_loader import ConfigError
from controller.own_metrics import OwnMetrics

OPERATOR = ["run", "--standalone", "-A", "-m", "controller.cluster.handlers"]


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[KubeEmulator, Any]]:
    emu = KubeEmulator(watch_s=5.0)
    start(emu)
    kubeconfig, agent = tmp_path / "kubeconfig", tmp_path / "agent-kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(emu.kubeconfig("operator")))
    agent.write_text(yaml.safe_dump(emu.kubeconfig("agent")))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("WATTSCALE_NAMESPACE", "wattscale")
    monkeypatch.setenv("WATTSCALE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        yield emu, api_client(str(agent))
    finally:
        emu.close()


@pytest.fixture
def link(cluster: tuple[KubeEmulator, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Link:
    """The agent's way to the plan endpoint of the operator run in this process (WATTSCALE_PLAN_PORT), with
    the agent's projected token for it."""
    port = free_port()
    monkeypatch.setenv("WATTSCALE_PLAN_PORT", str(port))
    monkeypatch.setenv("WATTSCALE_PLAN_LISTEN", "127.0.0.1")
    monkeypatch.setenv("WATTSCALE_PLAN_KEY", key_files(tmp_path)[0])
    return Link(port, agent_token(cluster[0], tmp_path / "agent-token"))


@contextmanager
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """A loopback HTTP endpoint that accepts connections and never answers; closed (and so its clients
    answered with an error) on exit."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(2.0)
        for conn in accepted:
            conn.close()
        server.close()


def verb(method: str, path: str) -> tuple[str, str, str]:
    """(API group, resource[/subresource], RBAC verb) of one request; discovery as ("", "", "discovery")."""
    m = PATH.match(path.split("?")[0])
    if m is None:
        return ("", "", "discovery")
    resource = m["plural"] + (f"/{m['sub']}" if m["sub"] else "")
    if method == "GET":
        return (m["g"] or "", resource, "get" if m["name"] else "watch" if "watch=" in path else "list")
    return (m["g"] or "", resource, {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method])


def replicas(emu: KubeEmulator, name: str) -> int:
    return int((emu.get("apps", "deployments", name, NS) or {})["spec"]["replicas"])


def max_num_seqs(emu: KubeEmulator, name: str) -> int | None:
    d = emu.get("apps", "deployments", name, NS) or {}
    return read_flag(d["spec"]["template"]["spec"]["containers"][0]["args"])


def events_on(emu: KubeEmulator, name: str) -> list[dict[str, Any]]:
    return [e for e in emu.items("", "events") if e["involvedObject"]["name"] == name]


def test_operator_plans_scales_reargues_reports_and_the_agent_applies(cluster: tuple[KubeEmulator, Any],
                                                                      link: Link) -> None:
    emu, client = cluster
    nvml = gpus()
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    emu.put("apps", "deployments", deployment("vllm-l4", "l4", 0, 64))
    emu.put(GROUP, SERVICES, service("bad-acc", "vllm-l4", accelerator="L4"))  # in the catalogue, not the policy
    emu.put(GROUP, SERVICES, service("no-deploy", "vllm-missing"))
    emu.put(GROUP, SERVICES, service("bad-name", "Bad_Name!"))  # asked of the API, it read "no Deployment"
    emu.put(GROUP, SERVICES, service("min-max", "vllm-chat", min_replicas=5, max_replicas=2))
    theirs = deployment("vllm-theirs", "theirs", 1, 64)  # its owner has not let wattscale drive it
    del theirs["metadata"]["labels"]
    emu.put("apps", "deployments", theirs)
    emu.put(GROUP, SERVICES, service("not-ours", "vllm-theirs"))
    rack = {"name": "rack-1", "limit_w": 1000.0, "node_selector": {"rack": "r1"}}
    budget = {"safe_budget_w": 1800.0, "sources": [{"kind": "fixed", "name": "contract", "budget_w": 2200.0}]}
    emu.put(GROUP, POLICIES, policy(domains=[rack], budget=budget))
    with running_agent(client, nvml, link), KopfRunner(OPERATOR, timeout=20) as runner:
        until(lambda: replicas(emu, "vllm-chat") == 2, what="the scale subresource patched to min_replicas")
        until(lambda: max_num_seqs(emu, "vllm-chat") != 100, what="--max-num-seqs patched")
        st = until(lambda: status_of(emu, "chat").get("decision") and status_of(emu, "chat"), what="status")
        assert st["decision"]["replicas"] == 2 and st["decision"]["max_batch"] == max_num_seqs(emu, "vllm-chat")
        assert st["conditions"][0]["type"] == "Ready" and "predicted" in st
        until(lambda: events_on(emu, "chat"), what="a decision event")
        # The policy's budget sources lower the budget the loop plans for and the governor holds.
        until(lambda: (emu.get(GROUP, POLICIES, "default") or {}).get("status", {}).get("budget_w") == 2200.0,
              what="the budget source's budget in force")
        # Bad resources: each reported on itself, by field; the good one is still controlled.
        why = {n: until(lambda n=n: status_of(emu, n).get("conditions"), what=n)[0] for n in
               ("bad-acc", "no-deploy", "bad-name", "min-max", "not-ours")}
        assert all(c["status"] == "False" and c["reason"] == "Invalid" for c in why.values())
        assert why["bad-acc"]["message"] == "spec.variants: accelerator 'L4' is not among the accelerators ['H100-SXM']"
        assert why["no-deploy"]["message"] == "spec.variants[0].deployment: no Deployment llm/vllm-missing"
        assert why["bad-name"]["message"] == ("spec.variants[0].deployment: 'Bad_Name!' is no Deployment name "
                                              "(lowercase letters, digits, '-' and '.', at most 253 characters)")
        assert why["min-max"]["message"].startswith("spec.min_replicas: must be between 0 and max_replicas (2)")
        assert why["not-ours"]["message"] == ("spec.variants[0].deployment: Deployment llm/vllm-theirs has no label "
                                              "wattscale.dev/managed=true, by which its owner lets wattscale scale it "
                                              "and set its --max-num-seqs")
        assert replicas(emu, "vllm-theirs") == 1 and max_num_seqs(emu, "vllm-theirs") == 64  # never driven
        assert any(e["type"] == "Warning" and e["reason"] == "Invalid" for e in events_on(emu, "min-max"))
        # The plan reaches the node: the agent applies the operator's limits to the GPUs.
        p = until(lambda: (plan(emu) or {}).get("spec", {}).get("limits_w") and plan(emu), what="node limits")
        until(lambda: all(abs(g.limit_mw / 1000 - p["spec"]["limits_w"].get(str(i), g.limit_mw / 1000)) < 1.5
                          for i, g in enumerate(nvml.gpus)) and (plan(emu) or {})["status"]["mode"] == "following",
              what="the agent following the plan")
        # The rack's own limit holds on its node's GPUs though the site has room (1000 W less 3 % headroom).
        until(lambda: sum(g.limit_mw for g in nvml.gpus) / 1000 <= 970.0 + 1.0, what="the rack's limit held")
        # The GPUs no pod of an LLMService holds (held at their minimum) are named on the policy.
        until(lambda: (emu.get(GROUP, POLICIES, "default") or {}).get("status", {}).get("unowned_gpus")
              == ["gpu-a/2", "gpu-a/3"], what="the unowned GPUs reported")
        safe = (plan(emu) or {})["spec"]["safe_caps_w"]
        assert len(safe) == 4 and sum(safe.values()) <= 970.0 + 0.5  # the agent's fail-safe fits the rack too
        # Deleting the policy tells every agent to restore the default limits.
        emu.delete(GROUP, POLICIES, "default")
        until(lambda: (plan(emu) or {}).get("spec", {}).get("release"), what="the plan released")
        until(lambda: all(g.limit_mw == g.default_mw for g in nvml.gpus), what="default limits")
        until(lambda: emu.get(GROUP, POLICIES, "default") is None, what="the policy's finalizer off")
    assert runner.exit_code == 0, runner.output
    for who in ("operator", "agent"):  # every call each made, the deploy/ RBAC grants
        used = {verb(method, path) for token, method, path in emu.requests if token == who}
        assert used <= granted(who), f"{who} calls what its RBAC does not grant: {used - granted(who)}"
        assert {"operator": ("apps", "deployments/scale", "patch"),
                "agent": (GROUP, "nodepowerplans/status", "patch")}[who] in used
    reviews = {verb(method, path) for token, method, path in emu.requests if path.endswith("/tokenreviews")}
    assert reviews == {("authentication.k8s.io", "tokenreviews", "create")}  # the operator reviewed the agent
    assert not any(p.startswith(f"/apis/{GROUP}/") and m == "GET" for t, m, p in emu.requests if t == "agent")


@contextmanager
def operator_process(kubeconfig: Path, state_dir: Path, log: Path, duration_s: float,
                     plan_port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`wattscale operator` as a process of its own (a second replica), logging to `log`; it stops by itself
    after `duration_s`, and is killed on exit if it has not."""
    argv = [sys.executable, "-m", "controller.cli", "operator", "--kubeconfig", str(kubeconfig), "--namespace",
            "wattscale", "--state-dir", str(state_dir), "--metrics-port", "0", "--duration", str(duration_s),
            "--plan-port", str(plan_port), "--plan-signing-key", key_files(log.parent)[0]]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5.0)


def writes(emu: KubeEmulator, who: str, since: int = 0) -> list[tuple[str, str, str]]:
    """(API group, resource, verb) of every write `who` made after its first `since` requests."""
    mine = [(method, path) for token, method, path in emu.requests if token == who][since:]
    return [verb(method, path) for method, path in mine if method != "GET"]


def raised(node_plan: dict[str, Any] | None, before_mw: list[int]) -> dict[str, float]:
    """The GPUs a plan's limits put more than 1 W above the limits in force before."""
    limits = (node_plan or {}).get("spec", {}).get("limits_w") or {}
    assert len(limits) == len(before_mw), limits
    return {i: w for i, w in limits.items() if w > before_mw[int(i)] / 1000 + 1.0}


def following_plan(emu: KubeEmulator) -> bool:
    """Whether the agent reports the plan's current sequence, following: it reached the plan's writer."""
    p = plan(emu) or {}
    return bool(p.get("status", {}).get("mode") == "following"
                and p["status"].get("plan_sequence") == p.get("spec", {}).get("sequence"))


def lease_holder(emu: KubeEmulator) -> str:
    lease = emu.get("coordination.k8s.io", "leases", "wattscale-operator", "wattscale") or {}
    return str(lease.get("spec", {}).get("holderIdentity") or "")


def test_a_second_operator_stays_passive_takes_over_and_no_restart_raises_a_cap(
        cluster: tuple[KubeEmulator, Any], link: Link, tmp_path: Path) -> None:
    """Two operators: kopf in this process leads; `wattscale operator` in a process of its own reads the Lease
    and writes nothing (no scale, no patch, no plan, no status) while the leader holds it; it takes over when
    the leader exits, and the first operator restarted takes over from it in turn: neither hand-over raises
    any GPU's limit above what it was."""
    emu, client = cluster
    nvml = gpus()
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    emu.put(GROUP, POLICIES, policy(budget_w=1600.0))
    kubeconfig = tmp_path / "standby-kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(emu.kubeconfig("standby")))
    log = tmp_path / "standby.log"
    standby_port = free_port()
    with ready_service([link.port, standby_port]) as port, running_agent(client, nvml, Link(port, link.token_file)), \
            operator_process(kubeconfig, tmp_path / "standby-state", log, 30.0, standby_port) as standby:
        with KopfRunner(OPERATOR, timeout=20) as first:
            until(lambda: status_of(emu, "chat").get("decision"), what="a plan")
            leader = lease_holder(emu)
            # the standby's operator up and passive: its loop has asked for the Lease twice (2 s apart)
            until(lambda: sum(t == "standby" and "/leases/" in p for t, _, p in emu.requests) >= 2, timeout_s=20.0,
                  what="the standby asking for the Lease")
            assert standby.poll() is None and lease_holder(emu) == leader
            passive = writes(emu, "standby")
            assert passive == [], f"the standby wrote while the leader held the Lease: {passive}"
            before = [g.limit_mw for g in nvml.gpus]
            sets_before = len(nvml.sets)
            seen = sum(t == "standby" for t, _, _ in emu.requests)
        assert first.exit_code == 0, first.output
        # the leader gave the Lease back on its way out: the standby takes it at its next step (2 s)
        until(lambda: lease_holder(emu) not in ("", leader), timeout_s=10.0, what="the standby taking the Lease")
        second = lease_holder(emu)
        until(lambda: (GROUP, "nodepowerplans", "patch") in writes(emu, "standby", seen), what="its plans")
        until(lambda: (emu.get(GROUP, POLICIES, "default") or {}).get("status", {}).get("leader") == second,
              what="the standby's status")
        until(lambda: following_plan(emu), what="the agent following the new leader's plan (the Service to it)")
        rises = [(i, mw) for i, mw in nvml.sets[sets_before:] if mw > before[i] + 1000]
        assert not rises, f"the take-over raised caps: {rises} over {before}"
        assert not raised(plan(emu), before), "the new leader's plan raises a cap"
        sequence = (plan(emu) or {})["spec"]["sequence"]
        standby.terminate()  # SIGTERM, as the kubelet stops a pod: it gives the Lease back
        assert standby.wait(15.0) == 0, log.read_text()[-3000:]
        assert "lease wattscale/wattscale-operator taken by" in log.read_text()
        sets_before = len(nvml.sets)
        with KopfRunner(OPERATOR, timeout=20) as restarted:
            until(lambda: lease_holder(emu) not in ("", second), timeout_s=10.0, what="a restarted leader")
            until(lambda: (plan(emu) or {})["spec"]["sequence"] > sequence, what="the restarted leader's plan")
            until(lambda: following_plan(emu), what="the agent following the restarted leader's plan")
        assert restarted.exit_code == 0, restarted.output
        rises = [(i, mw) for i, mw in nvml.sets[sets_before:] if mw > before[i] + 1000]
        assert not rises, f"a restart raised caps: {rises} over {before}"
        assert not raised(plan(emu), before), "the restarted leader's plan raises a cap"


def test_a_newcomer_that_overfills_the_inventory_is_refused_not_the_service_running_before_it(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path) -> None:
    """Another namespace's LLMService whose min_replicas fill the inventory made the running `llm/chat` Invalid
    ("spec.min_replicas: ... add up to 6"), a field chat never changed: services are now checked oldest first."""
    emu, _ = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    hog = service("hog", "vllm-hog", min_replicas=4)
    hog["metadata"]["namespace"] = "aaa"
    emu.put(GROUP, SERVICES, hog)
    emu.put(GROUP, POLICIES, policy())
    hog_deployment = deployment("vllm-hog", "hog", 0, 64)
    hog_deployment["metadata"]["namespace"] = "aaa"
    emu.put("apps", "deployments", hog_deployment)
    with emu.store.cond:  # created a minute apart (the API's timestamps have a second's resolution)
        emu.store.objects[GROUP, SERVICES, NS, "chat"]["metadata"]["creationTimestamp"] = "2026-12-01T10:00:00Z"
        emu.store.objects[GROUP, SERVICES, "aaa", "hog"]["metadata"]["creationTimestamp"] = "2026-12-01T10:01:00Z"
    loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "by-hand", "wattscale",
                       str(tmp_path / "state"))
    res = loop.read()
    assert res.settings is not None and [s.name for s in res.settings.services] == [f"{NS}/chat"]
    assert set(res.errors) == {"aaa/hog"} and res.errors["aaa/hog"].where == "spec.min_replicas", res.errors


@pytest.mark.parametrize(("sources", "field"), [
    ([{"kind": [], "budget_w": 2000.0}], "spec.budget.sources[0].kind"),
    ([{"kind": "schedule", "time_zone": "America", "default_budget_w": 2000.0}], "spec.budget.sources[0].time_zone"),
    ([{"kind": "fixed", "budget_w": 2000.0},
      {"kind": "electricitymaps", "name": "grid", "zone": "DE", "curve": [[100, 2400], [600, 1200]]}],
     "spec.budget.sources[1].token_env"),
    ([{"kind": "watttime", "region": "CAISO_NORTH", "curve": [[100, 2400], [600, 1200]]}],
     "spec.budget.sources[0].username_env"),
])
def test_a_policys_budget_source_past_its_checks_is_refused_by_field(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path, sources: list[dict[str, Any]], field: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`spec.budget` keeps unknown fields (the schema cannot say each source's): a source's `kind = []` (a
    TypeError) or a time zone that names a directory of zones (an OSError) failed every step with a traceback.
    A carbon API's key missing from the operator's environment: the policy ran Ready on its full budget, not the
    safe one, and only the log said the source never started (a new user's trial)."""
    for variable in ("ELECTRICITYMAPS_TOKEN", "WATTTIME_USERNAME", "WATTTIME_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    emu, _ = cluster
    bad = policy()
    bad["spec"]["budget"] = {"safe_budget_w": 1200.0, "sources": sources}
    emu.put(GROUP, POLICIES, bad)
    loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "by-hand", "wattscale",
                       str(tmp_path / "state"))
    res = loop.read()
    assert res.settings is None and res.errors["policy"].where == field, res.errors


def test_a_policy_failing_past_every_check_is_reported_not_raised(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu, _ = cluster
    emu.put(GROUP, POLICIES, policy())

    def unchecked(spec: Any) -> None:
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(snapshot, "policy_spec", unchecked)
    loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "by-hand", "wattscale",
                       str(tmp_path / "state"))
    res = loop.read()
    assert res.settings is None and str(res.errors["policy"]).startswith("spec: TypeError: \"unhashable type")


def test_a_service_refused_for_another_field_holds_no_deployment(cluster: tuple[KubeEmulator, Any],
                                                                  tmp_path: Path) -> None:
    """`bigdomain` (older by name within the second) names a domain the policy lacks, and `chat` the same Deployment:
    bigdomain claimed it before its domain was checked, so both were refused and no service drove vllm-chat. The
    claims are read again once a service is left out: chat takes it."""
    emu, _ = cluster
    odd = service("bigdomain", "vllm-chat")
    odd["spec"]["variants"][0]["domain"] = "rack-9"
    emu.put(GROUP, SERVICES, odd)
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    emu.put(GROUP, POLICIES, policy())
    loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "by-hand", "wattscale",
                       str(tmp_path / "state"))
    res = loop.read()
    assert res.settings is not None and [x.name for x in res.settings.services] == [f"{NS}/chat"]
    assert list(res.errors) == [f"{NS}/bigdomain"] and "rack-9" in str(res.errors[f"{NS}/bigdomain"])


def test_the_loop_stepped_by_hand_reports_a_bad_policy_and_keeps_the_last_good_settings(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path) -> None:
    """The operator's loop without kopf, stepped with explicit times: a policy edit that fails its checks is
    reported on the policy by field while the last good settings go on; a service on an accelerator outside
    the inventory is reported on itself, and so are services stored before the CRD's schema refused them."""
    emu, _ = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    emu.put(GROUP, SERVICES, service("on-l4", "vllm-l4", accelerator="L4"))
    emu.put(GROUP, SERVICES, service("twin", "vllm-chat"))
    emu.stored(GROUP, SERVICES, {**service("hostile", "vllm-chat"), "spec": "not an object"})
    emu.stored(GROUP, SERVICES, service("typo", "vllm-chat", max_replicas="four"))
    emu.put("apps", "deployments", deployment("vllm-l4", "l4", 0, 64))
    emu.put(GROUP, POLICIES, policy())
    loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "by-hand", "wattscale",
                       str(tmp_path / "state"))
    for k in range(12):
        loop.step(0.2 * k)
    assert loop.controller is not None and [s.name for s in loop.controller.settings.services] == [f"{NS}/chat"]
    # the slow ticks run in the loop's worker thread: their reports come when they end
    why = until(lambda: status_of(emu, "on-l4").get("conditions"), what="on-l4's report")[0]
    assert why["message"] == "spec.variants: accelerator 'L4' is not among the accelerators ['H100-SXM']"
    twin = until(lambda: status_of(emu, "twin").get("conditions"), what="twin's report")[0]
    assert twin["message"] == "spec.variants[0].deployment: llm/vllm-chat is already LLMService llm/chat's"
    hostile = until(lambda: status_of(emu, "hostile").get("conditions"), what="hostile's report")[0]
    assert hostile["message"] == "spec: must be an object, got str"
    typo = until(lambda: status_of(emu, "typo").get("conditions"), what="typo's report")[0]
    assert typo["message"] == "spec.max_replicas: must be an integer, got 'four'"
    emu.patch(GROUP, POLICIES, "default", {"spec": {"plan_ttl_s": 7.0}})  # the plans carry a TTL edit
    for k in range(12, 18):
        loop.step(0.2 * k)
    until(lambda: loop.step(3.6) and (plan(emu) or {})["spec"]["ttl_s"] == 7.0, what="the plan's new TTL")
    # fields good one by one, bad together (what a schema cannot say): a fast tick longer than the slow one
    emu.patch(GROUP, POLICIES, "default", {"spec": {"daemon": {"fast_interval_s": 2.0}}})
    for k in range(18, 24):
        loop.step(0.2 * k)
    got = until(lambda: [c for c in (emu.get(GROUP, POLICIES, "default") or {})["status"]["conditions"]
                         if c["status"] == "False"], what="the policy's error")[0]
    assert got["status"] == "False" and got["message"] == ("spec.daemon.slow_interval_s: must not be shorter "
                                                           "than fast_interval_s (1 s < 2 s)")
    assert loop.controller.settings.power.budget_w == 2400.0  # the last good policy holds
    assert loop.controller.governor.settings.budget_w == 2400.0
    # a queue model is the tuner's state: refused as a host's reload refuses it (it was taken without a word)
    emu.patch(GROUP, POLICIES, "default", {"spec": {"daemon": {"fast_interval_s": 0.2},
                                                    "optimizer": {"queue_model": "mm1k-batch"}}})
    ticks = iter(range(25, 1000))
    got = until(lambda: loop.step(0.2 * next(ticks)) and [
        c for c in (emu.get(GROUP, POLICIES, "default") or {})["status"]["conditions"]
        if c["message"].startswith("spec.optimizer.queue_model")], what="the queue model refused")[0]
    assert got["status"] == "False" and "changes with an operator restart" in got["message"]
    assert loop.controller.settings.optimizer.queue_model == "mm1k-cb"
    loop.stand_down(release=False, now=200.0)
    assert not (emu.get("coordination.k8s.io", "leases", "wattscale-operator", "wattscale") or {})["spec"].get(
        "holderIdentity")  # given back on a clean exit


def test_the_operator_command_runs_kopf_on_the_resources_and_stops_by_itself(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path) -> None:
    """`wattscale operator` as a process: it logs in through the kubeconfig, acts, and stops after --duration."""
    emu, _ = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    emu.put(GROUP, POLICIES, policy())
    argv = [sys.executable, "-m", "controller.cli", "operator", "--kubeconfig", str(tmp_path / "kubeconfig"),
            "--duration", "4", "--metrics-port", "0", "--plan-port", str(free_port()), "--plan-signing-key",
            key_files(tmp_path)[0], "--state-dir", str(tmp_path / "state"), "--namespace", "ops"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "decision: llm/chat" in done.stderr and replicas(emu, "vllm-chat") == 2
    assert "Handler '" not in done.stderr  # kopf's line per handler run, every event of every resource: noise
    lease = emu.get("coordination.k8s.io", "leases", "wattscale-operator", "ops") or {}
    assert lease and not lease["spec"].get("holderIdentity")  # given back on the way out


def test_kopf_retries_a_failing_api_for_minutes_not_seconds(cluster: tuple[KubeEmulator, Any]) -> None:
    """kopf's default retries stop after eight: some 54 s of HTTP 500 on the policies' watch ended `wattscale operator`
    with six tracebacks, a crash loop in its Deployment (a new user's trial). The operator's settings retry every 30 s
    after kopf's first eight delays, some 11 minutes in all; not for ever, which an RBAC mistake (a 403, retried alike)
    would have passed for a live operator."""
    import kopf

    from controller.cluster import handlers

    settings, memo = kopf.OperatorSettings(), kopf.Memo()
    handlers.configure(settings, memo)
    backoffs = list(settings.networking.error_backoffs)  # type: ignore[arg-type]
    assert backoffs[:8] == [1, 1, 2, 3, 5, 8, 13, 21] and set(backoffs[8:]) == {30.0}
    assert 600.0 <= sum(backoffs) <= 900.0


def test_a_slow_tick_blocked_on_prometheus_stops_neither_the_fast_tick_nor_the_plans_nor_the_lease(
        cluster: tuple[KubeEmulator, Any], link: Link, tmp_path: Path) -> None:
    """A Prometheus that never answers holds the slow tick for its timeout (4 s, four slow periods): meanwhile
    the fast step goes on every fast_interval_s, the node plan is renewed each quarter of its TTL (5 s; the
    agent keeps following it) and the Lease (3 s) is renewed."""
    emu, client = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    with silent_server() as (url, accepted), \
            plan_server(api_client(str(tmp_path / "kubeconfig")), link.port) as server, \
            running_agent(client, gpus(), link) as agent:
        body = policy()
        body["spec"].update(telemetry={"timeout_s": 4.0, "prometheus_url": url})
        emu.put(GROUP, POLICIES, body)
        loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "leader", "wattscale",
                           str(tmp_path / "state"), lease_s=3.0, server=server)
        t0 = time.monotonic()
        loop.step(0.0)
        assert loop.controller is not None
        steps, sequences, renewals, modes = [], set(), set(), set()
        while time.monotonic() - t0 < 5.0:  # the slow tick is due at 1 s and blocked until 5 s at least
            started = time.monotonic()
            assert loop.step(started - t0) == 0.2
            steps.append(time.monotonic() - started)
            if accepted:  # the slow tick is blocked on it
                sequences.add((plan(emu) or {})["spec"]["sequence"])
                lease = emu.get("coordination.k8s.io", "leases", "wattscale-operator", "wattscale") or {}
                renewals.add(lease["spec"]["renewTime"])
                modes.add(agent.mode)
            time.sleep(0.2)
        assert accepted, "the slow tick asked the silent Prometheus"
        assert max(steps) < 1.0, f"a fast step waited on the slow tick: {max(steps):.1f} s"
        assert len(sequences) >= 3, f"plans renewed {len(sequences)} times while the slow tick was blocked"
        assert len(renewals) >= 2 and loop.lease.held and loop.lease.valid()
        assert modes == {"following"}, modes
        loop.stand_down(release=False, now=time.monotonic() - t0)


def test_a_standby_clears_again_what_a_tick_in_flight_set_after_it_stood_down(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path) -> None:
    """Standing down clears the leader's gauges, but a slow tick or a budget step in flight (a lost Lease is often a
    slow API) set them again after: the standby clears them once more when those threads have ended."""
    loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "standby", "wattscale",
                       str(tmp_path / "state"))
    done = threading.Event()
    in_flight = threading.Thread(target=lambda: (done.wait(5.0), loop.metrics.budget.set(3000.0)), daemon=True)
    in_flight.start()
    loop.ending.append(in_flight)
    loop.metrics.stand_down()
    loop.quiet()  # the tick still runs: nothing to clear yet
    done.set()
    in_flight.join(5.0)
    assert loop.metrics.budget._value.get() == 3000.0  # set after the first clearing
    loop.quiet()
    assert math.isnan(loop.metrics.budget._value.get()) and loop.ending == []


def test_a_new_replica_gets_its_services_cap_within_seconds_not_a_slow_period(
        cluster: tuple[KubeEmulator, Any], link: Link, tmp_path: Path) -> None:
    """A pod scheduled onto an idle GPU: the GPU leaves its minimum limit for the service's cap within a few
    fast ticks, though the next slow tick is a minute away."""
    emu, client = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    body = policy()
    body["spec"].update(daemon={"fast_interval_s": 0.2, "slow_interval_s": 60.0}, safe_cap_share=0.5)
    emu.put(GROUP, POLICIES, body)
    with plan_server(api_client(str(tmp_path / "kubeconfig")), link.port) as server, \
            running_agent(client, gpus(), link):
        loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "leader", "wattscale",
                           str(tmp_path / "state"), server=server)
        t0 = time.monotonic()

        def limits() -> dict[str, float]:
            loop.step(time.monotonic() - t0)
            return dict((plan(emu) or {}).get("spec", {}).get("limits_w") or {})

        held = until(lambda: len(limits()) == 4 and limits(), what="limits on the four GPUs")
        assert held["2"] < held["0"] and held["3"] < held["0"], held  # idle: at their minimum
        assert (plan(emu) or {})["spec"]["safe_cap_share"] == 0.5  # the policy's, for the agent
        emu.put("", "pods", pod("vllm-chat-2", "chat", 1))
        until(lambda: limits()["2"] == limits()["0"], timeout_s=5.0, what="the new replica's GPU at the cap")
        assert loop.unowned == ["gpu-a/3"]
        loop.stand_down(release=False, now=time.monotonic() - t0)


def test_malformed_gpu_entries_in_an_agents_status_are_skipped_one_by_one_and_counted(
        cluster: tuple[KubeEmulator, Any]) -> None:
    """One agent's bad entries (a null limit, no uuid, no index, a text reading, not an object) cost only those
    GPUs; its good entry and the other node's GPUs are read. So does an entry whose UUID another lists (the fast
    loop keys GPUs by UUID: two samples of one had masked each other). Each bad entry of no GPU read before stands in
    as a GPU never read (limits unknown: counted at the most a GPU may draw; skipped, it had drawn uncounted for
    good), and departs once the entries read."""
    emu, client = cluster

    def gpu(index: Any, node: str = "a", **fields: Any) -> dict[str, Any]:
        return {"index": index, "uuid": f"GPU-{node}{index}", "name": "H100", "power_w": 300.0, "energy_j": 1.0,
                "limit_w": 700.0, "min_w": 200.0, "max_w": 700.0, **fields}

    # (and an index or watts past what a plan may state: the limit written back would make the agent refuse it)
    bad = [gpu(1, limit_w=None), {k: v for k, v in gpu(2).items() if k != "uuid"},
           {k: v for k, v in gpu(3).items() if k != "index"}, gpu(4, power_w="300"), "GPU 5", gpu(12345),
           gpu(6, max_w=1e6)]
    for node, entries in (("gpu-a", [gpu(0), *bad]), ("gpu-b", [gpu(0, "b"), gpu(1, "b"), gpu(2, uuid="GPU-a0")])):
        # the schema refuses the bad entries now: written by an older agent under an older schema
        emu.stored(GROUP, PLANS, {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NodePowerPlan", "metadata": {
            "name": node}, "spec": {"sequence": 1}, "status": {"beat": 1, "gpus": entries}})
    # a whole status written past the schema: that node reads no GPU (it failed every tick for the whole cluster)
    emu.stored(GROUP, PLANS, {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NodePowerPlan", "metadata": {
        "name": "gpu-c"}, "spec": {"sequence": 1}, "status": "garbage"})
    counted: list[str] = []
    plans = NodePlans(client, 60.0, 0.6, 10.0, on_bad=counted.append)
    got = plans.sample(0.0)
    assert sorted((plans.where[s.index], s.uuid) for s in got if not s.never_read) == [
        (("gpu-a", 0), "GPU-a0"), (("gpu-b", 0), "GPU-b0"), (("gpu-b", 1), "GPU-b1")]
    stand_ins = [f"gpu-a/unread-{j}" for j in range(7)] + ["gpu-b/unread-0"]
    assert sorted(s.uuid for s in got if s.never_read) == stand_ins
    assert all(math.isnan(s.max_limit_w) and s.power_w is None for s in got if s.never_read)
    assert "gpu-a/-1" not in plans.unowned()
    assert counted == ["gpu-a"] * 7 + ["gpu-b"]
    assert "uuid 'GPU-a0' is gpu-a's GPU 0's too" in plans.bad["gpu-b", 2]
    plans.sample(1.0)  # counted each time, logged once
    assert len(counted) == 16 and len(plans.bad) == 8
    emu.patch(GROUP, PLANS, "gpu-a", {"status": {"beat": 2, "gpus": [gpu(k) for k in range(8)]}})
    emu.patch(GROUP, PLANS, "gpu-b", {"status": {"beat": 2, "gpus": [gpu(0, "b"), gpu(1, "b")]}})
    assert len(plans.sample(2.0)) == 10 and plans.bad == {}  # mended: forgotten, so logged anew if bad again
    assert plans.departed() == frozenset(stand_ins)
    emu.delete(GROUP, PLANS, "gpu-a")  # written again past the schema: a bad entry at the end
    emu.stored(GROUP, PLANS, {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NodePowerPlan", "metadata": {
        "name": "gpu-a"}, "spec": {"sequence": 1}, "status": {"beat": 3, "gpus": [gpu(0), gpu(1, limit_w=None)]}})
    plans.sample(3.0)
    assert list(plans.bad) == [("gpu-a", 1)]
    emu.patch(GROUP, PLANS, "gpu-a", {"status": {"beat": 4, "gpus": [gpu(0)]}})
    assert len(plans.sample(4.0)) == 3 and plans.bad == {}  # the list got shorter: the entry past it too


def test_a_decision_held_back_cycle_after_cycle_posts_one_event_until_its_text_changes(
        cluster: tuple[KubeEmulator, Any]) -> None:
    emu, client = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    emu.put(GROUP, POLICIES, policy())
    res = Resources(None, None, {}, {f"{NS}/chat": emu.get(GROUP, SERVICES, "chat", NS) or {}},
                    emu.get(GROUP, POLICIES, "default") or {})

    def record(replicas: int) -> dict[str, Any]:
        shape = {"accelerator": "H100-SXM", "max_batch": 64, "cap_w": 500.0}
        return {"services": {f"{NS}/chat": {"planned": {**shape, "replicas": replicas}, "in_force": {
            **shape, "replicas": 1}, "short_rps": 0.0, "reason": "", "actuator_held": ["replicas: still rolling"]}}}

    reporter = Reporter(client, "wattscale", "me")
    for r in (3, 3, 3, 4, 4, 3):
        reporter.resources(res, record(r))
    texts = [e["message"] for e in events_on(emu, "chat") if e["reason"] == "Decision"]
    assert [t.split(" ")[1] for t in texts] == ["3xH100-SXM", "4xH100-SXM", "3xH100-SXM"], texts


def test_a_power_emergency_reads_on_the_policy_as_not_ready_with_the_draw(cluster: tuple[KubeEmulator, Any]) -> None:
    """A 600-W budget over GPUs whose lowest limits sum to 800 W: the log warned, the policy read Ready True Acting,
    and nothing on it said the draw. It reads Ready False, OverBudget, with the draw; an invalid policy says its field
    first."""
    emu, client = cluster
    emu.put(GROUP, POLICIES, policy())
    res = Resources(None, None, {}, {}, emu.get(GROUP, POLICIES, "default") or {})
    record = {"budget_w": 600.0, "predicted_w": 380.0, "draw_w": 812.5, "services": {},
              "degradation": {"emergency": True, "urgent": True, "gpus_held_below_plan": 4}}
    Reporter(client, "wattscale", "me").resources(res, record)
    status = (emu.get(GROUP, POLICIES, "default") or {})["status"]
    ready = status["conditions"][0]
    assert (ready["status"], ready["reason"], status["draw_w"]) == ("False", "OverBudget", 812.5)
    assert ready["message"] == ("power emergency: drawing 812.5 W over the 600-W budget's threshold, the governor "
                                "holds 4 GPUs below the plan's caps, every limit at its floor: the budget is below "
                                "what the GPUs draw at their lowest limits")
    res.errors["policy"] = ConfigError("spec.plan_ttl_s", "5 s must be at least three fast ticks (6 s)")
    Reporter(client, "wattscale", "me").resources(res, record)
    assert (emu.get(GROUP, POLICIES, "default") or {})["status"]["conditions"][0]["reason"] == "Invalid"


def test_a_status_or_event_write_that_fails_is_said_once_a_run_per_resource_translated(
        cluster: tuple[KubeEmulator, Any], caplog: pytest.LogCaptureFixture) -> None:
    """The policy's status refused (500) while the service's is written, Events forbidden (403): each said once in
    one line naming what the Role must allow, not the client's five-line exception at each other write's success."""
    emu, client = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    emu.put(GROUP, POLICIES, policy())
    res = Resources(None, None, {}, {f"{NS}/chat": emu.get(GROUP, SERVICES, "chat", NS) or {}},
                    emu.get(GROUP, POLICIES, "default") or {})
    emu.fail("PATCH", r"/powerpolicies/default/status$", 500)
    emu.fail("POST", r"/events$", 403)
    reporter = Reporter(client, "wattscale", "me")
    for r in (3, 4, 3, 4):
        shape = {"accelerator": "H100-SXM", "max_batch": 64, "cap_w": 500.0}
        reporter.resources(res, {"services": {f"{NS}/chat": {"planned": {**shape, "replicas": r}, "in_force": {
            **shape, "replicas": 1}, "short_rps": 0.0, "reason": ""}}})
    said = [r.getMessage() for r in caplog.records if "not written" in r.getMessage()]
    assert said == [
        "events on LLMService llm/chat not written: forbidden: the Role must allow create on events (HTTP 403)",
        "status of powerpolicies/default not written: API server error (HTTP 500 Internal Server Error)"], said
    assert (emu.get(GROUP, SERVICES, "chat", NS) or {})["status"]["conditions"]
    # chat deleted: what was said of it goes (the keys grew with every LLMService the operator ever saw), the
    # policy's refused write stays said once
    assert f"events on LLMService {NS}/chat" in reporter.failing and f"{NS}/chat" in reporter.posted
    reporter.resources(Resources(None, None, {}, {}, res.policy_obj), {"services": {}})
    assert reporter.failing == {"status of powerpolicies/default"} and not reporter.posted


@pytest.mark.parametrize("skew_s", [-3600.0, 3600.0])
def test_a_standby_times_the_leaders_lease_on_its_own_clock_whatever_the_leaders_clock_says(
        cluster: tuple[KubeEmulator, Any], skew_s: float) -> None:
    """The leader's clock an hour behind (or ahead): the standby waits while the Lease moves, and takes it
    one lease duration after it stops moving, by its own clock."""
    import datetime as dt

    emu, client = cluster

    def renew(k: int) -> None:
        stamp = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=skew_s + k)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease = {"metadata": {"name": "wattscale-operator", "namespace": "wattscale"}, "spec": {
            "holderIdentity": "leader", "leaseDurationSeconds": 1, "renewTime": stamp, "acquireTime": stamp}}
        if k == 0:
            emu.put("coordination.k8s.io", "leases", lease)
        else:
            emu.patch("coordination.k8s.io", "leases", "wattscale-operator", lease, "wattscale")

    standby = Lease(client, "wattscale", "wattscale-operator", "standby", duration_s=1.0)
    for k in range(6):  # the leader renews every 0.3 s for 1.5 s: never taken
        renew(k)
        stopped = time.monotonic()
        assert not standby.hold()
        time.sleep(0.3)
    until(standby.hold, timeout_s=5.0, what="the Lease taken once it stops moving")
    assert time.monotonic() - stopped >= 1.0


def test_pods_that_cannot_be_listed_keep_the_owners_known(cluster: tuple[KubeEmulator, Any], link: Link,
                                                            tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A Deployment that cannot be read (here: gone) between two owner refreshes: its GPUs keep their service
    (not dropped to the minimum as unowned); the failure is counted every refresh and logged once."""
    emu, client = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    body = policy()
    body["spec"]["daemon"] = {"fast_interval_s": 0.2, "slow_interval_s": 60.0}
    emu.put(GROUP, POLICIES, body)
    with plan_server(api_client(str(tmp_path / "kubeconfig")), link.port) as server, \
            running_agent(client, gpus(), link):
        loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "leader", "wattscale",
                           str(tmp_path / "state"), server=server)
        t0 = time.monotonic()
        until(lambda: loop.step(time.monotonic() - t0) and loop.plans is not None and len(loop.plans.index) == 4,
              what="the four GPUs read")
        until(lambda: loop.step(time.monotonic() - t0) and loop.unowned == ["gpu-a/2", "gpu-a/3"], what="owners")
        emu.delete("apps", "deployments", "vllm-chat", NS)
        failed = loop.metrics.errors.labels("pods")
        until(lambda: loop.step(time.monotonic() - t0) and failed._value.get() >= 2, timeout_s=8.0,
              what="two failed refreshes")
        assert loop.plans.owners == {("gpu-a", 0): (f"{NS}/chat", "H100-SXM"), ("gpu-a", 1): (f"{NS}/chat", "H100-SXM")}
        assert sum("pods of llm/vllm-chat" in r.getMessage() for r in caplog.records) == 1
        loop.stand_down(release=False, now=time.monotonic() - t0)


def test_a_leader_that_lost_the_lease_scales_and_patches_nothing(cluster: tuple[KubeEmulator, Any],
                                                                  tmp_path: Path) -> None:
    """The Lease taken by another while a slow tick is in flight: that tick's scale and patch calls are refused
    (the Deployment is left as the new leader wants it), and its plan endpoint is no longer ready."""
    from actuators import TransientActuatorError

    emu, _ = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    body = policy()
    body["spec"]["daemon"] = {"fast_interval_s": 0.2, "slow_interval_s": 60.0}
    emu.put(GROUP, POLICIES, body)
    with plan_server(api_client(str(tmp_path / "kubeconfig"))) as server:
        loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "old", "wattscale",
                           str(tmp_path / "state"), server=server)
        loop.step(0.0)
        c = loop.controller
        assert c is not None and server.ready()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        emu.patch("coordination.k8s.io", "leases", "wattscale-operator", {"spec": {
            "holderIdentity": "new", "renewTime": stamp, "acquireTime": stamp}}, "wattscale")
        loop.lease.renewed_at -= loop.lease.duration_s / RENEW_SHARE  # the next step wakes its renewal
        until(lambda: loop.step(0.2) and loop.controller is None, what="the leader standing down")
        assert not loop.lease.valid() and not server.ready()
    with pytest.raises(TransientActuatorError, match="no longer holds the Lease"):
        c.enforcer.replicas.set_replicas(f"{NS}/chat", "H100-SXM", 3)
    with pytest.raises(TransientActuatorError, match="no longer holds the Lease"):
        c.enforcer.batch.set_max_batch(f"{NS}/chat", 16)
    assert replicas(emu, "vllm-chat") == 0 and max_num_seqs(emu, "vllm-chat") == 100


def leading(emu: KubeEmulator, tmp_path: Path, lease_s: float) -> tuple[ClusterLoop, float]:
    """An operator leading one service (fast tick 0.2 s, slow 60 s) under a Lease of `lease_s`, and when it began."""
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    body = policy()
    body["spec"]["daemon"] = {"fast_interval_s": 0.2, "slow_interval_s": 60.0}
    emu.put(GROUP, POLICIES, body)
    loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "leader", "wattscale",
                       str(tmp_path / "state"), lease_s=lease_s)
    t0 = time.monotonic()
    loop.step(0.0)
    assert loop.controller is not None
    return loop, t0


def leading_each_second(emu: KubeEmulator, tmp_path: Path, timeout_s: float = 1.0) -> tuple[ClusterLoop, float]:
    """An operator over the services put so far, its slow tick each second (fast 0.2 s), stepped once, and when."""
    body = policy()
    body["spec"]["daemon"] = {"fast_interval_s": 0.2, "slow_interval_s": 1.0}
    emu.put(GROUP, POLICIES, body)
    loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "leader", "wattscale",
                       str(tmp_path / "state"))
    loop.timeout_s = timeout_s
    t0 = time.monotonic()
    loop.step(0.0)
    return loop, t0


@pytest.mark.parametrize("spec", [{"sequence": 3, "limits_w": {"abc": 300.0, "0": 400.0}}, {"sequence": "abc"},
                                  {"sequence": 1, "limits_w": [1.0, 2.0]}, "not an object"])
def test_a_plan_written_past_the_schema_is_read_as_empty_and_rewritten_whole(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture, spec: Any) -> None:
    """A plan with a key that is no GPU index (which the schema lets through), or stored before a schema, stopped
    every leading step (int('abc')) while the Lease was renewed: no standby took over, no plan was renewed. Now
    it is read as empty, logged once, and the next write replaces it whole (its stray keys nulled)."""
    emu, _ = cluster
    emu.stored(GROUP, PLANS, {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NodePowerPlan", "metadata": {"name": NODE},
                              "spec": spec})
    loop, t0 = leading(emu, tmp_path, lease_s=15.0)
    loop.step(time.monotonic() - t0)
    stored = (emu.get(GROUP, PLANS, NODE) or {})["spec"]
    written = read_spec(stored)  # readable now
    assert written.sequence >= 1 and set(stored.get("limits_w", {})) <= {"0", "1", "2", "3"}, stored
    assert sum(f"NodePowerPlan {NODE}: spec" in r.getMessage() for r in caplog.records) == 1
    loop.stand_down(release=False, now=time.monotonic() - t0)


def test_a_stalled_or_failing_lease_api_holds_no_fast_step_and_a_leader_stops_once_its_lease_runs_out(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path) -> None:
    """A Lease read answered 1.5 s late: the renewal waits in its own worker while every fast step returns at
    once and the leader keeps acting. Renewals that fail (500) keep it acting only while the Lease is valid (3 s from
    the start of the last renewal that succeeded, before any standby may take it), then it stands down."""
    emu, _ = cluster
    loop, t0 = leading(emu, tmp_path, lease_s=3.0)
    emu.fail("GET", "/leases/", delay_s=1.5, times=1)
    steps = []
    while time.monotonic() - t0 < 3.5:  # renewal due at 1 s, its read answered at 2.5 s
        started = time.monotonic()
        loop.step(started - t0)
        steps.append(time.monotonic() - started)
        assert loop.controller is not None, "the leader stood down while its Lease was valid"
        time.sleep(0.1)
    assert max(steps) < 1.0, f"a fast step waited on the Lease: {max(steps):.1f} s"
    until(lambda: loop.lease.renewed_at > t0 + 0.5 and loop.lease.valid(), what="the late renewal")
    emu.fail("GET", "/leases/", code=500)
    renewed = loop.lease.renewed_at
    until(lambda: loop.step(time.monotonic() - t0) and loop.controller is None, timeout_s=8.0,
          what="the leader standing down")
    assert time.monotonic() - renewed >= 3.0 and not loop.lease.valid()


def test_the_operator_command_refuses_missing_credentials_and_bad_ports_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As the agent does: exit 2 with one line, not kopf's login retried every minute behind a traceback."""
    from controller.cli import main

    common = ["operator", "--metrics-port", "0", "--plan-port", "0"]
    assert main([*common, "--kubeconfig", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"wattscale: operator: kubernetes: no usable credentials in {tmp_path / 'none'}, which "
                          "does not exist: ") and "Traceback" not in err  # the client's message names no file
    for text, said in (("- a\n- b\n", "list indices"), ("clusters: 5\n", "'int' object is not iterable"),
                       ("root:x:0:0:root:/root:/bin/bash\n", "'str' object")):  # YAML, but no kubeconfig: a traceback
        (tmp_path / "kc.yaml").write_text(text)
        for command in (common, ["agent", "--node", "n1", "--metrics-port", "0"]):
            assert main([*command, "--kubeconfig", str(tmp_path / "kc.yaml")]) == 2
            err = capsys.readouterr().err
            assert f"kubernetes: {tmp_path / 'kc.yaml'} is not a kubeconfig (TypeError: " in err and said in err, err
            assert len(err.strip().splitlines()) == 1
    os.mkfifo(tmp_path / "fifo")  # opened as it came, it blocked the operator for ever (`--duration` too)
    assert main([*common, "--kubeconfig", str(tmp_path / "fifo"), "--duration", "1"]) == 2
    assert f"kubernetes: kubeconfig {tmp_path / 'fifo'} is not a regular file" in capsys.readouterr().err
    assert main(["operator", "--metrics-listen", "not-an-ip", "--plan-port", "0"]) == 2
    assert "wattscale: --metrics-listen: not-an-ip is not an address of this host" in capsys.readouterr().err
    assert main(["operator", "--metrics-listen", "224.0.0.1", "--plan-port", "0"]) == 2  # bound, and unreachable
    assert ("wattscale: --metrics-listen: must be an address of this host, not a broadcast or multicast one, got "
            "'224.0.0.1'") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["operator", "--health-port", "99999"])
    assert "--health-port: must be in 0..65535, got '99999'" in capsys.readouterr().err
    port = free_port()  # one port for two endpoints: kopf's traceback when the second bound it
    assert main(["operator", "--metrics-port", str(port), "--plan-port", str(port), "--health-port", "0"]) == 2
    assert capsys.readouterr().err.strip() == (f"wattscale: --plan-port: {port} is also --metrics-port: each "
                                               "endpoint needs its own")


def test_the_operator_command_refuses_a_state_dir_it_cannot_write(cluster: tuple[KubeEmulator, Any], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A file as the state dir: it led, renewed the Lease and failed every step on FileExistsError."""
    from controller.cli import main

    (tmp_path / "a-file").write_text("")
    assert main(["operator", "--kubeconfig", str(tmp_path / "kubeconfig"), "--metrics-port", "0", "--plan-port",
                 "0", "--health-port", "0", "--state-dir", str(tmp_path / "a-file" / "state")]) == 2
    # (the emulator, in this process, may print a client's hang-up after it)
    first = capsys.readouterr().err.splitlines()[0]
    assert first == f"wattscale: --state-dir: {tmp_path / 'a-file'} is not a directory"


def test_a_renewal_in_flight_never_takes_back_a_lease_given_back_meanwhile(cluster: tuple[KubeEmulator, Any]) -> None:
    """The renewer's read answered late, after the Lease was given back (a clean exit): the renewal ends not
    held and leaves the holder empty, so a successor takes over at once rather than after the Lease's term."""
    emu, client = cluster
    lease = Lease(client, "wattscale", "wattscale-operator", "leader", duration_s=3.0)
    assert lease.hold()
    lease.renewed_at -= lease.duration_s / RENEW_SHARE  # due
    emu.fail("GET", "/leases/", delay_s=1.0, times=1)
    renewal = threading.Thread(target=lease.hold)
    renewal.start()
    time.sleep(0.3)
    emu.patch("coordination.k8s.io", "leases", "wattscale-operator", {"spec": {"holderIdentity": None}}, "wattscale")
    renewal.join(timeout=10.0)
    assert not lease.held and lease_holder(emu) == ""


def test_a_lease_deleted_under_its_holder_ends_its_term_so_only_one_operator_acts(
        cluster: tuple[KubeEmulator, Any]) -> None:
    emu, client = cluster
    leader = Lease(client, "wattscale", "wattscale-operator", "leader", duration_s=3.0)
    standby = Lease(client, "wattscale", "wattscale-operator", "standby", duration_s=3.0)
    assert leader.hold()
    emu.delete("coordination.k8s.io", "leases", "wattscale-operator", "wattscale")
    leader.renewed_at -= leader.duration_s / RENEW_SHARE  # due
    assert not leader.hold() and not leader.valid()
    assert standby.hold() and lease_holder(emu) == "standby"


def test_a_renewal_after_the_term_ran_out_does_not_take_the_lease_back(cluster: tuple[KubeEmulator, Any]) -> None:
    """A renewal that starts once the term ran out unrenewed (a step blocked on the API past it) ends the term,
    even where no standby took the Lease meanwhile: the fast step that finds it not valid stands down, whatever
    the renewer's thread did first."""
    emu, client = cluster
    leader = Lease(client, "wattscale", "wattscale-operator", "leader", duration_s=3.0)
    assert leader.hold()
    leader.renewed_at -= leader.duration_s  # the term ran out
    writes = len([1 for _, m, p in emu.requests if m == "PUT" and "/leases/" in p])
    assert not leader.hold() and not leader.held
    assert len([1 for _, m, p in emu.requests if m == "PUT" and "/leases/" in p]) == writes


def test_a_lease_that_runs_out_while_its_renewal_hangs_is_stood_down_from_without_a_request(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path) -> None:
    """The renewal's write hangs past the Lease's term: the fast step stands down at once (no give_back, which
    would wait on the same API), and the hung renewal, failing, does not make it lead again."""
    emu, _ = cluster
    loop, t0 = leading(emu, tmp_path, lease_s=2.0)
    emu.fail("PUT", "/leases/", code=500, delay_s=4.0)
    steps = []
    while loop.controller is not None and time.monotonic() - t0 < 6.0:
        started = time.monotonic()
        loop.step(started - t0)
        steps.append(time.monotonic() - started)
        time.sleep(0.1)
    assert loop.controller is None and not loop.lease.held and max(steps) < 1.0, (loop.controller, max(steps))


def test_a_first_leading_step_that_outlasts_the_lease_writes_no_plan(cluster: tuple[KubeEmulator, Any],
                                                                     tmp_path: Path) -> None:
    emu, _ = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    emu.put(GROUP, POLICIES, policy())
    loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "slow", "wattscale",
                       str(tmp_path / "state"), lease_s=1.0)
    emu.fail("GET", "/powerpolicies/", delay_s=1.5, times=1)  # reading the resources takes past the term
    loop.step(0.0)
    assert loop.controller is None
    assert not [p for _, m, p in emu.requests if m == "PATCH" and "/nodepowerplans/" in p]


def test_an_early_wake_of_the_slow_worker_is_no_overrun() -> None:
    """The fast step wakes the slow worker early where the governor is at its floors over budget: while the
    periodic wake-up is still due that is no overrun; a periodic one then is."""

    started, release, overruns = threading.Event(), threading.Event(), []
    worker = SlowWorker(lambda: (started.set(), release.wait(5.0)), lambda: overruns.append(1),
                        lambda exc, repeated: None)
    try:
        worker.wake()
        assert started.wait(5.0)  # the tick runs, holding the worker
        worker.wake()  # due again while it runs
        worker.wake(early=True)
        assert overruns == []
        worker.wake()
        assert overruns == [1]
    finally:
        worker.stop()
        release.set()


def test_a_slow_tick_failing_the_same_way_logs_its_traceback_once_a_run(caplog: pytest.LogCaptureFixture) -> None:
    """An API answering garbage failed every slow tick, and each printed the same traceback; each is counted, and
    a failure that returns after a good tick is logged again."""
    registry = CollectorRegistry()
    loop = ClusterLoop(None, "default", "by-hand", "wattscale", "/nonexistent", metrics=OwnMetrics(registry))
    outcomes = iter([AttributeError("'NoneType' object has no attribute 'replicas'")] * 3 + [None, KeyError("x")]
                    + [AttributeError("'NoneType' object has no attribute 'replicas'")] * 2)
    ran = threading.Event()

    def tick() -> None:
        exc = next(outcomes, None)
        ran.set()
        if exc is not None:
            raise exc

    worker = SlowWorker(tick, lambda: None, loop._slow_failed)
    try:
        for _ in range(7):
            ran.clear()
            worker.wake()
            assert ran.wait(5.0)
            time.sleep(0.05)  # the worker's bookkeeping after the tick
    finally:
        worker.stop()
    logged = [r.getMessage().split(" (")[0] for r in caplog.records if r.getMessage().startswith("slow tick failed")]
    assert logged == ["slow tick failed: AttributeError(\"'NoneType' object has no attribute 'replicas'\")",
                      "slow tick failed: KeyError('x')",
                      "slow tick failed: AttributeError(\"'NoneType' object has no attribute 'replicas'\")"], logged
    assert registry.get_sample_value("wattscale_errors_total", {"kind": "slow_tick"}) == 6.0


def test_a_deployment_read_that_fails_for_a_moment_keeps_its_service_planned(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 500 or a timeout on a service's Deployment as the slow tick checked it took the service out of the settings:
    out of the plan, its GPUs to their lowest limit, and its status "Invalid" for a slow period. It is kept as it
    is while the failure may pass (counted, logged once); a Deployment gone is still refused by field."""
    emu, _ = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat", min_replicas=1))
    emu.put(GROUP, SERVICES, service("summ", "vllm-summ", min_replicas=1, max_replicas=1))
    emu.put("apps", "deployments", deployment("vllm-summ", "summ", 1, 64))
    loop, t0 = leading_each_second(emu, tmp_path)
    c = loop.controller
    assert c is not None, loop.read().errors
    assert {s.name for s in c.settings.services} == {f"{NS}/chat", f"{NS}/summ"}
    emu.fail("GET", r"/deployments/vllm-chat$", 500)
    failed = loop.metrics.errors.labels("deployments")
    until(lambda: loop.step(time.monotonic() - t0) and failed._value.get() >= 3, what="three failed checks")
    assert {s.name for s in c.settings.services} == {f"{NS}/chat", f"{NS}/summ"}
    assert f"{NS}/chat" in c.fast.plan.caps_w
    assert sum("Deployment llm/vllm-chat: API server error" in r.getMessage() for r in caplog.records) == 1
    emu.faults.clear()
    emu.delete("apps", "deployments", "vllm-chat", NS)
    until(lambda: loop.step(time.monotonic() - t0) and f"{NS}/chat" not in {s.name for s in c.settings.services},
          what="the service whose Deployment is gone left out")
    until(lambda: loop.step(time.monotonic() - t0) is not None and "no Deployment llm/vllm-chat" in status_of(
        emu, "chat")["conditions"][0]["message"], what="its status saying why")  # the slow worker writes it next
    loop.stand_down(release=False, now=time.monotonic() - t0)


def test_a_selector_of_expressions_selects_what_it_says_and_an_empty_one_nothing() -> None:
    """Read by its match labels alone, a selector of expressions listed every pod of the namespace as the
    service's, and their GPUs took its caps."""
    from kubernetes.client import V1LabelSelector, V1LabelSelectorRequirement

    from controller.cluster.deployments import label_selector

    assert label_selector(V1LabelSelector(match_labels={"b": "2", "a": "1"}, match_expressions=[
        V1LabelSelectorRequirement(key="tier", operator="In", values=["gpu", "big"]),
        V1LabelSelectorRequirement(key="canary", operator="DoesNotExist"),
        V1LabelSelectorRequirement(key="app", operator="Exists"),
        V1LabelSelectorRequirement(key="zone", operator="NotIn", values=["x"])])) == (
        "a=1,b=2,tier in (gpu,big),!canary,app,zone notin (x)")
    assert label_selector(V1LabelSelector()) == "" and label_selector(None) == ""
    assert label_selector(V1LabelSelector(match_expressions=[
        V1LabelSelectorRequirement(key="k", operator="Gt", values=["1"])])) == ""  # one it cannot say: nothing


def test_a_deployment_is_driven_only_while_its_label_reads_whatever_the_policy_and_its_blips(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path) -> None:
    """The label was checked as settings were adopted: under a refused policy (a queue_model changed) the operator
    drove the settings it held, and scaled back a Deployment whose owner had taken the label back. Now a Deployment
    is driven only while its label last read true: a blip at the first read keeps its service planned (not
    refused, as at a failover) but not driven until it reads, and a label put back is driven again."""
    emu, _ = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat", min_replicas=2))
    before = replicas(emu, "vllm-chat")
    emu.fail("GET", r"/deployments/vllm-chat$", 503)  # from the first read: a new leader's blip
    loop, t0 = leading_each_second(emu, tmp_path)
    c = loop.controller
    assert c is not None and f"{NS}/chat" in {s.name for s in c.settings.services}
    held = until(lambda: loop.step(time.monotonic() - t0) and [h for h in status_of(emu, "chat").get("held") or []
                                                              if "label was not read" in str(h)], what="held")
    assert before < 2 and replicas(emu, "vllm-chat") == before, held  # planned, tried, never driven unread
    emu.faults.clear()
    until(lambda: loop.step(time.monotonic() - t0) and replicas(emu, "vllm-chat") == 2, what="driven once read")
    emu.patch(GROUP, POLICIES, "default", {"spec": {"optimizer": {"queue_model": "mm1k-batch"}}})  # refused
    emu.patch("apps", "deployments", "vllm-chat", {"metadata": {"labels": {"wattscale.dev/managed": None}}},
              NS)  # its owner takes it back
    until(lambda: loop.step(time.monotonic() - t0) and "has no label wattscale.dev/managed=true" in (
        status_of(emu, "chat").get("conditions") or [{}])[0].get("message", ""), what="chat refused")
    emu.patch("apps", "deployments", "vllm-chat", {"spec": {"replicas": 1}}, NS)  # and scales it by hand
    writes = len(emu.requests)
    for _ in range(25):  # several slow ticks under the refused policy
        loop.step(time.monotonic() - t0)
        time.sleep(0.2)
    assert replicas(emu, "vllm-chat") == 1 and not [(method, path) for _, method, path in emu.requests[writes:]
                                                    if method in ("PATCH", "PUT") and "/deployments/vllm-chat" in path]
    emu.patch("apps", "deployments", "vllm-chat", {"metadata": {"labels": {"wattscale.dev/managed": "true"}}}, NS)
    until(lambda: loop.step(time.monotonic() - t0) and replicas(emu, "vllm-chat") == 2, 30.0,
          "driven again once its label reads, the policy still refused")
    # A consent left behind: another service naming the Deployment later, its first read a blip, drove it on the
    # label read for the first. It is forgotten as the Deployment leaves the targets, and as the leadership ends.
    emu.patch(GROUP, POLICIES, "default", {"spec": {"optimizer": {"queue_model": "mm1k-cb"}}})
    emu.delete(GROUP, SERVICES, "chat", NS)
    until(lambda: loop.step(time.monotonic() - t0) and not loop.deployments.consented, what="its consent forgotten")
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat", min_replicas=2))
    until(lambda: loop.step(time.monotonic() - t0) and loop.deployments.consented, what="read again")
    loop.stand_down(release=False, now=time.monotonic() - t0)
    assert not loop.deployments.consented


def test_no_consent_outlives_its_read_a_service_left_out_or_a_leadership(cluster: tuple[KubeEmulator, Any],
                                                                         tmp_path: Path) -> None:
    """A label read for a service then refused (its min_replicas past the inventory) was kept: deleted, its owner
    taking the label back, a later service naming the Deployment, its first read a blip, scaled it. And a read in
    flight as the leadership ended noted its consent after it was forgotten."""
    emu, _ = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat", min_replicas=1))
    loop, t0 = leading_each_second(emu, tmp_path, timeout_s=3.0)
    assert loop.controller is not None
    emu.put("apps", "deployments", deployment("vllm-x", "x", 0, 64))
    emu.put(GROUP, SERVICES, service("zz-big", "vllm-x", min_replicas=4))  # checked after chat: the one refused
    until(lambda: loop.step(time.monotonic() - t0) and "add up to" in (
        status_of(emu, "zz-big").get("conditions") or [{}])[0].get("message", ""), what="zz-big refused")
    emu.delete(GROUP, SERVICES, "zz-big", NS)
    emu.patch("apps", "deployments", "vllm-x", {"metadata": {"labels": {"wattscale.dev/managed": None}}}, NS)
    emu.fail("GET", r"/deployments/vllm-x$", 503)
    emu.put(GROUP, SERVICES, service("later", "vllm-x", min_replicas=2, max_replicas=2))
    for _ in range(25):
        loop.step(time.monotonic() - t0)
        time.sleep(0.2)
    assert replicas(emu, "vllm-x") == 0 and DeploymentRef(NS, "vllm-x") not in loop.deployments.consented
    emu.faults.clear()
    emu.fail("GET", r"/deployments/vllm-chat$", delay_s=2.0, times=1)
    reading = threading.Thread(target=loop.deployments.pods)
    reading.start()
    time.sleep(0.5)
    loop.stand_down(release=False, now=time.monotonic() - t0)
    reading.join(10.0)
    assert not loop.deployments.consented
    loop.deployments.pods()  # a worker of the ended leadership reading on, as a standby, while the label is there
    assert loop.deployments.consented
    emu.patch("apps", "deployments", "vllm-chat", {"metadata": {"labels": {"wattscale.dev/managed": None}},
                                                    "spec": {"replicas": 0}}, NS)  # then taken back, for hours
    emu.fail("GET", r"/deployments/vllm-chat$", 503)  # and the next leadership's reads of it blip
    loop.step(time.monotonic() - t0)
    assert loop.controller is not None
    for _ in range(15):
        loop.step(time.monotonic() - t0)
        time.sleep(0.2)
    assert replicas(emu, "vllm-chat") == 0  # the standby's read is no consent for the leadership after it
    assert not loop.deployments.consents(f"{NS}/chat", "H100-SXM")
    loop.stand_down(release=False, now=time.monotonic() - t0)


def test_a_lease_the_role_refuses_is_said_once_while_it_lasts(cluster: tuple[KubeEmulator, Any], tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A Role missing, or --namespace naming one the Role is not in: the operator never acted and said nothing."""
    emu, _ = cluster
    emu.fail("GET", r"/leases/", 403)
    lease = Lease(api_client(str(tmp_path / "kubeconfig")), "wattscale", "wattscale-operator", "op")
    assert not any(lease.hold() for _ in range(5))
    said = [r.getMessage() for r in caplog.records if r.name == "wattscale.operator"]
    assert said == ["lease wattscale/wattscale-operator: forbidden: the Role must allow get, create and update on "
                    "coordination.k8s.io leases in its namespace (HTTP 403): this operator does not act until it can "
                    "take the Lease"]
    emu.faults.clear()
    assert lease.hold()
    lease.give_back()
    emu.fail("GET", r"/leases/", 403)
    assert not lease.hold()
    assert sum("forbidden" in r.getMessage() for r in caplog.records) == 2  # a new refusal is said again


def test_a_policy_reads_acting_only_once_its_operator_leads(cluster: tuple[KubeEmulator, Any], tmp_path: Path) -> None:
    """The nodes' listing forbidden: no node plan is made, at each try, and the policy read "Ready: Acting" all the
    while. It reads "Starting", not ready, until a start succeeds."""
    emu, _ = cluster
    emu.put(GROUP, POLICIES, policy())
    emu.fail("GET", r"/api/v1/nodes$", 403, times=1)
    loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "leader", "wattscale",
                       str(tmp_path / "state"))
    with pytest.raises(ActuatorError, match="the Role must allow list on nodes"):
        loop.step(0.0)
    ready = (emu.get(GROUP, POLICIES, "default") or {})["status"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "Starting")
    loop.step(1.0)
    assert loop.controller is not None
    loop._slow(loop.controller, loop.plans, lambda: True, 2.0)
    ready = (emu.get(GROUP, POLICIES, "default") or {})["status"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("True", "Acting")
    loop.stand_down(release=False, now=3.0)


def test_a_policy_with_no_valid_service_is_governed_all_the_same(cluster: tuple[KubeEmulator, Any],
                                                                 tmp_path: Path) -> None:
    """A policy applied before its LLMServices, or whose services are all left out, was never acted on: no node
    plans, the agents at their safe caps whatever the budget, and the policy's status "Ready: Acting". The operator
    now leads with no service (every GPU no service holds is at its lowest limit), and plans a service once valid."""
    emu, _ = cluster
    body = policy()
    body["spec"]["daemon"] = {"fast_interval_s": 0.2, "slow_interval_s": 1.0}
    emu.put(GROUP, POLICIES, body)
    emu.put(GROUP, SERVICES, service("chat", "vllm-missing"))  # its Deployment is not there yet
    loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "leader", "wattscale",
                       str(tmp_path / "state"))
    t0 = time.monotonic()
    loop.step(0.0)
    c = loop.controller
    assert c is not None and c.settings.services == ()
    assert [p["metadata"]["name"] for p in emu.items(GROUP, PLANS)] == [NODE]
    assert "no Deployment llm/vllm-missing" in status_of(emu, "chat")["conditions"][0]["message"]
    emu.patch(GROUP, SERVICES, "chat", {"spec": {"variants": [{"accelerator": "H100-SXM", "deployment": "vllm-chat"}]}},
              NS)
    until(lambda: loop.step(time.monotonic() - t0) and f"{NS}/chat" in c.fast.plan.caps_w,
          what="the service planned once its Deployment is there")
    loop.stand_down(release=False, now=time.monotonic() - t0)


def test_a_release_whose_plans_cannot_be_listed_is_tried_again_and_never_raises(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy deleted while the API failed the plans' LIST once: the release raised out of the stand-down (a
    traceback in kopf's daemon, the loop half torn down) and, the policy gone, nothing tried it again."""
    emu, _ = cluster
    loop, _ = leading(emu, tmp_path, 15.0)
    emu.fail("GET", r"/nodepowerplans$", 500, times=1)
    loop.stand_down(release=True, now=1.0)
    assert plan(emu)["spec"]["release"] is True and loop.controller is None and loop.plans is None
    assert sum("no plan could be told to release" in r.getMessage() for r in caplog.records) == 1
    loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "leader", "wattscale",
                       str(tmp_path / "state"))
    loop.step(0.0)
    assert loop.controller is not None
    emu.fail("GET", r"/nodepowerplans$", 500)
    monkeypatch.setattr(operator, "RELEASE_WITHIN_S", 2.5)
    started = time.monotonic()
    loop.stand_down(release=True, now=1.0)
    assert loop.controller is None and time.monotonic() - started < 2.5 + 1.0  # within kopf's window to stop it
    assert sum("no plan could be told to release" in r.getMessage() for r in caplog.records) == 1 + 2
    assert "not every agent was told to restore its default limits" in caplog.records[-1].getMessage()


def test_a_budget_written_into_the_policy_reaches_the_governor_at_its_watch_event(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path) -> None:
    """The slow tick read the policy only at its period (60 s here), and later still behind a tick waiting on
    Prometheus: a budget cut reached the governor that late, where a host's reload gives it at once. The watch's
    event hands a cut over; a slow tick's read from before the edit is not applied over it; a rise, and a policy
    the slow tick refuses, wait for the slow tick."""
    emu, _ = cluster
    loop, t0 = leading(emu, tmp_path, 15.0)
    c = loop.controller
    assert c is not None and c.governor.settings.budget_w == 2400.0
    stale = loop.read()
    emu.patch(GROUP, POLICIES, "default", {"spec": {"power": {"budget_w": 1500.0, "headroom": 0.03}}})
    loop.policy_seen(emu.get(GROUP, POLICIES, "default"))
    assert c.governor.settings.budget_w == 1500.0
    real_read = loop.read
    loop.read = lambda: stale  # type: ignore[method-assign]  # a slow tick that read before the edit
    loop._slow(c, loop.plans, lambda: True, time.monotonic() - t0)
    assert c.governor.settings.budget_w == 1500.0 and c.settings.power.budget_w == 1500.0
    bad = emu.get(GROUP, POLICIES, "default")
    assert bad is not None
    bad["spec"]["power"]["budget_w"], bad["metadata"]["generation"] = -5.0, 3  # stored past the schema
    loop.policy_seen(bad)  # refused by the checks: the slow tick reports it, by field
    assert c.governor.settings.budget_w == 1500.0
    emu.patch(GROUP, POLICIES, "default", {"spec": {"power": {"budget_w": 4000.0, "headroom": 0.03},
                                                    "optimizer": {"time_limit_s": 0.5, "queue_model": "mm1k-batch"}}})
    loop.policy_seen(emu.get(GROUP, POLICIES, "default"))  # a rise waits for the slow tick, which refuses this one
    assert c.governor.settings.budget_w == 1500.0
    loop.read = lambda: real_read()  # type: ignore[method-assign]
    loop._slow(c, loop.plans, lambda: True, time.monotonic() - t0)
    assert c.governor.settings.budget_w == 1500.0
    assert "spec.optimizer.queue_model" in (emu.get(GROUP, POLICIES, "default") or {})["status"]["conditions"][0][
        "message"]
    # a cut in the same edit as a field the slow tick refuses is taken all the same (checked whole, it waited for
    # the policy to be mended), and the slow tick's refusal keeps it
    emu.patch(GROUP, POLICIES, "default", {"spec": {"power": {"budget_w": 1000.0}, "plan_ttl_s": 5.0,
                                                    "daemon": {"fast_interval_s": 2.0},
                                                    "optimizer": {"queue_model": "mm1k-cb"}}})
    loop.policy_seen(emu.get(GROUP, POLICIES, "default"))
    assert c.governor.settings.budget_w == 1000.0
    loop._slow(c, loop.plans, lambda: True, time.monotonic() - t0)
    assert c.governor.settings.budget_w == 1000.0
    assert "spec.plan_ttl_s" in (emu.get(GROUP, POLICIES, "default") or {})["status"]["conditions"][0]["message"]
    loop.stand_down(release=False, now=time.monotonic() - t0)


def test_a_budget_cut_seen_while_the_operator_starts_to_lead_reaches_its_governor(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path) -> None:
    """A watch event that came while no leadership acted was dropped: the one starting led on its read from before
    the edit, and the cut waited for its first slow tick (60 s here)."""
    emu, _ = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    body = policy()
    body["spec"]["daemon"] = {"fast_interval_s": 0.2, "slow_interval_s": 60.0}
    emu.put(GROUP, POLICIES, body)
    loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "leader", "wattscale",
                       str(tmp_path / "state"))
    stale = loop.read()  # the lead's read, taken before the edit
    emu.patch(GROUP, POLICIES, "default", {"spec": {"power": {"budget_w": 1500.0, "headroom": 0.03}}})
    loop.policy_seen(emu.get(GROUP, POLICIES, "default"))  # the edit's event, while nothing is led
    loop.read = lambda: stale  # type: ignore[method-assign]
    loop.step(0.0)
    c = loop.controller
    assert c is not None and c.governor.settings.budget_w == 1500.0 and loop.unled is None
    loop.stand_down(release=False, now=0.5)


def test_the_operator_hands_a_policy_edit_to_the_governor_before_its_slow_tick(cluster: tuple[KubeEmulator, Any],
                                                                               link: Link) -> None:
    emu, client = cluster
    nvml = gpus()
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    body = policy()
    body["spec"]["daemon"] = {"fast_interval_s": 0.2, "slow_interval_s": 120.0}
    emu.put(GROUP, POLICIES, body)
    with running_agent(client, nvml, link), KopfRunner(OPERATOR, timeout=20) as runner:
        until(lambda: len((plan(emu) or {}).get("spec", {}).get("limits_w", {})) == 4, what="node limits")
        emu.patch(GROUP, POLICIES, "default", {"spec": {"power": {"budget_w": 900.0, "headroom": 0.03}}})
        until(lambda: sum((plan(emu) or {})["spec"]["limits_w"].values()) <= 900.0 * 0.97 + 0.5, timeout_s=10.0,
              what="the node's limits within the new budget, long before the slow tick")
        emu.delete(GROUP, POLICIES, "default")
        until(lambda: emu.get(GROUP, POLICIES, "default") is None, what="the policy's finalizer off")
    assert runner.exit_code == 0, runner.output


def test_a_node_that_joins_gets_its_plan_within_the_owners_refresh_not_a_slow_period(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path) -> None:
    """Plans were made at the lead and each slow tick (60 s here): a node that joined held its agent's safe caps for
    that long, drawing what no reading counted."""
    emu, _ = cluster
    loop, t0 = leading(emu, tmp_path, 15.0)
    emu.put("", "nodes", {"metadata": {"name": "gpu-b", "labels": {"gpu": "h100", "rack": "r2"}}})
    emu.put("", "nodes", {"metadata": {"name": "cpu-a", "labels": {"role": "web"}}})
    until(lambda: loop.step(time.monotonic() - t0) and emu.get(GROUP, PLANS, "gpu-b") is not None, timeout_s=8.0,
          what="the new node's plan")
    assert emu.get(GROUP, PLANS, "cpu-a") is None
    loop.stand_down(release=False, now=time.monotonic() - t0)


def test_an_agent_asking_for_a_plan_none_was_made_for_has_its_node_planned_at_the_next_tick(
        cluster: tuple[KubeEmulator, Any], tmp_path: Path) -> None:
    """A node that joined held its agent's safe caps, which no reading counts, until the owners' refresh made its
    plan, up to `OWNER_TICKS` fast ticks (5 s at 0.5-s ticks: a new user's trial read 6 s over the budget). Its
    agent's first ask for a plan wakes that refresh at the next tick; a node the selector leaves out wakes it once."""
    emu, _ = cluster
    loop, t0 = leading(emu, tmp_path, 15.0)
    emu.put("", "nodes", {"metadata": {"name": "gpu-b", "labels": {"gpu": "h100", "rack": "r2"}}})
    assert loop.plans is not None
    assert loop._plan_of(loop.plans, "gpu-b") is None  # what the plan server answers its agent: 404, no plan
    loop.step(0.2)  # one tick, long before the refresh is due (`OWNER_TICKS` x 0.2 s after the lead)
    until(lambda: emu.get(GROUP, PLANS, "gpu-b") is not None, timeout_s=5.0, what="the new node's plan")
    assert loop._plan_of(loop.plans, "cpu-a") is None and loop.plan_asked.is_set()
    loop.step(0.4)
    assert loop._plan_of(loop.plans, "cpu-a") is None and not loop.plan_asked.is_set()  # asked again: nothing woken
    loop.stand_down(release=False, now=time.monotonic() - t0)


def test_the_gpus_a_services_pods_hold_are_those_in_use_as_the_agent_reports(
        cluster: tuple[KubeEmulator, Any], link: Link, tmp_path: Path) -> None:
    """The device plugin put the node's two chat pods on GPUs 1 and 3: read in index order, GPUs 0 and 1 took
    chat's cap and the two serving were held at their lowest limit."""
    emu, client = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    body = policy()
    body["spec"]["daemon"] = {"fast_interval_s": 0.2, "slow_interval_s": 60.0}
    emu.put(GROUP, POLICIES, body)
    nvml = gpus()
    for k in (0, 2):
        nvml.gpus[k].memory_used_b = 500 * 2**20  # the driver's context: no engine on it
    with plan_server(api_client(str(tmp_path / "kubeconfig")), link.port) as server, running_agent(client, nvml, link):
        loop = ClusterLoop(api_client(str(tmp_path / "kubeconfig")), "default", "leader", "wattscale",
                           str(tmp_path / "state"), server=server)
        t0 = time.monotonic()
        until(lambda: loop.step(time.monotonic() - t0) and loop.unowned == ["gpu-a/0", "gpu-a/2"],
              what="GPUs 1 and 3 read as chat's")
        limits = until(lambda: loop.step(time.monotonic() - t0) and len((plan(emu) or {})["spec"]["limits_w"]) == 4
                       and (plan(emu) or {})["spec"]["limits_w"], what="limits on the four GPUs")
        assert limits["1"] > limits["0"] and limits["3"] > limits["2"], limits
        loop.stand_down(release=False, now=time.monotonic() - t0)


def test_a_condition_keeps_the_time_of_its_last_transition_until_its_status_changes() -> None:
    """Every status write stamped `lastTransitionTime` anew, though the condition had not changed (a new user's trial):
    it is the time the status last changed, as Kubernetes' conditions read."""
    stored = {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Planned", "message": "planned",
                                         "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}
    (same,) = since([condition(True, "Planned", "planned again")], stored)
    assert same["lastTransitionTime"] == "2026-01-01T00:00:00Z" and same["message"] == "planned again"
    (flipped,) = since([condition(False, "Short", "short 1.0 rps (budget)")], stored)
    assert flipped["lastTransitionTime"] != "2026-01-01T00:00:00Z"
    assert since([condition(True, "Acting", "acts")], {"status": {"conditions": ["not an object"]}})[0][
        "lastTransitionTime"] != "2026-01-01T00:00:00Z"


def test_an_api_error_while_taking_the_lead_is_one_line_not_a_traceback(cluster: tuple[KubeEmulator, Any],
                                                                         link: Link) -> None:
    """One HTTP 500 on the nodes' list as the operator started leading logged "operator step failed" with some 30
    lines of chained traceback, though the error was already translated and said all (a new user's trial); the
    loop went on. A translated API error is one line; a bug keeps its traceback."""
    emu, _ = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    emu.put(GROUP, POLICIES, policy())
    emu.fail("GET", r"^/api/v1/nodes$", 500, times=3)
    with KopfRunner(OPERATOR, timeout=60) as runner:
        until(lambda: status_of(emu, "chat").get("decision"), what="a decision on the service", timeout_s=40)
    out = runner.output
    assert "operator step failed: TransientActuatorError" in out and "Traceback" not in out, out[-3000:]


def test_a_policy_the_operator_leaves_alone_says_so_on_its_status(cluster: tuple[KubeEmulator, Any]) -> None:
    """A PowerPolicy not named by `--policy` was left alone with a line in the operator's log alone (a new user's
    trial): its status now reads Ready False, NotActed, naming the policy acted on, with one Warning Event."""
    emu, _ = cluster
    emu.put(GROUP, SERVICES, service("chat", "vllm-chat"))
    emu.put(GROUP, POLICIES, policy())
    emu.put(GROUP, POLICIES, {**policy(), "metadata": {"name": "other"}})
    with KopfRunner(OPERATOR, timeout=60):
        got = until(lambda: ((emu.get(GROUP, POLICIES, "other") or {}).get("status") or {}).get("conditions"),
                    what="the other policy's status", timeout_s=30)
        until(lambda: status_of(emu, "chat").get("decision"), what="the named policy acting", timeout_s=30)
    assert got[0]["status"] == "False" and got[0]["reason"] == "NotActed" and "'default'" in got[0]["message"]
    assert [e["reason"] for e in events_on(emu, "other")] == ["NotActed"]
