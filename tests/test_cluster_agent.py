"""The node agent, stepped with explicit times against the API emulator and a fake `pynvml` raising the real error
classes: it follows a renewed plan, fails closed (safe caps, never a rise) when the plan is absent, stale or
unreadable, survives NVML errors GPU by GPU, and restores the default limits on release (on exit, asked). Its plan
comes from the operator's plan endpoint (controller/cluster/plan_server.py, here serving the plan stored in the
emulator), which reviews the agent's token with the emulator and serves only the node the token names."""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest
import yaml
from cluster_fixtures import AGENT, NODE, PLAN_KEY, agent_token, plan_keys, plan_server, start
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fake_pynvml import FakeGpu, FakeNvml
from kube_emulator import API_AUDIENCE, KubeEmulator

from actuators.kubernetes import api_client
from actuators.nvml import NvmlDevices
from controller.cluster.agent import NodeAgent
from controller.cluster.plan_server import PlanServer
from controller.cluster.plan_signing import NONCE_HEADER, SIGNATURE_HEADER, PlanKeys, new_nonce, sign
from controller.cluster.resources import GROUP, PLANS


@pytest.fixture
def emu(tmp_path: Any) -> Iterator[KubeEmulator]:
    e = KubeEmulator(watch_s=1.0)
    start(e)
    yield e
    e.close()


@pytest.fixture
def served(emu: KubeEmulator, tmp_path: Path) -> Iterator[PlanServer]:
    """The operator's plan endpoint serving what the emulator stores as each node's plan, as the leader."""
    path = tmp_path / "operator-kubeconfig"
    path.write_text(yaml.safe_dump(emu.kubeconfig("operator")))
    with plan_server(api_client(str(path))) as server:
        server.attach(lambda node: (emu.get(GROUP, PLANS, node) or {}).get("spec"), lambda: True)
        yield server


