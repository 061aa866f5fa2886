"""The operator's node plans against the Kubernetes API emulator through the official client: a node whose plan
write times out or is refused waits its backoff (controller/retry.py), so the fast tick that writes the plans
waits on it once, not every second, while the other nodes' plans are written; nothing queued is lost. And the
node agent's plan GET (`http_fetch.http_request` through a proxy-less opener) ignores the environment's proxies,
as a pod must."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_fixtures import agent_token, gpus, plan_keys, plan_server, start
from conftest import free_port
from kube_emulator import KubeEmulator
from prometheus_client import CollectorRegistry

from actuators import PermanentActuatorError
from actuators.kubernetes import api_client
from actuators.nvml import NvmlDevices
from controller.cluster.agent import NodeAgent
from controller.cluster.node_readings import NODE_GONE_AFTER_S
from controller.cluster.nodes import NodePlans
from controller.cluster.resources import GROUP, PLANS
from controller.fast_loop import FastLoop
from controller.own_metrics import OwnMetrics
from controller.plan import Plan
from controller.power_settings import PowerSettings
from controller.telemetry.base import TelemetryError

NODES = ("gpu-a", "gpu-b")


@pytest.fixture
def emu() -> Iterator[KubeEmulator]:
    e = KubeEmulator(watch_s=1.0)
    start(e)
    yield e
    e.close()


def two_nodes(emu: KubeEmulator, tmp_path: Path, timeout_s: float = 5.0,
              tick_s: float | None = None) -> tuple[NodePlans, dict[str, int]]:
    """gpu-a and gpu-b, one 700 W GPU each reported by its agent; the plans as the operator sees them, and each
    node's GPU by its cluster number."""
    emu.put("", "nodes", {"metadata": {"name": "gpu-b", "labels": {"gpu": "h100"}}})  # gpu-a: start()'s
    for node in NODES:
        emu.stored(GROUP, PLANS, {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NodePowerPlan",
                                  "metadata": {"name": node}, "spec": {"sequence": 1}, "status": {"beat": 1, "gpus": [
                                      {"index": 0, "uuid": f"GPU-{node}", "name": "H100", "power_w": 400.0,
                                       "energy_j": 1.0, "limit_w": 700.0, "min_w": 200.0, "max_w": 700.0}]}})
    (tmp_path / "kc").write_text(yaml.safe_dump(emu.kubeconfig("operator")))
    plans = NodePlans(api_client(str(tmp_path / "kc")), 60.0, 0.6, 10.0, timeout_s=timeout_s, tick_s=tick_s)
    return plans, {plans.where[g.index][0]: g.index for g in plans.sample(0.0)}


def patches(emu: KubeEmulator, node: str) -> int:
    return sum(m == "PATCH" and p.split("?")[0].endswith(f"nodepowerplans/{node}") for _, m, p in emu.requests)


def limits(emu: KubeEmulator, node: str) -> Any:
    return (emu.get(GROUP, PLANS, node) or {}).get("spec", {}).get("limits_w")


def test_a_timing_out_node_is_waited_on_once_per_backoff_and_the_others_are_written(
        emu: KubeEmulator, tmp_path: Path) -> None:
    """gpu-b's PATCH hangs past the client's 0.5 s timeout: the tick that tries it waits that long once; the next
    nine ticks (one a second) skip it, never wait its timeout and still write gpu-a's cuts; gpu-b's cut stays
    queued and is written again on the first tick after its 10 s backoff."""
    plans, gpu = two_nodes(emu, tmp_path, timeout_s=0.5)
    emu.fail("PATCH", "nodepowerplans/gpu-b$", delay_s=1.5, times=1)
    plans.set_power_limit(gpu["gpu-b"], 400.0)
    plans.set_power_limit(gpu["gpu-a"], 500.0)
    started = time.monotonic()
    failed = plans.flush(1.0, 2000.0)
    assert time.monotonic() - started >= 0.5 and len(failed) == 1 and "unreachable or too slow" in failed[0]
    assert limits(emu, "gpu-a") == {"0": 500.0} and patches(emu, "gpu-b") == 1
    for tick in range(2, 11):
        plans.set_power_limit(gpu["gpu-a"], 500.0 - 10 * tick)  # the governor goes on cutting gpu-a
        started = time.monotonic()
        assert plans.flush(float(tick), 2000.0) == []
        assert time.monotonic() - started < 0.5  # gpu-b not waited on
        assert limits(emu, "gpu-a") == {"0": 500.0 - 10 * tick}
    assert patches(emu, "gpu-b") == 1
    assert plans.flush(11.0, 2000.0) == [] and patches(emu, "gpu-b") == 2
    assert limits(emu, "gpu-b") == {"0": 400.0}


def test_an_api_that_times_out_costs_a_tick_one_timeout_not_one_per_node(emu: KubeEmulator, tmp_path: Path) -> None:
    """Every PATCH hangs past the 0.5 s timeout (the API down): the first tick tries one node and leaves the other
    queued for the next, which tries that one; once the API answers, both cuts are written, none lost."""
    plans, gpu = two_nodes(emu, tmp_path, timeout_s=0.5)
    emu.fail("PATCH", "nodepowerplans/gpu-", delay_s=1.5, times=2)
    plans.set_power_limit(gpu["gpu-a"], 500.0)
    plans.set_power_limit(gpu["gpu-b"], 400.0)
    for tick, tried in ((1.0, "gpu-a"), (2.0, "gpu-b")):
        started = time.monotonic()
        assert len(plans.flush(tick, 2000.0)) == 1
        assert time.monotonic() - started < 1.0  # one timeout, not two
        assert patches(emu, tried) == 1 and limits(emu, "gpu-a") is None and limits(emu, "gpu-b") is None
    assert plans.flush(11.0, 2000.0) == [] and plans.flush(12.0, 2000.0) == []  # each after its own 10 s backoff
    assert limits(emu, "gpu-a") == {"0": 500.0} and limits(emu, "gpu-b") == {"0": 400.0}


def test_a_refused_write_is_tried_once_until_the_plan_is_made_again(emu: KubeEmulator, tmp_path: Path) -> None:
    """gpu-b's plan deleted under the operator: its write is refused (404, permanent) once and not tried again
    on later ticks, whatever the backoff; the slow loop's `ensure` makes the plan again, and the next tick
    writes it with the queued limit."""
    plans, gpu = two_nodes(emu, tmp_path)
    emu.delete(GROUP, PLANS, "gpu-b")
    plans.set_power_limit(gpu["gpu-b"], 450.0)
    assert len(plans.flush(1.0, 2000.0)) == 1 and patches(emu, "gpu-b") == 1
    for tick in (2.0, 30.0, 600.0):
        assert plans.flush(tick, 2000.0) == []
    assert patches(emu, "gpu-b") == 1
    assert plans.ensure({"gpu": "h100"}) == list(NODES)
    assert plans.flush(601.0, 2000.0) == [] and patches(emu, "gpu-b") == 2
    assert limits(emu, "gpu-b") == {"0": 450.0}


