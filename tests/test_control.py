"""The controller's reading of windows: restarts are not demand, nor evidence; an unreachable SLO holds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prometheus_client import CollectorRegistry

from controller.control import Controller
from controller.own_metrics import OwnMetrics
from controller.settings import Settings, load_settings
from controller.telemetry.base import ServiceWindow
from controller.wiring import build_parts
from tuner import Tuner

ROOT = Path(__file__).resolve().parents[1]


class ScriptedVllm:
    """A vLLM source that answers the windows a test hands it, one per service per call."""

    def __init__(self) -> None:
        self.next: dict[str, ServiceWindow] = {}

    def observe(self, now: float, services: list[str]) -> dict[str, ServiceWindow | None]:
        return {s: self.next.get(s) for s in services}


def window(waiting: float = 0.0, steady: bool = True, rate_rps: float = 10.0) -> ServiceWindow:
    return ServiceWindow(window_s=15.0, rate_rps=rate_rps, in_tokens=400.0, out_tokens=200.0, ttft_ms=40.0,
                         itl_ms=12.0, ttft_p95_ms=80.0, itl_p95_ms=20.0, running=20.0, waiting=waiting,
                         kv_usage=0.2, preemptions=0.0, replicas=2, steady=steady)


def controller(tmp_path: Path, settings: Settings | None = None) -> tuple[Controller, ScriptedVllm, CollectorRegistry]:
    text = (ROOT / "config" / "sim.toml").read_text()
    (tmp_path / "w.toml").write_text(text.replace('state_dir = "../var/state"', f'state_dir = "{tmp_path}/s"'))
    s = settings or load_settings(tmp_path / "w.toml")
    parts = build_parts(s)
    vllm, registry = ScriptedVllm(), CollectorRegistry()
    tuner = Tuner(s.state_path, queue_model=s.optimizer.queue_model)
    ctl = Controller(s, parts.gpus, vllm, parts.power, parts.batch, parts.replicas, tuner, OwnMetrics(registry))
    return ctl, vllm, registry


def test_only_a_steady_windows_backlog_is_demand(tmp_path: Path) -> None:
    ctl, vllm, _ = controller(tmp_path)
    drain_s = ctl.settings.optimizer.drain_s
    vllm.next = {"chat": window(waiting=240.0, steady=False)}
    ctl.tick_slow(15.0)
    assert ctl.state["chat"].load.rate_rps == 10.0  # the restart's queue
    vllm.next = {"chat": window(waiting=240.0)}
    ctl.tick_slow(30.0)
    assert ctl.state["chat"].load.rate_rps == 10.0 + 240.0 / drain_s


def test_a_restart_window_and_the_one_after_it_are_not_tuned(tmp_path: Path) -> None:
    ctl, vllm, registry = controller(tmp_path)
    pair = {"pair": "llama-3.1-8b|H100-SXM"}
    for t, steady in ((15.0, False), (30.0, True), (45.0, True)):
        vllm.next = {"chat": window(steady=steady)}
        ctl.tick_slow(t)
    assert registry.get_sample_value("wattscale_tuner_updates_total", {**pair, "result": "transient"}) == 2.0
    assert registry.get_sample_value("wattscale_tuner_updates_total", {**pair, "result": "accepted"}) == 1.0


def test_a_service_no_shape_can_serve_within_its_slo_keeps_what_runs(tmp_path: Path) -> None:
    ctl, vllm, _ = controller(tmp_path)
    s = ctl.settings
    impossible = tuple(dataclasses.replace(svc, ttft_ms=0.5) if svc.name == "code" else svc for svc in s.services)
    ctl.reconfigure(dataclasses.replace(s, services=impossible))
    before = ctl.state["code"].assignment
    vllm.next = {"code": window(rate_rps=5.0)}
    solution = ctl.tick_slow(15.0)
    assert solution is not None
    result = next(r for r in solution.services if r.name == "code")
    assert result.assignment is None and result.reason == "slo"
    assert ctl.state["code"].assignment == before  # not cut to min replicas at the floor cap