def agent_on(emu: KubeEmulator, nvml: FakeNvml, tmp_path: Any, server: PlanServer | int, token_file: str = "",
             keys: PlanKeys | None = None) -> NodeAgent:
    """The agent asking `server` (or whatever listens on that loopback port) for its plan, verifying with `keys`
    (default: the operator's public key)."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(emu.kubeconfig("agent")))
    token_file = token_file or agent_token(emu, tmp_path / "token")
    port = server if isinstance(server, int) else server.port
    return NodeAgent(NODE, NvmlDevices(nvml), api_client(str(path)), f"http://127.0.0.1:{port}", token_file,
                     keys or plan_keys(tmp_path), safe_cap_share=0.6, default_ttl_s=10.0, timeout_s=1.0)


def put_plan(emu: KubeEmulator, sequence: int, limits_w: dict[str, float], safe_w: dict[str, float] | None = None,
             release: bool = False) -> None:
    spec = {"sequence": sequence, "ttl_s": 10.0, "limits_w": limits_w, "safe_caps_w": safe_w or {},
            "release": release}
    if emu.get(GROUP, PLANS, NODE) is None:
        emu.put(GROUP, PLANS, {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NodePowerPlan",
                               "metadata": {"name": NODE}, "spec": spec})
    else:
        emu.patch(GROUP, PLANS, NODE, {"spec": spec})


def limits(nvml: FakeNvml) -> list[float]:
    return [g.limit_mw / 1000 for g in nvml.gpus]


def test_no_plan_sets_safe_caps_without_raising_a_limit(emu: KubeEmulator, tmp_path: Any, served: PlanServer) -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu(limit_mw=300_000)])
    agent = agent_on(emu, nvml, tmp_path, served)
    assert agent.step(0.0) == "failsafe"
    assert limits(nvml) == [420.0, 300.0]  # 0.6 x 700 W; the 300 W GPU is not raised to it
    assert agent.metrics.failsafe.labels(NODE)._value.get() == 1.0


def test_a_fifo_as_the_token_file_is_no_plan_not_a_stalled_agent(emu: KubeEmulator, tmp_path: Any,
                                                                  served: PlanServer) -> None:
    """The token is read at every request: a FIFO in its place blocked the agent's step for ever, its GPUs left
    at whatever limits they had."""
    os.mkfifo(tmp_path / "token-fifo")
    nvml = FakeNvml([FakeGpu()])
    agent = agent_on(emu, nvml, tmp_path, served, str(tmp_path / "token-fifo"))
    done: list[str] = []
    worker = threading.Thread(target=lambda: done.append(agent.step(0.0)), daemon=True)
    worker.start()
    worker.join(10.0)
    assert done == ["failsafe"] and limits(nvml) == [420.0]


def test_a_stale_plan_without_safe_caps_uses_the_policys_safe_cap_share(emu: KubeEmulator, tmp_path: Any,
                                                                        served: PlanServer) -> None:
    """The plan carries the PowerPolicy's safe_cap_share: it, not the agent's flag, sets a GPU's safe cap where the
    plan has none for it (a GPU the operator has not read yet)."""
    nvml = FakeNvml([FakeGpu(), FakeGpu()])
    agent = agent_on(emu, nvml, tmp_path, served)
    put_plan(emu, 1, {"0": 650.0, "1": 650.0}, {"0": 300.0})
    emu.patch(GROUP, PLANS, NODE, {"spec": {"safe_cap_share": 0.5}})
    assert agent.step(0.0) == "following"
    assert agent.step(11.0) == "failsafe" and limits(nvml) == [300.0, 350.0]  # 0.5 x 700 W, not 0.6


def test_follows_a_renewed_plan_then_fails_closed_when_it_goes_stale(emu: KubeEmulator, tmp_path: Any,
                                                                     served: PlanServer) -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu()])
    agent = agent_on(emu, nvml, tmp_path, served)
    put_plan(emu, 1, {"0": 650.0, "1": 350.0}, {"0": 300.0, "1": 250.0})
    assert agent.step(0.0) == "following" and limits(nvml) == [650.0, 350.0]
    put_plan(emu, 2, {"0": 500.0, "1": 400.0}, {"0": 300.0, "1": 250.0})
    assert agent.step(8.0) == "following" and limits(nvml) == [500.0, 400.0]
    status = (emu.get(GROUP, PLANS, NODE) or {})["status"]
    assert status["mode"] == "following" and status["plan_sequence"] == 2 and len(status["gpus"]) == 2
    first_j = status["gpus"][0]["energy_j"]  # the counter, the costly read, comes every 10 s: read at 0, kept
    assert first_j is not None and nvml.gpus[0].energy_mj / 1000 > first_j
    assert status["gpus"][0]["limit_w"] == 500.0 and status["gpus"][0]["uuid"].startswith("GPU-")
    assert agent.step(17.0) == "following"  # 9 s since sequence 2: within the 10 s TTL
    assert (emu.get(GROUP, PLANS, NODE) or {})["status"]["gpus"][0]["energy_j"] > first_j  # read again at 17
    assert agent.step(18.5) == "failsafe" and limits(nvml) == [300.0, 250.0]  # the plan's safe caps
    put_plan(emu, 3, {"0": 520.0, "1": 420.0}, {"0": 300.0, "1": 250.0})
    assert agent.step(19.0) == "following" and limits(nvml) == [520.0, 420.0]


def test_an_unreachable_operator_fails_closed_after_the_ttl(emu: KubeEmulator, tmp_path: Any,
                                                             served: PlanServer) -> None:
    nvml = FakeNvml([FakeGpu()])
    agent = agent_on(emu, nvml, tmp_path, served)
    put_plan(emu, 1, {"0": 600.0}, {"0": 350.0})
    assert agent.step(0.0) == "following"
    served.close()
    assert agent.step(5.0) == "following" and limits(nvml) == [600.0]
    assert agent.step(11.0) == "failsafe" and limits(nvml) == [350.0]
    assert agent.metrics.errors.labels("plan")._value.get() == 2


def test_nvml_errors_are_survived_gpu_by_gpu(emu: KubeEmulator, tmp_path: Any, served: PlanServer) -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu(), FakeGpu()])
    nvml.fail[("set", 1)] = pynvml.NVMLError_NoPermission
    nvml.fail[("name", 2)] = pynvml.NVMLError_GpuIsLost
    agent = agent_on(emu, nvml, tmp_path, served)
    put_plan(emu, 1, {"0": 500.0, "1": 500.0, "2": 500.0})
    assert agent.step(0.0) == "following"
    assert limits(nvml) == [500.0, 700.0, 700.0]  # GPU 1 refused, GPU 2 unreadable; GPU 0 set
    assert agent.metrics.errors.labels("gpu1")._value.get() == 1
    assert agent.metrics.errors.labels("gpu2")._value.get() == 1
    assert [g["index"] for g in (emu.get(GROUP, PLANS, NODE) or {})["status"]["gpus"]] == [0]


@pytest.mark.parametrize("restore", [False, True])
def test_release_restores_the_default_limits_and_exit_keeps_the_budgets_unless_asked(
        emu: KubeEmulator, tmp_path: Any, served: PlanServer, restore: bool) -> None:
    """An exit restored the defaults: every DaemonSet rollout or eviction lifted a node's GPUs to them, while the
    operator, hearing nothing, counted them at their last reported limits."""
    nvml = FakeNvml([FakeGpu(), FakeGpu()])
    agent = agent_on(emu, nvml, tmp_path, served)
    agent.restore_on_exit = restore
    put_plan(emu, 1, {"0": 400.0, "1": 400.0})
    agent.step(0.0)
    assert limits(nvml) == [400.0, 400.0]
    put_plan(emu, 2, {}, release=True)
    assert agent.step(1.0) == "released" and limits(nvml) == [700.0, 700.0]
    assert agent.step(60.0) == "released" and limits(nvml) == [700.0, 700.0]  # no renewal needed to stay so
    put_plan(emu, 3, {"0": 450.0, "1": 450.0})
    agent.step(2.0)
    agent.close()
    assert limits(nvml) == ([700.0, 700.0] if restore else [450.0, 450.0]) and not nvml.initialised


def test_the_agent_command_serves_healthz_while_its_loop_steps(emu: KubeEmulator, tmp_path: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`wattscale agent` on a fake NVML (no operator answering: it steps on at its safe caps) answers /healthz 200
    while its loop steps; the DaemonSet's liveness probe reads it (tests/test_deploy_cluster.py)."""
    from conftest import free_port

    from controller.cli import main

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([FakeGpu()]))
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(emu.kubeconfig("agent")))
    port, answers = free_port(), []

    def probe() -> None:
        time.sleep(1.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2.0) as answer:
            answers.append((answer.status, answer.read()))

    prober = threading.Thread(target=probe)
    prober.start()
    assert main(["agent", "--node", NODE, "--kubeconfig", str(path), "--metrics-port", str(port), "--duration",
                 "3", "--interval-s", "0.5", "--operator-url", f"http://127.0.0.1:{free_port()}",
                 "--token-file", agent_token(emu, tmp_path / "token")]) == 0
    prober.join(5.0)
    assert answers == [(200, b"ok\n")]