@pytest.mark.parametrize(("method", "path", "said"), [
    ("GET", r"/api/v1/nodes$", "nodes: forbidden: the Role must allow list on nodes (HTTP 403)"),
    ("GET", r"/nodepowerplans$", "node plans: forbidden: the Role must allow list on nodepowerplans in group "
     "wattscale.dev (HTTP 403)"),
    ("POST", r"/nodepowerplans$", "node plans: forbidden: the Role must allow create on nodepowerplans in group "
     "wattscale.dev (HTTP 403)")])
def test_a_refusal_while_making_the_plans_names_the_call_the_role_must_allow(
        emu: KubeEmulator, tmp_path: Path, method: str, path: str, said: str) -> None:
    """Each of `ensure`'s calls refused (403) read "node plans: forbidden", whichever it was: the nodes' listing
    named as the plans'."""
    plans, _ = two_nodes(emu, tmp_path)
    emu.delete(GROUP, PLANS, "gpu-b")  # so that `ensure` creates one
    emu.fail(method, path, 403)
    with pytest.raises(PermanentActuatorError) as err:
        plans.ensure({"gpu": "h100"})
    assert str(err.value) == said


def test_new_plan_settings_try_a_refused_node_again(emu: KubeEmulator, tmp_path: Path) -> None:
    """A write forbidden (403: the Role lacks it) stops tries; the policy's plan settings changing (what the
    node's plan carries) tries it afresh, and the backoff ceiling follows the new TTL."""
    plans, gpu = two_nodes(emu, tmp_path)
    emu.fail("PATCH", "nodepowerplans/gpu-b$", code=403, times=1)
    plans.set_power_limit(gpu["gpu-b"], 450.0)
    assert len(plans.flush(1.0, 2000.0)) == 1
    plans.configure(60.0, 0.6)  # the same settings: still given up on
    assert plans.flush(100.0, 2000.0) == [] and patches(emu, "gpu-b") == 1
    plans.configure(20.0, 0.6)
    assert plans.retry.max_delay_s == 5.0
    assert plans.flush(101.0, 2000.0) == [] and patches(emu, "gpu-b") == 2
    assert limits(emu, "gpu-b") == {"0": 450.0} and emu.get(GROUP, PLANS, "gpu-b")["spec"]["ttl_s"] == 20.0


def test_the_agent_reaches_the_operator_directly_whatever_proxy_the_environment_names(
        emu: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy in the pod's environment (set for the vLLM images, say) is not used for the in-cluster plan
    endpoint: the agent follows its plan; the same GET through an opener built as urllib's default goes to the
    dead proxy."""
    from controller.http_fetch import Unreachable, http_request, opener

    emu.put(GROUP, PLANS, {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NodePowerPlan", "metadata": {"name": "gpu-a"},
                           "spec": {"sequence": 1, "ttl_s": 10.0, "limits_w": {"0": 480.0}, "safe_caps_w": {}}})
    (tmp_path / "kc").write_text(yaml.safe_dump(emu.kubeconfig("operator")))
    (tmp_path / "agent-kc").write_text(yaml.safe_dump(emu.kubeconfig("agent")))
    operator, agent_api = api_client(str(tmp_path / "kc")), api_client(str(tmp_path / "agent-kc"))
    # the proxy named once the API clients are made (the official client reads it then): only the plan GET sees it
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("no_proxy", "")
    with plan_server(operator) as server:
        server.attach(lambda node: (emu.get(GROUP, PLANS, node) or {}).get("spec"), lambda: True)
        nvml = gpus(1)
        agent = NodeAgent("gpu-a", NvmlDevices(nvml), agent_api, f"http://127.0.0.1:{server.port}",
                          agent_token(emu, tmp_path / "token"), plan_keys(tmp_path), timeout_s=1.0)
        assert agent.step(0.0) == "following" and nvml.gpus[0].limit_mw == 480_000
        with pytest.raises(Unreachable):  # an opener built as urllib's default goes to the proxy
            http_request(agent.plan_url, {}, 1.0, via=opener())


def test_the_fast_ticks_read_of_the_plans_waits_a_tick_at_most(emu: KubeEmulator, tmp_path: Path) -> None:
    """The API server answers the plans' LIST 1.5 s late: the operator's governor, ticking every 0.3 s, hears
    of it as lost telemetry within about a tick, not after the 5 s the slow loop's calls may take."""
    plans, _ = two_nodes(emu, tmp_path, timeout_s=5.0, tick_s=0.3)
    emu.fail("GET", "nodepowerplans$", delay_s=1.5, times=1)
    started = time.monotonic()
    with pytest.raises(TelemetryError):
        plans.sample(1.0)
    assert time.monotonic() - started < 1.0


def test_one_flush_writes_within_a_tick_whatever_the_nodes(emu: KubeEmulator, tmp_path: Path) -> None:
    """Every PATCH answers 0.25 s late, each within the 0.3 s tick: the first is written, the second finds less than
    half the tick left and waits, queued and not failed, for the next flush (a tick of writes, not one per node)."""
    plans, gpu = two_nodes(emu, tmp_path, timeout_s=5.0, tick_s=0.3)
    emu.fail("PATCH", "nodepowerplans/gpu-", delay_s=0.25, times=2)
    plans.set_power_limit(gpu["gpu-a"], 500.0)
    plans.set_power_limit(gpu["gpu-b"], 400.0)
    started = time.monotonic()
    assert plans.flush(1.0, 2000.0) == []
    assert time.monotonic() - started < 0.45
    assert (limits(emu, "gpu-a"), limits(emu, "gpu-b")) == ({"0": 500.0}, None)
    assert plans.flush(2.0, 2000.0) == [] and limits(emu, "gpu-b") == {"0": 400.0}


def test_a_new_fast_tick_moves_the_bounds_derived_from_it(emu: KubeEmulator, tmp_path: Path) -> None:
    """The operator takes a policy's new `daemon.fast_interval_s` live: the plans' calls and staleness follow it."""
    plans, _ = two_nodes(emu, tmp_path, timeout_s=5.0, tick_s=5.0)
    assert (plans.tick_timeout_s, plans.stale_after_s) == (5.0, 10.0)
    plans.configure(60.0, 0.6, tick_s=0.5)
    assert (plans.tick_timeout_s, plans.stale_after_s) == (0.5, 10.0)
    plans.configure(60.0, 0.6, tick_s=8.0)
    assert (plans.tick_timeout_s, plans.stale_after_s) == (5.0, 24.0)


def beat(emu: KubeEmulator, t: float, *nodes: str) -> None:
    """The named nodes' agents report (their beat moves)."""
    for node in nodes:
        emu.patch(GROUP, PLANS, node, {"status": {"beat": int(t)}})


def replace_b_by_c(emu: KubeEmulator, plans: NodePlans, uuid: str = "GPU-gpu-c") -> None:
    """gpu-b deleted (its plan left behind, its agent gone), gpu-c joining with one GPU."""
    emu.delete("", "nodes", "gpu-b")
    emu.put("", "nodes", {"metadata": {"name": "gpu-c", "labels": {"gpu": "h100"}}})
    assert plans.ensure({}) == ["gpu-a", "gpu-c"]
    emu.patch(GROUP, PLANS, "gpu-c", {"status": {"beat": 1, "gpus": [
        {"index": 0, "uuid": uuid, "name": "H100", "power_w": 400.0, "energy_j": 1.0, "limit_w": 700.0,
         "min_w": 200.0, "max_w": 700.0}]}})


def loop(plans: NodePlans, registry: CollectorRegistry | None = None) -> FastLoop:
    return FastLoop(PowerSettings(budget_w=1300.0), 3, plans, plans, OwnMetrics(registry or CollectorRegistry()),
                    lambda kind, message: None)


def test_a_gpu_whose_first_report_cannot_be_read_is_counted_at_the_most_a_gpu_may_draw(
        emu: KubeEmulator, tmp_path: Path) -> None:
    """gpu-c's agent reports one entry with no uuid from its first report: skipped, its GPU drew uncounted for good
    (the site at 1,700 W on a 1,000-W budget while the policy read Acting). It stands in as a GPU never read, which
    the governor counts at the most a GPU may draw and fits the others around; once it reads, the stand-in departs."""
    plans, _ = two_nodes(emu, tmp_path)
    entry = {"index": 0, "name": "H100", "power_w": 400.0, "energy_j": 1.0, "limit_w": 700.0, "min_w": 200.0,
             "max_w": 700.0}
    emu.stored(GROUP, PLANS, {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NodePowerPlan", "metadata": {
        "name": "gpu-c"}, "spec": {"sequence": 1}, "status": {"beat": 1, "gpus": [entry]}})
    fast = FastLoop(PowerSettings(budget_w=2000.0), 3, plans, plans, OwnMetrics(CollectorRegistry()),
                    lambda kind, message: None)
    fast.tick(1.0)
    stand_in = [g for g in fast.samples if g.never_read]
    assert [g.uuid for g in stand_in] == ["gpu-c/unread-0"]
    read = [g for g in fast.samples if not g.never_read]
    assert sum(g.power_limit_w for g in read) <= 2000.0 - 700.0  # the other two fitted under what it may draw
    emu.patch(GROUP, PLANS, "gpu-c", {"status": {"beat": 2, "gpus": [{**entry, "uuid": "GPU-c"}]}})
    fast.tick(2.0)
    assert sorted(g.uuid for g in fast.samples) == ["GPU-c", "GPU-gpu-a", "GPU-gpu-b"]


