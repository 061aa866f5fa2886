"""The node agent, stepped with explicit times against the API emulator and a fake `pynvml` raising the real error
classes: it follows a renewed plan, fails closed (safe caps, never a rise) when the plan is absent, stale or
unreadable, survives NVML errors GPU by GPU, and restores the default limits on release and on exit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pynvml
import pytest
from cluster_fixtures import NODE, start
from fake_pynvml import FakeGpu, FakeNvml
from kube_emulator import KubeEmulator

from actuators.kubernetes import api_client
from actuators.nvml import NvmlDevices
from controller.cluster.agent import NodeAgent
from controller.cluster.resources import GROUP, PLANS


@pytest.fixture
def emu(tmp_path: Any) -> Iterator[KubeEmulator]:
    e = KubeEmulator(watch_s=1.0)
    start(e)
    yield e
    e.close()


def agent_on(emu: KubeEmulator, nvml: FakeNvml, tmp_path: Any) -> NodeAgent:
    import yaml

    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(emu.kubeconfig("agent")))
    return NodeAgent(NODE, NvmlDevices(nvml), api_client(str(path)), safe_cap_share=0.6, default_ttl_s=10.0)


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


def test_no_plan_sets_safe_caps_without_raising_a_limit(emu: KubeEmulator, tmp_path: Any) -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu(limit_mw=300_000)])
    agent = agent_on(emu, nvml, tmp_path)
    assert agent.step(0.0) == "failsafe"
    assert limits(nvml) == [420.0, 300.0]  # 0.6 x 700 W; the 300 W GPU is not raised to it
    assert agent.metrics.failsafe.labels(NODE)._value.get() == 1.0


def test_a_stale_plan_without_safe_caps_uses_the_policys_safe_cap_share(emu: KubeEmulator, tmp_path: Any) -> None:
    """The plan carries the PowerPolicy's safe_cap_share: it, not the agent's flag, sets a GPU's safe cap where the
    plan has none for it (a GPU the operator has not read yet)."""
    nvml = FakeNvml([FakeGpu(), FakeGpu()])
    agent = agent_on(emu, nvml, tmp_path)
    put_plan(emu, 1, {"0": 650.0, "1": 650.0}, {"0": 300.0})
    emu.patch(GROUP, PLANS, NODE, {"spec": {"safe_cap_share": 0.5}})
    assert agent.step(0.0) == "following"
    assert agent.step(11.0) == "failsafe" and limits(nvml) == [300.0, 350.0]  # 0.5 x 700 W, not 0.6


def test_follows_a_renewed_plan_then_fails_closed_when_it_goes_stale(emu: KubeEmulator, tmp_path: Any) -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu()])
    agent = agent_on(emu, nvml, tmp_path)
    put_plan(emu, 1, {"0": 650.0, "1": 350.0}, {"0": 300.0, "1": 250.0})
    assert agent.step(0.0) == "following" and limits(nvml) == [650.0, 350.0]
    put_plan(emu, 2, {"0": 500.0, "1": 400.0}, {"0": 300.0, "1": 250.0})
    assert agent.step(8.0) == "following" and limits(nvml) == [500.0, 400.0]
    status = (emu.get(GROUP, PLANS, NODE) or {})["status"]
    assert status["mode"] == "following" and status["plan_sequence"] == 2 and len(status["gpus"]) == 2
    assert status["gpus"][0]["limit_w"] == 500.0 and status["gpus"][0]["uuid"].startswith("GPU-")
    assert agent.step(17.0) == "following"  # 9 s since sequence 2: within the 10 s TTL
    assert agent.step(18.5) == "failsafe" and limits(nvml) == [300.0, 250.0]  # the plan's safe caps
    put_plan(emu, 3, {"0": 520.0, "1": 420.0}, {"0": 300.0, "1": 250.0})
    assert agent.step(19.0) == "following" and limits(nvml) == [520.0, 420.0]


def test_an_unreachable_api_fails_closed_after_the_ttl(emu: KubeEmulator, tmp_path: Any) -> None:
    nvml = FakeNvml([FakeGpu()])
    agent = agent_on(emu, nvml, tmp_path)
    put_plan(emu, 1, {"0": 600.0}, {"0": 350.0})
    assert agent.step(0.0) == "following"
    emu.close()
    agent.timeout_s = 0.5
    assert agent.step(5.0) == "following" and limits(nvml) == [600.0]
    assert agent.step(11.0) == "failsafe" and limits(nvml) == [350.0]
    assert agent.metrics.errors.labels("plan")._value.get() == 2


def test_nvml_errors_are_survived_gpu_by_gpu(emu: KubeEmulator, tmp_path: Any) -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu(), FakeGpu()])
    nvml.fail[("set", 1)] = pynvml.NVMLError_NoPermission
    nvml.fail[("name", 2)] = pynvml.NVMLError_GpuIsLost
    agent = agent_on(emu, nvml, tmp_path)
    put_plan(emu, 1, {"0": 500.0, "1": 500.0, "2": 500.0})
    assert agent.step(0.0) == "following"
    assert limits(nvml) == [500.0, 700.0, 700.0]  # GPU 1 refused, GPU 2 unreadable; GPU 0 set
    assert agent.metrics.errors.labels("gpu1")._value.get() == 1
    assert agent.metrics.errors.labels("gpu2")._value.get() == 1
    assert [g["index"] for g in (emu.get(GROUP, PLANS, NODE) or {})["status"]["gpus"]] == [0]


def test_release_and_exit_restore_the_default_limits(emu: KubeEmulator, tmp_path: Any) -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu()])
    agent = agent_on(emu, nvml, tmp_path)
    put_plan(emu, 1, {"0": 400.0, "1": 400.0})
    agent.step(0.0)
    assert limits(nvml) == [400.0, 400.0]
    put_plan(emu, 2, {}, release=True)
    assert agent.step(1.0) == "released" and limits(nvml) == [700.0, 700.0]
    assert agent.step(60.0) == "released" and limits(nvml) == [700.0, 700.0]  # no renewal needed to stay so
    put_plan(emu, 3, {"0": 450.0, "1": 450.0})
    agent.step(2.0)
    agent.close()
    assert limits(nvml) == [700.0, 700.0] and not nvml.initialised


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