def test_the_agent_command_survives_a_gpu_count_that_fails_as_it_starts(emu: KubeEmulator, tmp_path: Any,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """NVML's device count failing (a GPU off the bus) as the agent starts: its start-up line counted the GPUs outside
    any handling and the agent ended with a traceback, a crash loop in its DaemonSet (a new user's trial). The loop
    survives the same error at every step; now the line says it and the agent steps on."""
    from controller.cli import main

    nvml = FakeNvml([FakeGpu(), FakeGpu()])
    nvml.fail[("count", -1)] = pynvml.NVMLError_GpuIsLost
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(emu.kubeconfig("agent")))
    with caplog.at_level(logging.INFO, logger="wattscale.agent"):
        assert main(["agent", "--node", NODE, "--kubeconfig", str(path), "--metrics-port", "0", "--duration", "1",
                     "--interval-s", "0.5", "--operator-url", "http://127.0.0.1:1",
                     "--token-file", str(tmp_path / "none")]) == 0
    assert any("no GPU count (" in r.getMessage() for r in caplog.records), caplog.text


def test_the_agent_command_without_nvml_fails_with_one_line(emu: KubeEmulator, tmp_path: Any,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from controller.cli import main

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # a GPU host: the command would set real limits
        pynvml.nvmlShutdown()
        pytest.skip("NVML is present here")
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(emu.kubeconfig("agent")))
    assert main(["agent", "--node", NODE, "--kubeconfig", str(path), "--metrics-port", "0", "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wattscale: agent: NVML init: ") and len(err.splitlines()) == 1


def ask(server: PlanServer, node: str, token: str) -> int:
    """The HTTP status the plan endpoint answers a GET of `node`'s plan with `token` (and a nonce)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/v1/nodes/{node}/plan",
                                     headers={**headers, NONCE_HEADER: new_nonce()})
    try:
        with urllib.request.urlopen(request, timeout=2.0) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_only_the_agents_own_node_is_served_and_tokens_are_reviewed_once_a_minute(
        emu: KubeEmulator, tmp_path: Any, served: PlanServer) -> None:
    """The agent follows its own node's plan, its token re-read at every request (the kubelet rotates it);
    another node's agent token is refused that plan (403), so are another ServiceAccount's token (403) and the
    agent's token for the API server's audience or an unknown one (401). One TokenReview per token a minute."""
    nvml = FakeNvml([FakeGpu()])
    token_file = agent_token(emu, tmp_path / "token")
    agent = agent_on(emu, nvml, tmp_path, served, token_file)
    put_plan(emu, 1, {"0": 480.0})
    assert agent.step(0.0) == "following" and limits(nvml) == [480.0]
    agent_token(emu, tmp_path / "token")  # rotated: the next request sends the new token
    put_plan(emu, 2, {"0": 460.0})
    assert agent.step(1.0) == "following" and limits(nvml) == [460.0]
    own = (tmp_path / "token").read_text()
    other = agent_token(emu, tmp_path / "other", node="gpu-b")
    assert ask(served, "gpu-b", Path(other).read_text()) == 404  # its own node: no plan yet
    assert ask(served, NODE, Path(other).read_text()) == 403
    wrong = {"another account": ("system:serviceaccount:llm:default", (served.reviewer.audience,), NODE),
             "the API server's audience": (AGENT, (API_AUDIENCE,), NODE),
             "no node in the token": (AGENT, (served.reviewer.audience,), None)}
    codes = {why: ask(served, NODE, Path(agent_token(emu, tmp_path / "t", node, user, aud)).read_text())
             for why, (user, aud, node) in wrong.items()}
    assert codes == {"another account": 403, "the API server's audience": 401, "no node in the token": 403}
    assert ask(served, NODE, "forged") == 401 and ask(served, NODE, "") == 401
    assert [ask(served, NODE, own) for _ in range(3)] == [200] * 3
    reviews = [p for t, m, p in emu.requests if m == "POST" and p.endswith("/tokenreviews")]
    assert len(reviews) == 2 + 1 + 3 + 1  # each token once: two of the agent's, the other node's, three, forged
    assert {t for t, m, p in emu.requests if p.endswith("/tokenreviews")} == {"operator"}


def test_a_standby_answers_503_and_the_agent_holds_its_plan_then_fails_safe(
        emu: KubeEmulator, tmp_path: Any, served: PlanServer) -> None:
    """Only the Lease holder serves: elsewhere every plan request is answered 503 and /readyz too (the Service
    routes to the leader). An agent answered 503 keeps its last plan until the TTL, then sets the safe caps."""
    leading = [True]
    served.attach(lambda node: (emu.get(GROUP, PLANS, node) or {}).get("spec"), lambda: leading[0])
    nvml = FakeNvml([FakeGpu()])
    agent = agent_on(emu, nvml, tmp_path, served)
    put_plan(emu, 1, {"0": 600.0}, {"0": 350.0})
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/readyz", timeout=2.0) as answer:
        assert answer.status == 200
    assert agent.step(0.0) == "following" and limits(nvml) == [600.0]
    leading[0] = False
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{served.port}/readyz", timeout=2.0)
    assert refused.value.code == 503
    assert ask(served, NODE, (tmp_path / "token").read_text()) == 503
    assert agent.step(9.0) == "following" and limits(nvml) == [600.0]  # the last plan, within its 10 s TTL
    assert agent.step(10.5) == "failsafe" and limits(nvml) == [350.0]
    assert agent.metrics.errors.labels("plan")._value.get() == 2
    leading[0] = True
    put_plan(emu, 2, {"0": 500.0}, {"0": 350.0})
    assert agent.step(11.0) == "following" and limits(nvml) == [500.0]


def test_a_failed_token_review_answers_503_while_a_reviewed_token_is_still_served(
        emu: KubeEmulator, tmp_path: Any, served: PlanServer) -> None:
    """The API server failing the TokenReview: a token not yet reviewed is answered 503 (not 401: it may be
    good), and asked about again only after a few seconds; a token reviewed within the minute is served."""
    put_plan(emu, 1, {"0": 480.0})
    known = Path(agent_token(emu, tmp_path / "known")).read_text()
    assert ask(served, NODE, known) == 200
    emu.fail("POST", r"/tokenreviews$", code=500)
    fresh = Path(agent_token(emu, tmp_path / "fresh")).read_text()
    assert [ask(served, NODE, fresh) for _ in range(3)] == [503] * 3
    assert ask(served, NODE, known) == 200
    assert sum(p.endswith("/tokenreviews") for _, _, p in emu.requests) == 2  # the known token's, one failed


def test_no_raise_is_written_beside_a_failed_cut_and_nothing_queued_is_lost(emu: KubeEmulator,
                                                                              tmp_path: Path) -> None:
    """The fast loop raises gpu-a (300 -> 600 W) only because it cut gpu-b (700 -> 200 W). gpu-b's plan write
    fails: gpu-a's raise waits, queued, while gpu-b waits its backoff (a 500: 10 s, then 15, a quarter of the 60 s
    TTL), and gpu-b counts at the 700 W it holds (`unapplied`), so the fast loop asks no raise on its room (one
    node in backoff had held every raise in the cluster); once its cut is reported in force, gpu-a's raise lands."""
    from controller.cluster.nodes import NodePlans

    def status(limit_w: float, beat: int = 1) -> dict[str, Any]:
        return {"beat": beat, "gpus": [{"index": 0, "uuid": f"GPU-{limit_w:.0f}", "name": "H100", "power_w": 100.0,
                                        "energy_j": 1.0, "limit_w": limit_w, "min_w": 100.0, "max_w": 700.0}]}

    for node, limit_w in (("gpu-a", 300.0), ("gpu-b", 700.0)):
        emu.stored(GROUP, PLANS, {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NodePowerPlan",
                                  "metadata": {"name": node}, "spec": {"sequence": 1}, "status": status(limit_w)})
    (tmp_path / "kc").write_text(yaml.safe_dump(emu.kubeconfig("operator")))
    plans = NodePlans(api_client(str(tmp_path / "kc")), 60.0, 0.6, 10.0)
    gpu = {plans.where[g.index][0]: g.index for g in plans.sample(0.0)}
    plans.set_power_limit(gpu["gpu-b"], 200.0)
    emu.fail("PATCH", "nodepowerplans/gpu-b", code=500, times=2)

    def limits(node: str) -> Any:
        return (emu.get(GROUP, PLANS, node) or {}).get("spec", {}).get("limits_w")

    def patches() -> int:  # of gpu-b's plan (gpu-a's may be written meanwhile: its safe caps, not its raise)
        return sum(m == "PATCH" and "gpu-b" in path for _, m, path in emu.requests)

    held = {"gpu-a": 300.0, "gpu-b": 700.0}  # what each agent reports holding

    def tick(now: float) -> list[str]:
        """What the fast loop asks: gpu-a's raise while gpu-b's cut is counted done (it fits the raise on it)."""
        for node, limit_w in held.items():
            emu.patch(GROUP, PLANS, node, {"status": status(limit_w, int(now * 10))})
        plans.sample(now)
        if gpu["gpu-b"] not in plans.unapplied():
            plans.set_power_limit(gpu["gpu-a"], 600.0)
        return plans.flush(now, 1000.0)

    plans.set_power_limit(gpu["gpu-a"], 600.0)  # the first tick fitted it on the cut
    assert len(plans.flush(1.0, 1000.0)) == 1 and not limits("gpu-a") and limits("gpu-b") is None
    assert patches() == 1 and plans.unapplied() == {gpu["gpu-b"]}  # queued, not written: at its 700 W
    assert tick(2.0) == [] and tick(10.9) == []  # in its backoff: not tried
    assert patches() == 1 and not limits("gpu-a") and plans.pending == {"gpu-b": {"0": 200.0}}  # the raise dropped
    assert len(tick(11.0)) == 1 and patches() == 2  # the second failure: 15 s more
    assert tick(25.9) == [] and patches() == 2
    assert tick(26.0) == [] and limits("gpu-b") == {"0": 200.0} and not limits("gpu-a")  # not applied yet
    held["gpu-b"] = 200.0  # gpu-b's agent fetches its plan and applies it
    assert tick(27.0) == [] and tick(28.0) == []
    assert limits("gpu-a") == {"0": 600.0} and limits("gpu-b") == {"0": 200.0}