def test_a_node_that_leaves_the_site_takes_its_gpus_out_of_the_count(emu: KubeEmulator, tmp_path: Path) -> None:
    """gpu-b is replaced by gpu-c. gpu-b's GPU was counted at its last limit for ever (400 + 400 + 700 W against a
    1,300-W budget: a power emergency on a site drawing 800 W, and one more GPU kept and exported with every node
    replaced). Off the node list with its agent silent NODE_GONE_AFTER_S, it departs; until then it counts (it
    may still draw). Numbers are not reused, and its plan is no longer renewed."""
    plans, gpu = two_nodes(emu, tmp_path)
    registry = CollectorRegistry()
    fast = loop(plans, registry)
    assert plans.ensure({}) == ["gpu-a", "gpu-b"]
    fast.tick(1.0)
    assert fast.draw_w == 800.0 and registry.get_sample_value("wattscale_gpu_power_limit_watts", {"gpu": "1"})
    replace_b_by_c(emu, plans)
    for t in range(2, 20):
        beat(emu, t, "gpu-a", "gpu-c")
        fast.tick(float(t))
        plans.flush(float(t), 1300.0)
    assert fast.draw_w == 400.0 + 400.0 + 700.0 and "GPU-gpu-b" in fast.listing.seen  # missing: at its last limit
    for t in range(int(NODE_GONE_AFTER_S), int(NODE_GONE_AFTER_S) + 10):
        beat(emu, t, "gpu-a", "gpu-c")
        fast.tick(float(t))
        plans.flush(float(t), 1300.0)
    # gpu-b counts no more; the agents here never apply their plans, so the two 700-W limits they hold (1,400 W on a
    # 1,261-W line, GPUs no limit can be set on) are what is counted, whole: an emergency, though they draw 800 W
    assert fast.draw_w == 800.0 and fast.governor.emergency
    assert {g.uuid for g in fast.samples} == {"GPU-gpu-a", "GPU-gpu-c"} and "GPU-gpu-b" not in fast.listing.seen
    assert registry.get_sample_value("wattscale_gpu_power_limit_watts", {"gpu": str(gpu["gpu-b"])}) is None
    assert sorted(plans.where.values()) == [("gpu-a", 0), ("gpu-c", 0)] and max(plans.where) == 2
    renewals = patches(emu, "gpu-b")
    for t in range(400, 460):
        plans.flush(float(t), 1300.0)
    assert patches(emu, "gpu-b") == renewals  # its plan is left alone


def test_a_node_deleted_with_its_plan_departs_too(emu: KubeEmulator, tmp_path: Path) -> None:
    """`kubectl delete node gpu-b; kubectl delete nodepowerplan gpu-b`: with no plan left to go stale, its GPU was
    missing for ever, at its last limit, and all kept of it leaked."""
    plans, _ = two_nodes(emu, tmp_path)
    fast = loop(plans)
    assert plans.ensure({}) == ["gpu-a", "gpu-b"]
    fast.tick(1.0)
    emu.delete("", "nodes", "gpu-b")
    emu.delete(GROUP, PLANS, "gpu-b")
    assert plans.ensure({}) == ["gpu-a"]
    for t in (2.0, NODE_GONE_AFTER_S - 1.0):
        beat(emu, t, "gpu-a")
        fast.tick(t)
        assert fast.draw_w == 400.0 + 700.0
    beat(emu, NODE_GONE_AFTER_S + 1.0, "gpu-a")
    fast.tick(NODE_GONE_AFTER_S + 1.0)
    assert fast.draw_w == 400.0 and [key for key in plans.index if key[0] == "gpu-b"] == []
    assert "gpu-b" not in plans.sequence and "gpu-b" not in plans.beats


def test_a_listed_node_whose_agent_is_silent_counts_at_its_last_limits_for_as_long(
        emu: KubeEmulator, tmp_path: Path) -> None:
    """On the node list, a silent agent never takes its GPUs out of the count: they may still draw."""
    plans, _ = two_nodes(emu, tmp_path)
    fast = loop(plans)
    assert plans.ensure({}) == ["gpu-a", "gpu-b"]
    for t in (1.0, 20.0, 2 * NODE_GONE_AFTER_S, 10 * NODE_GONE_AFTER_S):
        beat(emu, t, "gpu-a")
        fast.tick(t)
    assert fast.draw_w == 400.0 + 700.0 and plans.gone == {}


