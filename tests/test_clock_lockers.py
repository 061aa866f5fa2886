"""Clock lockers beyond their contract (in test_actuator_contracts.py): the simulated GPU at its lock, and what
only NVML does: its errors (the real `pynvml` classes), the read-back, the rate limit, reset on exit."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pynvml
import pytest
from conftest import ROOT, small_sim_host
from fake_pynvml import FakeGpu, FakeNvml

from actuators import PermanentActuatorError, TransientActuatorError
from actuators.nvml import NvmlDevices
from actuators.nvml_clocks import NvmlClockLocker
from actuators.sim import SimClockLocker


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_simulated_gpu_runs_at_its_lock() -> None:
    host = small_sim_host(num_gpus=2)
    applied = SimClockLocker(host).lock_clock(0, 1000)
    assert host.gpus[0].run_step(5.0, 5.0, 3.0)[0] == pytest.approx(applied / 1980)
    assert host.gpus[1].run_step(5.0, 5.0, 3.0)[0] == 1.0


# -- nvml only ------------------------------------------------------------------------------------------
def nvml_locker(*gpus: FakeGpu, privileged: bool = True,
                ticks: Ticks | None = None) -> tuple[NvmlClockLocker, FakeNvml]:
    fake = FakeNvml(list(gpus), privileged=privileged)
    return NvmlClockLocker(NvmlDevices(fake), min_interval_s=1.0, clock=ticks or Ticks()), fake


def test_gpus_without_locked_clocks_are_a_permanent_error_saying_so() -> None:
    locker, _ = nvml_locker(FakeGpu(unsupported={"lock"}), FakeGpu(unsupported={"supported"}))
    for index in (0, 1):
        with pytest.raises(PermanentActuatorError, match="not supported"):
            locker.lock_clock(index, 1200)


def test_no_permission_is_permanent_and_names_the_fix() -> None:
    locker, fake = nvml_locker(FakeGpu(), privileged=False)
    with pytest.raises(PermanentActuatorError, match="root or CAP_SYS_ADMIN") as info:
        locker.lock_clock(0, 1200)
    assert isinstance(info.value.__cause__, pynvml.NVMLError_NoPermission)
    assert fake.gpus[0].locked_mhz is None


def test_a_lock_the_driver_ignored_is_caught_by_the_read_back() -> None:
    locker, _ = nvml_locker(FakeGpu(lock_ignored=True))
    with pytest.raises(TransientActuatorError, match="SM clock reads 1980 MHz"):
        locker.lock_clock(0, 1200)
    assert 0 not in locker.locked


def test_raises_are_rate_limited_cuts_are_not_and_an_unchanged_lock_is_not_rewritten() -> None:
    ticks = Ticks()
    locker, fake = nvml_locker(FakeGpu(), ticks=ticks)
    assert locker.lock_clock(0, 1500) == 1500
    assert locker.lock_clock(0, 1500) == 1500 and len(fake.locks) == 1
    assert locker.lock_clock(0, 1800) == 1500  # a raise within the interval waits
    assert locker.lock_clock(0, 1200) == 1200  # a cut goes through at once
    ticks.now = 1.5
    assert locker.lock_clock(0, 1800) == 1800
    assert fake.locks == [(0, 1500, 1500), (0, 1200, 1200), (0, 1800, 1800)]
    assert fake.gpus[0].locked_mhz == (1800, 1800)


def test_reset_on_exit_unlocks_what_this_process_locked_and_reports_failures() -> None:
    locker, fake = nvml_locker(FakeGpu(), FakeGpu(), FakeGpu())
    locker.lock_clock(0, 1200)
    locker.lock_clock(2, 1000)
    fake.fail[("lock", 2)] = pynvml.NVMLError_GpuIsLost
    failed = locker.reset_all()
    assert fake.gpus[0].locked_mhz is None and fake.gpus[1].locked_mhz is None
    assert len(failed) == 1 and "fallen off the bus" in failed[0]


def test_the_gpus_command_shows_supported_and_locked_clocks(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from controller import cli

    fake = FakeNvml([FakeGpu(), FakeGpu(unsupported={"supported"})])
    fake.nvmlInit()
    fake.nvmlDeviceSetGpuLockedClocks(0, 1200, 1200)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert cli.main(["gpus", "--json"]) == 0
    locked, bare = (g["clocks"] for g in json.loads(capsys.readouterr().out))
    assert locked == {"supported_mhz": {"min": 345, "max": 1980, "count": 110}, "held_by_setting": True,
                      "sm_clock_mhz": 1200.0}
    assert bare == {"supported_mhz": None, "held_by_setting": False, "sm_clock_mhz": 1980.0}
    assert cli.main(["gpus"]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert "SM clock 1200 MHz, held by a setting (locked); clocks 345-1980 MHz" in first
    assert second.endswith("SM clock 1980 MHz, not held; no lockable clocks")


def test_on_the_emulator_a_lock_barely_slows_decode_slows_prompts_and_lowers_the_draw() -> None:
    from simulator.probe import Replica, measure
    from simulator.workload import TokenDist

    replica = Replica("llama-3.1-8b", "H100-SXM")

    def at(lock: int | None, prompt: int, output: int, rate: float) -> tuple[float, float, float]:
        m = measure(replica, rate, TokenDist(prompt), TokenDist(output), 64, None, requests=300, locked_clock_mhz=lock)
        return m.ttft_ms, m.itl_ms, m.power_w

    free, locked = at(None, 128, 512, 4.0), at(990, 128, 512, 4.0)
    assert locked[1] < 1.1 * free[1] and locked[2] < 0.9 * free[2]  # memory-bound decode: same pace, less draw
    free, locked = at(None, 3000, 16, 1.0), at(990, 3000, 16, 1.0)
    assert locked[0] > 1.5 * free[0] and locked[2] < 0.9 * free[2]  # compute-bound prompts slow with the clock


def test_a_dry_run_rehearsal_shows_the_unlock_at_exit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A trial: with `clocks = "dry-run"` the locks were logged ("would lock"), and nothing showed the unlock the nvml
    backend makes at exit (`reset_clocks_on_exit`)."""
    from controller.settings import load_settings
    from controller.wiring import build_parts

    text = (ROOT / "config" / "sim.toml").read_text().replace('state_dir = "../var/state"',
                                                               f'state_dir = "{tmp_path}/s"')
    (tmp_path / "w.toml").write_text(text.replace("[actuators]", '[actuators]\nclocks = "dry-run"'))
    parts = build_parts(load_settings(tmp_path / "w.toml"))
    assert parts.clocks is not None
    parts.clocks.lock_clock(0, 990)
    with caplog.at_level(logging.INFO, logger="actuators.dryrun"):
        parts.close()
    assert "dry-run: would unlock GPU 0's SM clock" in caplog.text