@pytest.mark.parametrize("spec", [
    {"sequence": 2, "ttl_s": 10.0, "limits_w": {"0": 500.0, "1": "abc"}},
    {"sequence": 2, "ttl_s": "x", "limits_w": {"0": 500.0}},
    {"sequence": 2, "ttl_s": 10**400, "limits_w": {"0": 500.0}},
    {"sequence": 2, "ttl_s": 10.0, "limits_w": [500.0, 400.0]},
    {"sequence": 2, "ttl_s": 10.0, "limits_w": {"zero": 500.0}},
    {"sequence": 2, "ttl_s": 10.0, "limits_w": {}, "safe_caps_w": {"0": "abc"}},
    {"sequence": "2", "ttl_s": 10.0, "limits_w": {"0": 500.0}},
    {"sequence": 2, "ttl_s": 10.0, "limits_w": {"0": 500.0}, "release": "yes"},
    {"sequence": 2, "ttl_s": 10.0, "limits_w": {"0": 5e9}},
    {"sequence": 2, "ttl_s": 10.0, "limits_w": {"0": 20_000.0}},  # no GPU's limit: past telemetry/plausible.py's bound
    {"sequence": 2, "ttl_s": 10.0, "limits_w": {"1": 500.0, "0001": 250.0}},  # one GPU twice: the later had won
])
def test_a_plan_the_agent_cannot_read_is_an_unreadable_plan_not_a_crash(
        emu: KubeEmulator, tmp_path: Any, served: PlanServer, spec: dict[str, Any]) -> None:
    """Each of these raised out of the agent's step (ValueError, OverflowError, AttributeError), and its exit put
    the GPUs back at their default limits: failing open. Now the plan is refused whole, the last one read holds
    until its TTL, then the safe caps."""
    nvml = FakeNvml([FakeGpu(), FakeGpu()])
    agent = agent_on(emu, nvml, tmp_path, served)
    serving = {"spec": {"sequence": 1, "ttl_s": 10.0, "limits_w": {"0": 600.0, "1": 600.0},
                        "safe_caps_w": {"0": 300.0, "1": 300.0}}}
    served.attach(lambda node: serving["spec"], lambda: True)
    assert agent.step(0.0) == "following" and limits(nvml) == [600.0, 600.0]
    serving["spec"] = spec
    assert agent.step(5.0) == "following" and limits(nvml) == [600.0, 600.0]
    assert agent.step(11.0) == "failsafe" and limits(nvml) == [300.0, 300.0]
    assert agent.metrics.errors.labels("plan")._value.get() == 2
    assert "plan" in agent.failing