def test_a_node_relabelled_out_whose_agent_reports_or_restarts_is_still_counted(
        emu: KubeEmulator, tmp_path: Path) -> None:
    """Off the policy's node list, gpu-b's agent goes on reporting and applying its plan (or restarts, silent a
    while): its GPU still draws, so it stays in the count (it had left it at once: 800 -> 400 W)."""
    plans, _ = two_nodes(emu, tmp_path)
    fast = loop(plans)
    assert plans.ensure({"gpu": "h100"}) == ["gpu-a", "gpu-b"]
    emu.patch("", "nodes", "gpu-b", {"metadata": {"labels": {"gpu": "other"}}})
    assert plans.ensure({"gpu": "h100"}) == ["gpu-a"]
    for t in range(1, 40):
        beat(emu, t, *(NODES if not 5 <= t < 35 else ("gpu-a",)))  # gpu-b's agent restarting for 30 s
        fast.tick(float(t))
        assert fast.draw_w in (800.0, 400.0 + 700.0), t
    assert fast.draw_w == 800.0 and plans.gone == {}


def test_a_node_relabelled_out_stays_in_its_power_domains_while_it_is_counted(
        emu: KubeEmulator, tmp_path: Path) -> None:
    """Off the policy's node list, gpu-b's GPU still counts at the site, and counted in no power domain (its labels
    were the listing's): its rack's limit went unguarded for its draw. Its labels are read by name while it is
    counted (after an operator's restart too), kept as last read once the node is deleted, dropped once it left."""
    plans, gpu = two_nodes(emu, tmp_path)
    fast = loop(plans)
    for node in NODES:
        emu.patch("", "nodes", node, {"metadata": {"labels": {"gpu": "h100", "rack": "r1"}}})
    racks = {"rack-1": {"rack": "r1"}, "rack-2": {"rack": "r2"}}
    assert plans.ensure({"gpu": "h100"}) == ["gpu-a", "gpu-b"]
    assert plans.domain_gpus(racks) == {"rack-1": (gpu["gpu-a"], gpu["gpu-b"]), "rack-2": ()}
    emu.patch("", "nodes", "gpu-b", {"metadata": {"labels": {"gpu": "other"}}})
    assert plans.ensure({"gpu": "h100"}) == ["gpu-a"]
    for t in (1.0, 20.0):
        beat(emu, t, *NODES)
        fast.tick(t)
    assert fast.draw_w == 800.0 and plans.domain_gpus(racks)["rack-1"] == (gpu["gpu-a"], gpu["gpu-b"])
    emu.patch("", "nodes", "gpu-b", {"metadata": {"labels": {"rack": "r2"}}})  # moved: its rack is read now
    plans.ensure({"gpu": "h100"})
    assert plans.domain_gpus(racks) == {"rack-1": (gpu["gpu-a"],), "rack-2": (gpu["gpu-b"],)}
    restarted = NodePlans(plans.custom.api_client, 60.0, 0.6, 10.0)
    restarted.sample(21.0)
    restarted.ensure({"gpu": "h100"})  # never listed by this operator: read by name
    assert set(restarted.labels) == {"gpu-a", "gpu-b"} and restarted.labels["gpu-b"]["rack"] == "r2"
    emu.delete("", "nodes", "gpu-b")  # deleted, its agent still reporting: as last read
    plans.ensure({"gpu": "h100"})
    assert plans.domain_gpus(racks)["rack-2"] == (gpu["gpu-b"],)
    for t in (NODE_GONE_AFTER_S + 30.0, NODE_GONE_AFTER_S + 31.0):  # its agent silent since: it left
        beat(emu, t, "gpu-a")
        fast.tick(t)
    plans.ensure({"gpu": "h100"})
    assert fast.draw_w == 400.0 and plans.domain_gpus(racks) == {"rack-1": (gpu["gpu-a"],), "rack-2": ()}
    assert set(plans.labels) == {"gpu-a"}


@pytest.mark.parametrize("back", ["beats again", "listed again"])
def test_a_gone_node_that_comes_back_is_counted_again(emu: KubeEmulator, tmp_path: Path, back: str) -> None:
    """Gone (off the list, agent silent), gpu-b comes back when its agent reports again or it is listed again:
    counted under a new number, its plan renewed."""
    plans, _ = two_nodes(emu, tmp_path)
    fast = loop(plans)
    assert plans.ensure({"gpu": "h100"}) == ["gpu-a", "gpu-b"]
    emu.patch("", "nodes", "gpu-b", {"metadata": {"labels": {"gpu": "other"}}})
    assert plans.ensure({"gpu": "h100"}) == ["gpu-a"]
    for t in (1.0, 20.0, NODE_GONE_AFTER_S + 1.0, NODE_GONE_AFTER_S + 2.0):
        beat(emu, t, "gpu-a")
        fast.tick(t)
        plans.flush(t, 1300.0)
    assert plans.gone == {"gpu-b": 1} and fast.draw_w == 400.0
    renewals = patches(emu, "gpu-b")
    if back == "beats again":
        beat(emu, 0.0, "gpu-b")  # a beat it has not reported before (the agent restarted: 0)
    else:
        emu.patch("", "nodes", "gpu-b", {"metadata": {"labels": {"gpu": "h100"}}})
        assert plans.ensure({"gpu": "h100"}) == ["gpu-a", "gpu-b"]
    t = NODE_GONE_AFTER_S + 3.0
    beat(emu, t, "gpu-a")
    fast.tick(t)
    plans.flush(t + 1000.0, 1300.0)
    assert fast.draw_w == 800.0 and plans.gone == {} and ("gpu-b", 0) in plans.index
    assert plans.index["gpu-b", 0] == 2 and patches(emu, "gpu-b") > renewals


def test_a_gpu_under_a_new_node_name_keeps_what_the_governor_holds_of_it(emu: KubeEmulator, tmp_path: Path) -> None:
    """gpu-b comes back as gpu-c with the same GPU: the old name's departure must not wipe the live GPU's cut,
    limits and records (the UUID departed the tick it was listed under its new name), and the old number's series
    go."""
    plans, gpu = two_nodes(emu, tmp_path)
    registry = CollectorRegistry()
    fast = loop(plans, registry)
    assert plans.ensure({}) == ["gpu-a", "gpu-b"]
    fast.tick(1.0)
    replace_b_by_c(emu, plans, uuid="GPU-gpu-b")
    for t in (*range(2, 20), NODE_GONE_AFTER_S + 1.0, NODE_GONE_AFTER_S + 2.0):
        beat(emu, t, "gpu-a", "gpu-c")
        fast.governor.cut_w["GPU-gpu-b"] = 50.0  # a cut the governor holds on it
        fast.tick(float(t))
        assert "GPU-gpu-b" in fast.listing.seen and "GPU-gpu-b" in fast.limits.known, t
    assert fast.draw_w == 800.0 and plans.gone == {"gpu-b": 1}
    assert registry.get_sample_value("wattscale_gpu_power_limit_watts", {"gpu": str(gpu["gpu-b"])}) is None


