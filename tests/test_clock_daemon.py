"""The daemon with locked clocks: the plan's clock reaches the GPUs and the tuner's windows, a bad clock
setting is refused by name, and GPUs that cannot lock clocks leave the daemon on caps alone (logged once,
counted), the power limits set every tick all the same."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pynvml
import pytest
from fake_pynvml import FakeGpu, FakeNvml
from prometheus_client import CollectorRegistry

from controller.config_loader import ConfigError
from controller.control import Controller
from controller.own_metrics import OwnMetrics
from controller.plan import Plan
from controller.settings import load_settings
from controller.wiring import build_parts
from simulator.host import SimHost
from tuner import Tuner

LEVELS = 'power_levels = [0.6, 0.75, 0.9, 1.0]'
CLOCKS = {LEVELS: f'{LEVELS}\nclock_levels = [0.6, 0.8, 1.0]', 'objective = "token_speed"': 'objective = "energy"'}


def controller(path: Path, nvml: FakeNvml | None = None) -> tuple[Controller, CollectorRegistry, SimHost | None]:
    s = load_settings(path)
    parts = build_parts(s, nvml=nvml)
    registry = CollectorRegistry()
    return Controller(s, parts.gpus, parts.vllm, parts.power, parts.batch, parts.replicas, Tuner(s.state_path),
                      OwnMetrics(registry), clocks=parts.clocks), registry, parts.host


def test_the_planned_clock_is_locked_on_the_services_gpus_and_labels_its_windows(
        sim_config: Callable[..., Path]) -> None:
    ctl, registry, host = controller(sim_config({**CLOCKS, 'power = "sim"': 'power = "sim"\nclocks = "sim"'}))
    assert host is not None
    locked_seen = False
    for t in range(1, 91):
        host.advance_to(float(t))
        ctl.tick_fast(float(t))
        if t % 15 == 0:
            ctl.tick_slow(float(t))
        if t % 15 == 1:  # the fast tick after a plan has applied it
            plan = ctl.fast.plan
            for g in host.gpus:
                owner = next((s for s, svc in host.services.items() if any(r.gpu is g for r in svc.replicas)), None)
                share = None if owner is None else plan.clock_fraction(owner, "H100-SXM")
                if share is not None:
                    locked_seen = True
                    assert g.locked_clock_mhz is not None and abs(g.locked_clock_mhz / 1980 - share) <= 15 / 1980
    assert locked_seen, "the energy objective locked no clock on this plant"
    fitted = [f for f in ctl.tuner.filters.values() if any(o.sm_clock_fraction for o in f.clock.recent)]
    assert fitted, "no window reached the tuner with its clock"
    assert registry.get_sample_value("wattscale_errors_total", {"kind": "clock_actuator"}) == 0.0


@pytest.mark.parametrize(("replacements", "field"), [
    ({'power_levels = [0.6, 0.75, 0.9, 1.0]': 'power_levels = [0.6, 0.75, 0.9, 1.0]\nclock_levels = [0.5, 1.0]'},
     r"optimizer\.clock_levels"),
    ({'power_levels = [0.6, 0.75, 0.9, 1.0]': 'power_levels = [0.6, 0.75, 0.9, 1.0]\nclock_levels = [0.05]',
      'power = "sim"': 'power = "sim"\nclocks = "sim"'}, r"optimizer\.clock_levels"),
    ({'power = "sim"': 'power = "sim"\nclocks = "turbo"'}, r"actuators\.clocks"),
    ({LEVELS: f'{LEVELS}\nclock_min_saving = 0.7'}, r"optimizer\.clock_min_saving: must be in \[0, 0\.5\], got 0\.7"),
])
def test_a_bad_clock_setting_is_refused_naming_its_field(sim_config: Callable[..., Path],
                                                         replacements: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        load_settings(sim_config(replacements))


PLAN = Plan.of(1, {"chat": {"H100-SXM": 400.0}, "code": {"H100-SXM": 500.0}}, {"chat": 1, "code": 2},
               {"chat": {"H100-SXM": 0.6}, "code": {"H100-SXM": 0.8}})


def nvml_config(sim_config: Callable[..., Path]) -> Path:
    """config/sim.toml on two NVML GPUs (the fake's), one per service, with clock levels and the nvml locker."""
    return sim_config({**CLOCKS, 'gpu_source = "sim"': 'gpu_source = "nvml"', 'vllm_source = "sim"':
                       'vllm_source = "prometheus"', 'power = "sim"': 'power = "nvml"\nclocks = "nvml"',
                       'batch = "sim"': 'batch = "dry-run"', 'replicas = "sim"': 'replicas = "dry-run"',
                       'name = "chat"\nmodel = "llama-3.1-8b"': 'name = "chat"\nmodel = "llama-3.1-8b"\ngpus = [0]',
                       'name = "code"\nmodel = "qwen2.5-14b"': 'name = "code"\nmodel = "qwen2.5-14b"\ngpus = [1]'})


@pytest.mark.parametrize("gpu", [FakeGpu(unsupported={"lock"}), FakeGpu(unsupported={"supported"})])
def test_gpus_without_locked_clocks_leave_the_daemon_on_caps_alone(sim_config: Callable[..., Path], gpu: FakeGpu,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNvml([gpu, FakeGpu()])
    ctl, registry, _ = controller(nvml_config(sim_config), fake)
    assert ctl.clock_levels() == (0.6, 0.8, 1.0)
    ctl.fast.plan = PLAN
    with caplog.at_level(logging.WARNING):
        for t in range(1, 6):
            ctl.tick_fast(float(t))
    assert ctl.clock_levels() == (1.0,) and ctl.fast.clocks is not None
    assert "not supported" in (ctl.fast.clocks.off or "")
    assert (ctl.fast.clocks.off or "").startswith("GPU 0 ") and "GPU 0: GPU 0" not in ctl.fast.clocks.off  # once
    assert registry.get_sample_value("wattscale_errors_total", {"kind": "clock_actuator"}) == 1.0
    assert sum("running on power caps alone" in r.getMessage() for r in caplog.records) == 1
    assert all(g.locked_mhz is None for g in fake.gpus)  # what was locked before the fall-back is unlocked
    assert [g.limit_mw for g in fake.gpus] == [400_000, 500_000]  # the governor set the limits all along


@pytest.mark.parametrize("error", [pynvml.NVMLError_Timeout, OSError])
def test_a_transient_clock_failure_is_retried_and_clocks_stay_on(sim_config: Callable[..., Path],
                                                                 error: type[Exception]) -> None:
    fake = FakeNvml([FakeGpu(), FakeGpu()])
    ctl, registry, _ = controller(nvml_config(sim_config), fake)
    ctl.fast.plan = PLAN
    fake.fail[("lock", 0)] = error
    ctl.tick_fast(1.0)
    assert fake.gpus[0].locked_mhz is None and fake.gpus[1].locked_mhz == (1575, 1575)
    del fake.fail[("lock", 0)]
    for t in range(2, 8):  # the retry waits out its delay (5 s for an NVML timeout)
        ctl.tick_fast(float(t))
    assert fake.gpus[0].locked_mhz == (1185, 1185) and ctl.clock_levels() == (0.6, 0.8, 1.0)
    assert registry.get_sample_value("wattscale_errors_total", {"kind": "clock_actuator"}) == 1.0


def test_a_lock_left_by_an_earlier_run_is_reset_where_the_plan_leaves_the_clock_free(
        sim_config: Callable[..., Path]) -> None:
    fake = FakeNvml([FakeGpu(), FakeGpu()])
    fake.gpus[1].locked_mhz = (990, 990)  # a crash left GPU 1 locked at half clock
    ctl, _, _ = controller(nvml_config(sim_config), fake)
    ctl.fast.plan = Plan.of(1, {"chat": {"H100-SXM": 400.0}, "code": {"H100-SXM": 500.0}}, {"chat": 1, "code": 2})
    ctl.tick_fast(1.0)
    assert fake.gpus[1].locked_mhz is None and ctl.fast.clocks is not None and ctl.fast.clocks.share(1) == 1.0