def test_an_answer_nested_thousands_deep_is_an_unreadable_plan(emu: KubeEmulator, tmp_path: Any, served: PlanServer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A body past the parser's recursion limit (a proxy's, or a forged answer) raised RecursionError out of step."""
    import controller.cluster.agent as agent_module
    from controller.http_fetch import HttpAnswer

    nvml = FakeNvml([FakeGpu()])
    agent = agent_on(emu, nvml, tmp_path, served)
    deep = b"[" * 100_000  # signed: the operator's own key, so only the parse can refuse it

    def deep_answer(url: str, headers: dict[str, str], *args: Any, **kwargs: Any) -> HttpAnswer:
        return HttpAnswer(200, {SIGNATURE_HEADER.lower(): sign(PLAN_KEY, NODE, headers[NONCE_HEADER], deep)}, deep)

    monkeypatch.setattr(agent_module, "http_request", deep_answer)
    assert agent.step(0.0) == "failsafe" and limits(nvml) == [420.0]
    assert agent.metrics.errors.labels("plan")._value.get() == 1


def test_a_client_that_sends_a_byte_a_second_holds_up_no_agent(served: PlanServer, monkeypatch: pytest.MonkeyPatch,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    """The endpoint served one connection at a time, with a timeout per read: a client that dripped its header a
    byte every 1.5 s held every agent's request (and the readiness probe) for as long as it liked. Now each
    connection has its thread and is cut REQUEST_S after it was accepted; a client gone early is no traceback."""
    import socket
    import time

    monkeypatch.setattr(served.server, "request_s", 1.5)
    slow = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    slow.sendall(b"GET /readyz HTTP/1.1\r\n")
    t0 = time.monotonic()
    dripped = threading.Event()

    def drip() -> None:
        with contextlib.suppress(OSError):
            while time.monotonic() - t0 < 4.0 and not dripped.is_set():
                slow.sendall(b"X")
                time.sleep(0.3)

    threading.Thread(target=drip, daemon=True).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/readyz", timeout=5) as answer:
            assert answer.status == 200 and time.monotonic() - t0 < 1.0
        assert slow.recv(4096) == b"" and time.monotonic() - t0 < 3.0  # cut, not served for ever
    finally:
        dripped.set()
        slow.close()
    for _ in range(3):  # gone before the answer
        gone = socket.create_connection(("127.0.0.1", served.port), timeout=5)
        gone.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        gone.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/readyz", timeout=5) as answer:
        assert answer.status == 200
    assert "Traceback" not in capfd.readouterr().err


def test_a_slow_status_write_holds_up_the_next_limits_a_step_at_most(emu: KubeEmulator, tmp_path: Any,
                                                                      served: PlanServer) -> None:
    """The status report waited its full 5 s on an API server answering 10 s late, and the next plan's cut reached
    the GPUs that much later (`agent` bounds the report's wait by its step interval)."""
    nvml = FakeNvml([FakeGpu(), FakeGpu()])
    agent = agent_on(emu, nvml, tmp_path, served)
    agent.timeout_s, agent.report_timeout_s = 5.0, 0.5  # the command's: its default, and a step of 0.5 s
    emu.fail("PATCH", f"/nodepowerplans/{NODE}/status$", delay_s=10.0)
    put_plan(emu, 1, {"0": 400.0, "1": 400.0})
    started = time.monotonic()
    assert agent.step(0.0) == "following" and limits(nvml) == [400.0, 400.0]
    put_plan(emu, 2, {"0": 300.0, "1": 300.0})
    agent.step(1.0)
    assert limits(nvml) == [300.0, 300.0] and time.monotonic() - started < 3.0
    assert agent.metrics.errors.labels("report")._value.get() == 2


Forgery = Callable[[str], tuple[int, bytes, dict[str, str]]]
"""The agent's nonce -> the status, body and headers an impostor answers with."""


@contextlib.contextmanager
def impostor(forge: Forgery) -> Iterator[int]:
    """Whoever answers in the operator's place (a pod spoofing its Service), on a loopback port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            status, body, headers = forge(self.headers.get(NONCE_HEADER, ""))
            self.send_response(status)
            for name, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)


RENEWALS = itertools.count(101)


def lifted(node: str = NODE) -> bytes:
    """A plan lifting GPU 0 to 700 W, renewed (its sequence new at every answer), as the operator writes one."""
    return json.dumps({"apiVersion": f"{GROUP}/v1alpha1", "kind": "NodePowerPlan", "metadata": {"name": node},
                       "spec": {"sequence": next(RENEWALS), "ttl_s": 10.0, "limits_w": {"0": 700.0}}}).encode()


def relayed(served: PlanServer, token: str, nonce: str) -> tuple[bytes, str]:
    """The operator's real answer (body, signature) to a request with `token` and `nonce`: what a man in the
    middle gets by passing the agent's request on."""
    request = urllib.request.Request(f"http://127.0.0.1:{served.port}/v1/nodes/{NODE}/plan",
                                     headers={"Authorization": f"Bearer {token}", NONCE_HEADER: nonce})
    with urllib.request.urlopen(request, timeout=2.0) as answer:
        return answer.read(), answer.headers[SIGNATURE_HEADER]


def test_an_answer_not_signed_by_the_operator_for_this_request_is_never_applied(
        emu: KubeEmulator, tmp_path: Any, served: PlanServer) -> None:
    """Whoever answers in the operator's place served plans that lifted a node's limits, and the agent applied
    them. Now each answer must carry the operator's signature over this node, this request's nonce and its exact
    bytes: an unsigned plan, one signed by another key, a real answer replayed, the operator's answer to this very
    request altered by the man in the middle, the operator's own answer for another node (relayed with this
    agent's nonce), and an unsigned 404 (which had dropped the plan's safe caps for the agent's own, uncounted)
    are each an unreadable plan. The last plan holds to its TTL, then the plan's safe caps: the GPU is never
    lifted. The same impostor signing with the operator's key for this request is followed (the rig is sound:
    the signature is what refuses)."""
    put_plan(emu, 1, {"0": 500.0}, {"0": 350.0})
    own = Path(agent_token(emu, tmp_path / "token")).read_text()
    old_body, old_signature = relayed(served, own, new_nonce())
    other_key = Ed25519PrivateKey.generate()

    def altered(nonce: str) -> tuple[int, bytes, dict[str, str]]:
        body, signature = relayed(served, own, nonce)
        assert b'"0": 500.0' in body or b'"0":500.0' in body
        return 200, body.replace(b"500.0", b"700.0"), {SIGNATURE_HEADER: signature}

    forgeries: dict[str, Forgery] = {
        "unsigned": lambda nonce: (200, lifted(), {}),
        "another key": lambda nonce: (200, body := lifted(), {SIGNATURE_HEADER: sign(other_key, NODE, nonce, body)}),
        "not base64": lambda nonce: (200, lifted(), {SIGNATURE_HEADER: "%%%"}),
        "replayed": lambda nonce: (200, old_body, {SIGNATURE_HEADER: old_signature}),
        "altered": altered,
        "another node's": lambda nonce: (200, body := lifted("gpu-b"),
                                         {SIGNATURE_HEADER: sign(PLAN_KEY, "gpu-b", nonce, body)}),
        "an unsigned 404": lambda nonce: (404, b'{"error": "no plan for node gpu-a"}', {}),
    }
    for why, forge in forgeries.items():
        nvml = FakeNvml([FakeGpu()])
        agent = agent_on(emu, nvml, tmp_path, served)
        assert agent.step(0.0) == "following" and limits(nvml) == [500.0], why
        with impostor(forge) as port:
            agent.plan_url = f"http://127.0.0.1:{port}/v1/nodes/{NODE}/plan"
            assert agent.step(5.0) == "following" and limits(nvml) == [500.0], why  # the last plan, in its TTL
            assert agent.step(11.0) == "failsafe" and limits(nvml) == [350.0], why  # its safe cap, not 0.6 x 700
        assert agent.metrics.errors.labels("plan")._value.get() == 2, why
    with impostor(lambda nonce: (200, body := lifted(), {SIGNATURE_HEADER: sign(PLAN_KEY, NODE, nonce, body)})) as port:
        nvml = FakeNvml([FakeGpu()])
        agent = agent_on(emu, nvml, tmp_path, port)
        assert agent.step(0.0) == "following" and limits(nvml) == [700.0]


def test_the_operators_signed_404_is_no_plan(emu: KubeEmulator, tmp_path: Any, served: PlanServer) -> None:
    """The operator's own answer that it has no plan for the node, signed, is read as before: the agent's safe
    caps at once, no error."""
    nvml = FakeNvml([FakeGpu()])
    agent = agent_on(emu, nvml, tmp_path, served)
    assert agent.step(0.0) == "failsafe" and limits(nvml) == [420.0]
    assert agent.metrics.errors.labels("plan")._value.get() == 0 and agent.last is None


def test_plan_keys_are_read_again_as_their_file_changes_through_a_rotation(
        emu: KubeEmulator, tmp_path: Any, served: PlanServer, caplog: pytest.LogCaptureFixture) -> None:
    """No key file yet (a ConfigMap not made, a wrong path): the agent runs, every plan unverified, the GPU at its
    safe cap, logged once. The file written, the next step follows, no restart. A rotation: the new public key
    beside the old, the operator switched to the new, the old removed, the agent following throughout. A block
    cut short (a bad paste) is refused whole and the keys in force are kept; had it been read as one key fewer,
    the operator's switch would have sent every agent to its safe caps."""
    put_plan(emu, 1, {"0": 500.0}, {"0": 350.0})
    missing = PlanKeys(str(tmp_path / "keys" / "plan.pub"))
    nvml = FakeNvml([FakeGpu()])
    agent = agent_on(emu, nvml, tmp_path, served, keys=missing)
    assert agent.step(0.0) == "failsafe" and limits(nvml) == [420.0]
    assert agent.step(1.0) == "failsafe" and caplog.text.count("no plan verifies: the GPUs hold their safe caps") == 1
    assert agent.metrics.errors.labels("plan_keys")._value.get() == 2
    (tmp_path / "keys").mkdir()
    plan_keys(tmp_path / "keys", name="plan.pub")
    assert agent.step(2.0) == "following" and limits(nvml) == [500.0] and "plan_keys" not in agent.failing
    new = Ed25519PrivateKey.generate()
    stranger = agent_on(emu, FakeNvml([FakeGpu()]), tmp_path, served, keys=plan_keys(tmp_path, new, name="new.pub"))
    assert stranger.step(0.0) == "failsafe" and "signature does not verify with the plan keys" in caplog.text
    both = plan_keys(tmp_path / "keys", PLAN_KEY, new, name="plan.pub").path
    cut = Path(both).read_bytes().rsplit(b"-----END", 1)[0]
    Path(both).write_bytes(cut)
    put_plan(emu, 2, {"0": 480.0}, {"0": 350.0})
    assert agent.step(3.0) == "following" and limits(nvml) == [480.0]  # the old key kept
    assert "2 PEM blocks begin, 1 public keys end" in caplog.text and len(agent.plan_keys.keys) == 1
    plan_keys(tmp_path / "keys", PLAN_KEY, new, name="plan.pub")
    put_plan(emu, 3, {"0": 460.0}, {"0": 350.0})
    assert agent.step(4.0) == "following" and len(agent.plan_keys.keys) == 2
    served.signing_key = new
    put_plan(emu, 4, {"0": 450.0}, {"0": 350.0})
    assert agent.step(5.0) == "following" and limits(nvml) == [450.0]
    plan_keys(tmp_path / "keys", new, name="plan.pub")
    put_plan(emu, 5, {"0": 440.0}, {"0": 350.0})
    assert agent.step(6.0) == "following" and limits(nvml) == [440.0] and len(agent.plan_keys.keys) == 1


def test_the_agent_reports_the_share_of_time_each_limit_held_its_gpus_clock(emu: KubeEmulator, tmp_path: Any,
                                                                             served: PlanServer) -> None:
    """GPU 0 draws 300 W but its prompts want 650 W a quarter of each second, under a 500-W plan: its mean reads under
    the limit, and the operator learns from the report how much of the time the limit bit."""
    nvml = FakeNvml([FakeGpu(demand_mw=300_000, burst_mw=650_000, burst_share=0.25), FakeGpu(demand_mw=300_000)])
    agent = agent_on(emu, nvml, tmp_path, served)
    put_plan(emu, 1, {"0": 500.0, "1": 500.0})
    agent.step(0.0)
    assert [g["capped_share"] for g in (emu.get(GROUP, PLANS, NODE) or {})["status"]["gpus"]] == [None, None]
    agent.step(1.0)
    gpus = (emu.get(GROUP, PLANS, NODE) or {})["status"]["gpus"]
    assert [g["capped_share"] for g in gpus] == [pytest.approx(0.25), 0.0] and gpus[0]["power_w"] < 500.0


def test_a_node_plans_limit_is_written_a_tenth_of_a_watt_down_never_up(emu: KubeEmulator, tmp_path: Path) -> None:
    """The governor fits the limits' sum to a line exactly; a plan's limit rounded to a tenth of a watt was written up
    to 0.05 W over what it fitted, past the line by that a GPU (a review)."""
    from controller.cluster.nodes import NodePlans

    emu.stored(GROUP, PLANS, {"apiVersion": f"{GROUP}/v1alpha1", "kind": "NodePowerPlan", "metadata": {"name": NODE},
                              "spec": {"sequence": 1}, "status": {"beat": 1, "gpus": [
                                  {"index": 0, "uuid": "GPU-0", "name": "H100", "power_w": 100.0, "energy_j": 1.0,
                                   "limit_w": 400.0, "min_w": 100.0, "max_w": 700.0}]}})
    (tmp_path / "kc").write_text(yaml.safe_dump(emu.kubeconfig("operator")))
    plans = NodePlans(api_client(str(tmp_path / "kc")), 60.0, 0.6, 10.0)
    (g,) = plans.sample(0.0)
    plans.set_power_limit(g.index, 371.36)  # round() wrote 371.4
    assert plans.pending == {NODE: {"0": 371.3}}
    plans.set_power_limit(g.index, 371.3)  # a tenth as written stays that tenth (no float error takes it lower)
    assert plans.pending == {NODE: {"0": 371.3}}