def test_a_new_leader_starts_from_no_limit_above_what_the_agent_reports(emu: KubeEmulator, tmp_path: Path) -> None:
    """The API down 25 s: the agents fell back to their safe caps (582 W), and the leader retaking the Lease
    started from the plans' old 700 W, raising the GPUs for seconds until its first slow tick."""
    plans, _ = two_nodes(emu, tmp_path)
    for node, reported in (("gpu-a", 582.0), ("gpu-b", -5.0)):  # -5: no limit a GPU of 200-700 W can be at
        plan = emu.get(GROUP, PLANS, node)
        assert plan is not None
        plan["spec"] = {"sequence": 7, "limits_w": {"0": 700.0}, "ttl_s": 60.0}
        plan["status"]["gpus"][0]["limit_w"] = reported
        emu.delete(GROUP, PLANS, node)
        emu.stored(GROUP, PLANS, plan)  # (stored: a report the schema would refuse is in storage before it)
    assert plans.adopt() == {"gpu-a": {"0": 582.0}, "gpu-b": {"0": 700.0}}  # a report not read holds nothing lower
    assert plans.flush(1.0, 2000.0) == []  # the first renewal: the plans as adopted, not the old 700 W
    assert limits(emu, "gpu-a") == {"0": 582.0} and limits(emu, "gpu-b") == {"0": 700.0}


def test_the_limit_metric_says_what_a_node_runs_not_a_limit_only_queued(emu: KubeEmulator, tmp_path: Path) -> None:
    """On a host the limits a tick set are exported as it sets them (the device read them back); node plans only
    queue theirs for a flush that may fail, so the metric keeps saying what each node's agent reports running."""
    plans, gpu = two_nodes(emu, tmp_path)
    registry = CollectorRegistry()
    fast = FastLoop(PowerSettings(budget_w=900.0), 3, plans, plans, OwnMetrics(registry), lambda kind, message: None)
    assert plans.ensure({}) == ["gpu-a", "gpu-b"]
    fast.tick(1.0)  # 2 x 700 W limits over a 900-W budget: cut, queued, not written
    assert sum(g.power_limit_w for g in fast.samples) <= 900.0
    assert [registry.get_sample_value("wattscale_gpu_power_limit_watts", {"gpu": str(gpu[node])})
            for node in ("gpu-a", "gpu-b")] == [700.0, 700.0]


def test_blind_the_limit_metric_keeps_what_the_nodes_last_reported(emu: KubeEmulator, tmp_path: Path) -> None:
    """Every agent silent: the failsafe's caps go into the node plans, queued for a flush; the metric had said them
    as in force, though no node may ever have taken them."""
    plans, gpu = two_nodes(emu, tmp_path)
    registry = CollectorRegistry()
    fast = loop(plans, registry)
    assert plans.ensure({}) == ["gpu-a", "gpu-b"]
    fast.tick(1.0)
    for t in range(30, 40):  # no beat since 1: past stale_after_s, the readings are lost
        fast.tick(float(t))
    assert registry.get_sample_value("wattscale_power_failsafe") == 1.0  # safe caps queued: 200 W each
    assert [registry.get_sample_value("wattscale_gpu_power_limit_watts", {"gpu": str(gpu[node])})
            for node in ("gpu-a", "gpu-b")] == [700.0, 700.0]


def test_a_raise_is_fitted_around_a_cut_its_agent_has_not_applied(emu: KubeEmulator, tmp_path: Path) -> None:
    """Caps on a 1,000-W site: code's GPU (gpu-b) cut 700 -> 300 W, chat's (gpu-a) raised 300 -> 700 W on that room.
    Both were written in one tick, and an agent cut off from the operator's endpoint (or that had not fetched yet)
    held 700 W while the other took the raise: 1,400 W of caps. The raise waits a tick; a GPU whose agent still
    reports its old limit counts at it, the raise fitted around it; once the cut is reported in force, it lands."""
    plans, gpu = two_nodes(emu, tmp_path)

    def report(node: str, limit_w: float, beat: int) -> None:
        emu.patch(GROUP, PLANS, node, {"status": {"beat": beat, "gpus": [
            {"index": 0, "uuid": f"GPU-{node}", "name": "H100", "power_w": 150.0, "energy_j": 1.0, "limit_w": limit_w,
             "min_w": 200.0, "max_w": 700.0}]}})

    report("gpu-a", 300.0, 2)
    plans.ensure({})
    plans.owners = {("gpu-a", 0): ("chat", "H100-SXM"), ("gpu-b", 0): ("code", "H100-SXM")}
    fast = FastLoop(PowerSettings(budget_w=1000.0, mode="caps", headroom=0.0), 3, plans, plans,
                    OwnMetrics(CollectorRegistry()), lambda kind, message: None)
    fast.plan = Plan.of(1, {"chat": {"H100-SXM": 700.0}, "code": {"H100-SXM": 300.0}}, {"chat": 1, "code": 2})

    def written(node: str) -> float | None:
        return ((emu.get(GROUP, PLANS, node) or {}).get("spec", {}).get("limits_w") or {}).get("0")

    def tick(now: float) -> None:
        fast.tick(now)
        plans.flush(now, fast.governor.threshold_w())

    tick(1.0)
    assert (written("gpu-b"), written("gpu-a")) == (300.0, None)  # the cut; the raise waits for it to be in force
    for t, beat in ((2.0, 3), (3.0, 4)):  # gpu-b's agent reports, still at 700 W: it has not applied the cut
        report("gpu-a", written("gpu-a") or 300.0, beat)  # gpu-a's applies what it is given
        report("gpu-b", 700.0, beat)
        tick(t)
        assert gpu["gpu-b"] in plans.unapplied()  # (and gpu-a for a tick, where it was given 298 W)
        assert (written("gpu-a") or 300.0) <= 1000.0 - 700.0  # no raise past the room gpu-b's 700 W leaves
    report("gpu-b", 300.0, 5)
    report("gpu-a", written("gpu-a") or 300.0, 5)
    tick(4.0)
    assert plans.unapplied() == set() and (written("gpu-a") or 0.0) > 690.0  # the raise, within a watt a GPU


def test_a_raise_waits_until_it_fits_whichever_agent_applies_first(emu: KubeEmulator,
                                                                            tmp_path: Path) -> None:
    """gpu-b cut and, on gpu-a, GPU 0 cut and GPU 1 raised in one tick, on a 1,600-W site: gpu-a's own cut goes at
    once; its raise waits while the limits held, the cuts not yet reported, leave no room for it (a ramp or a
    failing node elsewhere held every raise in the cluster while any cut was being written); a raise that fits
    goes at once, beside the cuts."""
    def gpu(index: int, limit_w: float) -> dict[str, Any]:
        return {"index": index, "uuid": f"GPU-{index}", "name": "H100", "power_w": 100.0,
                "energy_j": 1.0, "limit_w": limit_w, "min_w": 200.0, "max_w": 700.0}

    emu.put("", "nodes", {"metadata": {"name": "gpu-b", "labels": {"gpu": "h100"}}})
    for node, gpus_ in (("gpu-a", [gpu(0, 700.0), gpu(1, 300.0), gpu(2, 200.0)]), ("gpu-b", [gpu(3, 300.0)])):
        emu.stored(GROUP, PLANS, {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NodePowerPlan",
                                  "metadata": {"name": node}, "spec": {"sequence": 1},
                                  "status": {"beat": 1, "gpus": gpus_}})
    (tmp_path / "kc").write_text(yaml.safe_dump(emu.kubeconfig("operator")))
    plans = NodePlans(api_client(str(tmp_path / "kc")), 60.0, 0.6, 10.0)
    at = {plans.where[g.index]: g.index for g in plans.sample(0.0)}

    def limits(node: str) -> Any:
        return (emu.get(GROUP, PLANS, node) or {}).get("spec", {}).get("limits_w")

    plans.set_power_limit(at["gpu-b", 3], 200.0)
    plans.set_power_limit(at["gpu-a", 0], 250.0)
    plans.set_power_limit(at["gpu-a", 1], 450.0)  # 700 + 450 + 200 + 300 held: 1,650 W, past 1,600
    plans.set_power_limit(at["gpu-a", 2], 300.0)  # 700 + 300 + 300 + 300: fits
    assert plans.flush(1.0, 1600.0) == []
    assert limits("gpu-b") == {"3": 200.0} and limits("gpu-a") == {"0": 250.0, "2": 300.0}
    plans.sample(1.5)  # no agent has fetched: GPU 2's raise counts as held (the governor had counted it at 200 W
    assert plans.held_w()[at["gpu-a", 2]] == 300.0  # and given its room out again), GPU 0's cut not yet
    assert plans.held_w()[at["gpu-a", 0]] == 700.0 and plans.unapplied() == {at["gpu-a", 0],
                                                                                          at["gpu-b", 3]}
    emu.patch(GROUP, PLANS, "gpu-a", {"status": {"beat": 2, "gpus": [gpu(0, 250.0), gpu(1, 300.0), gpu(2, 300.0)]}})
    plans.sample(2.0)
    plans.set_power_limit(at["gpu-a", 1], 450.0)  # asked again: 250 + 450 + 300 + 300 now fits
    assert plans.flush(2.0, 1600.0) == [] and limits("gpu-a") == {"0": 250.0, "1": 450.0, "2": 300.0}


def plans_reporting(emu: KubeEmulator, tmp_path: Path, held: dict[str, tuple[float, int]],
                    stored: dict[str, tuple[int, float]] | None = None) -> tuple[NodePlans, dict[str, int]]:
    """One GPU a node; each node's agent reporting (limit, plan_sequence) as `held` says, its plan stored at
    (sequence, limit) as `stored` says (else sequence 1, no limits)."""
    for node in held:
        if node != "gpu-a":  # start()'s
            emu.put("", "nodes", {"metadata": {"name": node, "labels": {"gpu": "h100"}}})
        seq, limit = (stored or {}).get(node, (1, None))
        emu.stored(GROUP, PLANS, {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NodePowerPlan",
                                  "metadata": {"name": node},
                                  "spec": {"sequence": seq, **({"limits_w": {"0": limit}} if limit else {})}})
    (tmp_path / "kc").write_text(yaml.safe_dump(emu.kubeconfig("operator")))
    plans = NodePlans(api_client(str(tmp_path / "kc")), 60.0, 0.6, 10.0)
    report(emu, held, 1)
    return plans, {plans.where[g.index][0]: g.index for g in plans.sample(0.0)}


def report(emu: KubeEmulator, held: dict[str, tuple[float, int]], beat: int, mode: str = "following") -> None:
    for node, (limit_w, seq) in held.items():
        emu.patch(GROUP, PLANS, node, {"status": {"beat": beat, "mode": mode, "plan_sequence": seq, "gpus": [
            {"index": 0, "uuid": f"GPU-{node}", "name": "H100", "power_w": 100.0, "energy_j": 1.0,
             "limit_w": limit_w, "min_w": 200.0, "max_w": 700.0}]}})


def test_a_raise_later_cut_counts_at_the_raise_until_its_agent_reports_the_cut(emu: KubeEmulator,
                                                                              tmp_path: Path) -> None:
    """gpu-a raised to 600 W, then cut to 400: its agent may hold the 600 (applied, not yet reported), where it was
    counted at 400 and gpu-b raised into the difference, 1,200 W of limits on a 1,000-W site. Each GPU counts at the
    most of the plans written since the one its agent reports following (`plan_sequence`)."""
    plans, gpu = plans_reporting(emu, tmp_path, {"gpu-a": (300.0, 1), "gpu-b": (300.0, 1)})
    plans.set_power_limit(gpu["gpu-a"], 600.0)
    assert plans.flush(1.0, 1000.0) == []  # plan 2
    plans.set_power_limit(gpu["gpu-a"], 400.0)
    assert plans.flush(2.0, 1000.0) == []  # plan 3
    plans.sample(2.5)
    assert plans.held_w()[gpu["gpu-a"]] == 600.0
    plans.set_power_limit(gpu["gpu-b"], 500.0)
    assert plans.flush(3.0, 1000.0) == [] and not limits(emu, "gpu-b")  # 600 + 500: no room
    report(emu, {"gpu-a": (400.0, 3), "gpu-b": (300.0, 1)}, 2)  # gpu-a's agent follows plan 3
    plans.sample(4.0)
    plans.set_power_limit(gpu["gpu-b"], 500.0)
    assert plans.flush(4.0, 1000.0) == [] and limits(emu, "gpu-b") == {"0": 500.0}


def test_a_new_leader_counts_the_plan_it_serves_until_its_agent_reports_it(emu: KubeEmulator, tmp_path: Path) -> None:
    """The previous leader wrote gpu-a's plan 7 at 700 W; its agent still reports plan 6 at 300. The new leader starts
    gpu-a from 300 (no cap raised by a take-over), but serves plan 7 until its own write lands: counted at 300, gpu-b
    was raised into room gpu-a's agent was about to take (1,400 W on a 1,000-W site where that write failed)."""
    plans, gpu = plans_reporting(emu, tmp_path, {"gpu-a": (300.0, 6), "gpu-b": (300.0, 1)}, {"gpu-a": (7, 700.0)})
    assert plans.adopt()["gpu-a"] == {"0": 300.0}
    plans.sample(0.5)
    assert plans.held_w()[gpu["gpu-a"]] == 700.0
    emu.fail("PATCH", "nodepowerplans/gpu-a", code=500, times=1)
    plans.set_power_limit(gpu["gpu-b"], 700.0)
    assert len(plans.flush(1.0, 1000.0)) == 1 and not limits(emu, "gpu-b")  # 700 + 700: no room


def test_a_silent_agents_gpu_counts_at_a_raise_written_before_it_fell_silent(emu: KubeEmulator,
                                                                             tmp_path: Path) -> None:
    """A node missing (its agent's status not written) is counted at its GPUs' last readings: one taken before a
    raise was written to it, though the agent may still fetch and apply its plans."""
    plans, gpu = plans_reporting(emu, tmp_path, {"gpu-a": (300.0, 1), "gpu-b": (300.0, 1)})
    plans.set_power_limit(gpu["gpu-a"], 500.0)
    assert plans.flush(9.5, 1000.0) == []
    report(emu, {"gpu-b": (300.0, 1)}, 2)  # gpu-a's agent says nothing more
    listed = {g.index for g in plans.sample(10.5)}
    assert gpu["gpu-a"] not in listed and plans.held_w()[gpu["gpu-a"]] == 500.0



def test_an_agent_in_failsafe_acknowledges_no_plan_it_reports(emu: KubeEmulator, tmp_path: Path) -> None:
    """Past its plan's TTL an agent holds min(limit, safe cap) and still names the plan it stopped applying: read as
    following it, the plan's 600 W raise left the count, gpu-b was raised into it, and the agent took the 600 again
    at its next fetch (1,100 W on a 1,000-W site)."""
    plans, gpu = plans_reporting(emu, tmp_path, {"gpu-a": (300.0, 1), "gpu-b": (300.0, 1)})
    plans.set_power_limit(gpu["gpu-a"], 600.0)
    assert plans.flush(1.0, 1000.0) == []  # plan 2
    report(emu, {"gpu-a": (500.0, 2)}, 2, mode="failsafe")
    plans.sample(2.0)
    assert plans.held_w()[gpu["gpu-a"]] == 600.0
    plans.set_power_limit(gpu["gpu-b"], 500.0)
    assert plans.flush(2.0, 1000.0) == [] and not limits(emu, "gpu-b")  # 600 + 500: no room


def test_a_plan_sequence_past_what_the_operator_wrote_acknowledges_nothing() -> None:
    """A plan deleted and made again starts from 0; its agent, still on the old count, names a later plan."""
    from controller.cluster.limit_room import Unacked

    unacked = Unacked()
    unacked.written("gpu-a", 1, {"0": 600.0})
    unacked.acked("gpu-a", 57, latest=1)
    assert unacked.most("gpu-a", 0, 300.0, 700.0) == 600.0
    unacked.acked("gpu-a", 1, latest=1)
    assert unacked.most("gpu-a", 0, 300.0, 700.0) == 300.0


def test_the_governor_counts_a_silent_agents_gpu_at_a_raise_written_before_it_fell_silent(
        emu: KubeEmulator, tmp_path: Path) -> None:
    """The fast loop counted a missing GPU at its own last reading (300 W), below the 500 W plan its agent may have
    applied: the budget's drop was cut short by 200 W. The metric still says the limit last read."""
    plans, gpu = plans_reporting(emu, tmp_path, {"gpu-a": (300.0, 1), "gpu-b": (300.0, 1)})
    plans.ensure({})
    registry = CollectorRegistry()
    fast = FastLoop(PowerSettings(budget_w=1000.0, headroom=0.0), 3, plans, plans, OwnMetrics(registry),
                    lambda kind, message: None)
    fast.tick(0.5)
    plans.set_power_limit(gpu["gpu-a"], 500.0)
    assert plans.flush(9.5, 1000.0) == []
    report(emu, {"gpu-b": (300.0, 1)}, 2)  # gpu-a's agent says nothing more
    fast.tick(10.5)
    assert fast.draw_w == 500.0 + 100.0  # gpu-a missing, at the most it may hold; gpu-b at its draw
    assert registry.get_sample_value("wattscale_gpu_power_limit_watts", {"gpu": str(gpu["gpu-a"])}) == 300.0


def reporting_with_draw(emu: KubeEmulator, held: dict[str, tuple[float, int]], beat: int) -> None:
    """Each node's agent following its plan, its GPU drawing 5 W under the limit it holds (pressed against it)."""
    for node, (limit_w, seq) in held.items():
        emu.patch(GROUP, PLANS, node, {"status": {"beat": beat, "mode": "following", "plan_sequence": seq, "gpus": [
            {"index": 0, "uuid": f"GPU-{node}", "name": "H100", "power_w": limit_w - 5.0, "energy_j": 1.0,
             "limit_w": limit_w, "min_w": 200.0, "max_w": 700.0}]}})


def three_gpus(emu: KubeEmulator, tmp_path: Path, state: dict[str, tuple[float, int]], services: tuple[str, ...],
               budget_w: float) -> tuple[NodePlans, FastLoop]:
    """gpu-a, gpu-b and gpu-d reporting `state`, held by `services` in that order (priorities in order of first
    appearance, every cap 700 W), and a fast loop over them under `budget_w`."""
    plans, _ = plans_reporting(emu, tmp_path, state)
    plans.ensure({})
    plans.owners = {(node, 0): (svc, "H100-SXM") for node, svc in zip(state, services, strict=True)}
    fast = FastLoop(PowerSettings(budget_w=budget_w, headroom=0.0), 3, plans, plans, OwnMetrics(CollectorRegistry()),
                    lambda kind, message: None)
    names = list(dict.fromkeys(services))
    fast.plan = Plan.of(1, {s: {"H100-SXM": 700.0} for s in names}, {s: k + 1 for k, s in enumerate(names)})
    return plans, fast


def test_a_raise_its_agent_has_not_applied_is_neither_lent_nor_taken_back(emu: KubeEmulator, tmp_path: Path) -> None:
    """Counted at its unacknowledged raise while it still draws under the limit it reads, chat's GPU looked unpressed,
    with room to lend: code, a lower priority, took it back, and with agents two ticks behind chat's limit went up
    and down for good. Judged pressed against the limit it reads, it lends nothing, and climbs to its cap."""
    state = {"gpu-a": (400.0, 1), "gpu-b": (400.0, 1), "gpu-d": (300.0, 1)}
    plans, fast = three_gpus(emu, tmp_path, state, ("chat", "code", "code"), 1200.0)
    served: list[dict[str, tuple[float, int]]] = []
    chat = []
    for k in range(14):
        reporting_with_draw(emu, state, k + 2)
        fast.tick(1.0 + k)
        assert plans.flush(1.0 + k, fast.governor.threshold_w()) == []
        chat.append(limits(emu, "gpu-a")["0"])
        served.append({n: (((emu.get(GROUP, PLANS, n) or {})["spec"].get("limits_w") or {}).get("0", state[n][0]),
                           (emu.get(GROUP, PLANS, n) or {})["spec"]["sequence"]) for n in state})
        if k >= 1:  # each agent applies what it was served two ticks before
            state = served[k - 1]
    assert chat == sorted(chat) and chat[-1] > 690.0, chat  # never taken back; at its cap
    assert sum(limits(emu, n)["0"] for n in state) <= 1200.0


def test_a_budget_drop_while_blind_cuts_a_raise_its_agent_has_not_applied(emu: KubeEmulator, tmp_path: Path) -> None:
    """The readings lost and the budget dropped: the blind cut counted gpu-a at the 300 W its agent reported, not
    the 698 W plan it may apply any moment, and cut nothing until the failsafe's caps (998 W of limits on 700)."""
    plans, _ = plans_reporting(emu, tmp_path, {"gpu-a": (300.0, 1), "gpu-b": (300.0, 1)})
    plans.ensure({})
    plans.owners = {("gpu-a", 0): ("chat", "H100-SXM"), ("gpu-b", 0): ("code", "H100-SXM")}
    fast = FastLoop(PowerSettings(budget_w=1000.0, headroom=0.0), 3, plans, plans, OwnMetrics(CollectorRegistry()),
                    lambda kind, message: None)
    fast.plan = Plan.of(1, {"chat": {"H100-SXM": 700.0}, "code": {"H100-SXM": 300.0}}, {"chat": 1, "code": 2})
    fast.tick(1.0)
    assert plans.flush(1.0, fast.governor.threshold_w()) == [] and limits(emu, "gpu-a")["0"] > 690.0
    report(emu, {"gpu-a": (300.0, 1), "gpu-b": (300.0, 1)}, 2)  # gpu-a's agent has not fetched its plan yet
    fast.tick(2.0)
    assert plans.flush(2.0, fast.governor.threshold_w()) == []
    emu.fail("GET", r"nodepowerplans$", code=500)  # blind
    fast.governor.settings = replace(fast.governor.settings, budget_w=700.0)
    fast.tick(3.0)
    assert plans.flush(3.0, fast.governor.threshold_w()) == [] and not fast.blind.failsafe_on
    assert limits(emu, "gpu-a")["0"] + (limits(emu, "gpu-b") or {"0": 300.0})["0"] <= 700.0 + 1.0


def test_raises_do_not_stack_on_a_gpu_whose_agent_has_not_applied_the_last(emu: KubeEmulator, tmp_path: Path) -> None:
    """Judged pressed against the limit it reads but grown from the one not yet applied, chat's GPU took a step a
    tick on top of raises its agent never applied (460, 529, 608, 700 W), cutting code and batch to pay for them."""
    state = {"gpu-a": (400.0, 1), "gpu-b": (632.0, 1), "gpu-d": (404.0, 1)}
    plans, fast = three_gpus(emu, tmp_path, state, ("chat", "code", "batch"), 1500.0)
    chat = []
    for k in range(8):
        reporting_with_draw(emu, state, k + 2)  # chat's agent never applies a plan: it reads 400 W, pressed
        fast.tick(1.0 + k)
        assert plans.flush(1.0 + k, fast.governor.threshold_w()) == []
        chat.append((limits(emu, "gpu-a") or {}).get("0", 400.0))
        for n in ("gpu-b", "gpu-d"):  # the others apply what they are served at once
            spec = (emu.get(GROUP, PLANS, n) or {})["spec"]
            state[n] = ((spec.get("limits_w") or {}).get("0", state[n][0]), spec["sequence"])
    assert max(chat) <= 400.0 + 60.0 + 1.0, chat  # one step from the 400 W it reads, not a stack of them


def gpu_status(emu: KubeEmulator, node: str, limit_w: float, seq: int, draw_w: float, beat: int) -> None:
    emu.patch(GROUP, PLANS, node, {"status": {"beat": beat, "mode": "following", "plan_sequence": seq, "gpus": [
        {"index": 0, "uuid": f"GPU-{node}", "name": "H100", "power_w": draw_w, "energy_j": 1.0, "limit_w": limit_w,
         "min_w": 200.0, "max_w": 700.0}]}})


def test_a_silent_lagging_gpu_neither_lends_room_nor_ratchets_the_others_under_a_ramp(emu: KubeEmulator,
                                                                                       tmp_path: Path) -> None:
    """Chat's agent silent on a plan below the one written (697 W): lent as its unused room, what it did not draw
    went to code, whose raise the plans never admitted while the written plan counted, so nothing moved; and counted
    at its reading in the ramp's base but whole under the ceiling, it had code and batch cut 5 W a tick, for good."""
    state = {"gpu-a": (400.0, 1), "gpu-b": (500.0, 1), "gpu-d": (400.0, 1)}
    plans, fast = three_gpus(emu, tmp_path, state, ("chat", "code", "batch"), 1600.0)
    for node, (limit_w, seq) in state.items():  # code and batch idle, chat pressed: chat takes the free room
        gpu_status(emu, node, limit_w, seq, 395.0 if node == "gpu-a" else 250.0, 2)
    fast.tick(1.0)
    assert plans.flush(1.0, fast.governor.threshold_w()) == [] and limits(emu, "gpu-a")["0"] > 690.0
    fast.governor.settings = replace(fast.governor.settings, ramp_up_w_per_s=100.0)
    rows = []
    for k in range(2, 12):
        for n in ("gpu-b", "gpu-d"):  # they apply what they are served at once, pressed against it
            spec = (emu.get(GROUP, PLANS, n) or {})["spec"]
            state[n] = ((spec.get("limits_w") or {}).get("0", state[n][0]), spec["sequence"])
            gpu_status(emu, n, state[n][0], state[n][1], state[n][0] - 5.0, k + 1)
        gpu_status(emu, "gpu-a", 400.0, 1, 150.0, k + 1)  # chat's agent never fetches plan 2; its load gone
        fast.tick(float(k))
        assert plans.flush(float(k), fast.governor.threshold_w()) == []
        rows.append(tuple((limits(emu, n) or {}).get("0") for n in state))
    assert rows[-1] == rows[-2] and rows[-1][1] is not None and rows[-1][1] >= 500.0, rows  # settled, code not cut


@pytest.mark.parametrize(("reported", "read"), [(0.25, 0.25), (None, None), (1.5, None), ("x", None), (-0.1, None)])
def test_an_agents_capped_share_reaches_the_governors_sample_where_it_is_a_share(
        emu: KubeEmulator, tmp_path: Path, reported: object, read: float | None) -> None:
    """The CRD's schema refuses a share past [0, 1]; a plan stored under an older CRD, or by hand, is not checked."""
    plans, at = two_nodes(emu, tmp_path)
    plan = emu.get(GROUP, PLANS, "gpu-a") or {}
    gpu = {**plan["status"]["gpus"][0], "capped_share": reported}
    emu.delete(GROUP, PLANS, "gpu-a")
    emu.stored(GROUP, PLANS, {**plan, "metadata": {"name": "gpu-a"}, "status": {"beat": 2, "gpus": [gpu]}})
    (sample,) = [g for g in plans.sample(1.0) if g.index == at["gpu-a"]]
    assert sample.capped_share == read and sample.power_w == 400.0


def test_a_plans_listing_that_trickles_is_a_lost_sample_within_the_tick(emu: KubeEmulator, tmp_path: Path) -> None:
    """The operator reads every node's plan on its fast tick: an API server (or a proxy) trickling that answer a
    byte at a time had held the operator's governor for good (the client's timeout bounds each read). It is a lost
    sample within the tick's share now, and the next reads again."""
    plans, _ = two_nodes(emu, tmp_path, tick_s=0.5)
    emu.fail("GET", "nodepowerplans$", body=b'{"kind": "NodePowerPlanList", "items": []}', trickle_s=0.05, times=1)
    started = time.monotonic()
    with pytest.raises(TelemetryError, match="node plans: API server unreachable or too slow"):
        plans.sample(1.0)
    assert time.monotonic() - started < 1.0
    assert len(plans.sample(2.0)) == 2
