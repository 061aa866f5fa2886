"""One contract suite per backend family, run against every backend of it: power limiters and clock lockers
(dry-run, sim, nvml behind the fake `pynvml` with the real error classes), batch sizers (dry-run, sim, vllm over an
in-memory runner) and GPU sources (sim, nvml). Replica scalers have theirs in test_replica_scalers.py."""

from __future__ import annotations

import pytest
from conftest import small_sim_host
from fake_pynvml import FakeGpu, FakeNvml

from actuators import BatchInForce, BatchSizer, ClockLocker, PermanentActuatorError, PowerLimiter
from actuators.dryrun import DryRunBatchSizer, DryRunClockLocker, DryRunPowerLimiter
from actuators.nvml import NvmlDevices
from actuators.nvml_clocks import NvmlClockLocker
from actuators.nvml_limits import NvmlPowerLimiter
from actuators.sim import SimBatchSizer, SimClockLocker, SimPowerLimiter
from actuators.vllm import VllmBatchSizer
from actuators.vllm_servers import Replica
from controller.telemetry.base import GpuSource
from controller.telemetry.nvml import NvmlGpuSource
from controller.telemetry.sim import SimGpuSource
from simulator.host import SimHost


def sim_host() -> SimHost:
    return small_sim_host(num_gpus=4)


def fake_nvml() -> FakeNvml:
    return FakeNvml([FakeGpu() for _ in range(4)])


# -- power limiters: every GPU here ranges over 200-700 W ----------------------------------------------
@pytest.fixture(params=["dry-run", "sim", "nvml"])
def limiter(request: pytest.FixtureRequest) -> PowerLimiter:
    if request.param == "dry-run":
        return DryRunPowerLimiter(200.0, 700.0)
    if request.param == "sim":
        return SimPowerLimiter(sim_host())
    return NvmlPowerLimiter(NvmlDevices(fake_nvml()), min_interval_s=0.0)


def test_a_limit_is_set_and_returned_as_in_force(limiter: PowerLimiter) -> None:
    assert limiter.set_power_limit(1, 450.0) == pytest.approx(450.0, abs=1.0)
    assert limiter.set_power_limit(1, 300.0) == pytest.approx(300.0, abs=1.0)


def test_a_limit_outside_the_gpus_range_is_held_within_it(limiter: PowerLimiter) -> None:
    assert limiter.set_power_limit(0, 50.0) == pytest.approx(200.0, abs=1.0)
    assert limiter.set_power_limit(0, 5000.0) == pytest.approx(700.0, abs=1.0)


def test_a_gpu_that_is_not_there_is_a_permanent_error(limiter: PowerLimiter) -> None:
    with pytest.raises(PermanentActuatorError):
        limiter.set_power_limit(-1 if isinstance(limiter, DryRunPowerLimiter) else 99, 400.0)


# -- clock lockers: every GPU here tops out at 1980 MHz --------------------------------------------------
@pytest.fixture(params=["dry-run", "sim", "nvml"])
def locker(request: pytest.FixtureRequest) -> ClockLocker:
    if request.param == "dry-run":
        return DryRunClockLocker()
    if request.param == "sim":
        return SimClockLocker(sim_host())
    return NvmlClockLocker(NvmlDevices(fake_nvml()), min_interval_s=0.0)


def test_supported_clocks_are_sorted_and_end_at_the_gpus_maximum(locker: ClockLocker) -> None:
    clocks = locker.supported_clocks_mhz(1)
    assert list(clocks) == sorted(set(clocks)) and len(clocks) > 10 and clocks[-1] == 1980


def test_a_lock_is_snapped_to_a_supported_clock_at_or_below_the_one_asked(locker: ClockLocker) -> None:
    clocks = locker.supported_clocks_mhz(1)
    assert locker.lock_clock(1, clocks[-5]) == clocks[-5]
    assert locker.lock_clock(1, clocks[-5] + 7) == clocks[-5]
    assert locker.lock_clock(1, 10) == clocks[0]
    assert locker.lock_clock(1, 99_999) == clocks[-1]


def test_a_reset_unlocks_and_may_be_repeated(locker: ClockLocker) -> None:
    locker.lock_clock(2, 1200)
    locker.reset_clock(2)
    locker.reset_clock(2)
    assert locker.lock_clock(2, 1500) <= 1500


def test_a_clock_on_a_gpu_that_is_not_there_is_a_permanent_error(locker: ClockLocker) -> None:
    with pytest.raises(PermanentActuatorError):
        locker.lock_clock(-1 if isinstance(locker, DryRunClockLocker) else 99, 1200)


# -- batch sizers ---------------------------------------------------------------------------------------
class InMemoryRunner:
    """Restarts that come up healthy at once (the process side has its own tests in test_vllm_actuator.py)."""

    supervises = False

    def restart(self, replica: Replica, max_num_seqs: int) -> None:
        pass

    def exited(self, name: str) -> int | None:
        return None

    def close(self) -> None:
        pass


@pytest.fixture(params=["dry-run", "sim", "vllm"])
def sizer(request: pytest.FixtureRequest) -> BatchSizer:
    if request.param == "dry-run":
        return DryRunBatchSizer({"chat": 32, "batch": 32})
    if request.param == "sim":
        return SimBatchSizer(sim_host())
    reps = {name: (Replica(f"{name}-0", "http://127.0.0.1:9/health", ()),) for name in ("chat", "batch")}
    return VllmBatchSizer(InMemoryRunner(), reps, {"chat": 32, "batch": 32}, poll_s=0.01,
                          probe=lambda url, timeout_s: True)


def settle(sizer: BatchSizer, service: str) -> BatchInForce:
    """The value in force once any rollout in flight has ended (the sim host's restarts take no time here)."""
    if isinstance(sizer, VllmBatchSizer):
        sizer.wait(5.0)
    if isinstance(sizer, SimBatchSizer):
        sizer.host.advance_to(sizer.host.now_s + 1.0)
    return sizer.get_max_batch(service)


def test_reads_back_what_runs(sizer: BatchSizer) -> None:
    assert sizer.get_max_batch("chat") == BatchInForce(32)


def test_a_change_is_read_back_once_it_has_rolled_out(sizer: BatchSizer) -> None:
    sizer.set_max_batch("chat", 64)
    assert settle(sizer, "chat") == BatchInForce(64)
    assert sizer.get_max_batch("batch") == BatchInForce(32)


def test_unknown_services_and_values_below_one_are_permanent(sizer: BatchSizer) -> None:
    with pytest.raises(PermanentActuatorError):
        sizer.set_max_batch("chat", 0)
    if not isinstance(sizer, DryRunBatchSizer):  # dry-run takes any name it is asked for
        with pytest.raises(PermanentActuatorError):
            sizer.set_max_batch("nope", 32)
    with pytest.raises(PermanentActuatorError):
        sizer.get_max_batch("nope")


# -- GPU sources ----------------------------------------------------------------------------------------
@pytest.fixture(params=["sim", "nvml"])
def source(request: pytest.FixtureRequest) -> GpuSource:
    if request.param == "sim":
        return SimGpuSource(sim_host())
    h100 = "H100-SXM"
    return NvmlGpuSource(NvmlDevices(fake_nvml()), {0: ("chat", h100), 1: ("chat", h100), 2: ("batch", h100)})


def test_every_gpu_comes_once_with_a_stable_uuid_and_a_limit_within_its_range(source: GpuSource) -> None:
    first, second = source.sample(1.0), source.sample(2.0)
    assert len({g.uuid for g in first}) == len(first) == 4
    assert [(g.index, g.uuid) for g in first] == [(g.index, g.uuid) for g in second]
    for g in first:
        assert g.min_limit_w <= g.power_limit_w <= g.max_limit_w
        assert g.power_w is None or 0.0 <= g.power_w <= g.power_limit_w + 1.0


def test_gpus_carry_the_service_that_runs_on_them(source: GpuSource) -> None:
    owners = [g.service for g in source.sample(1.0)]
    assert owners.count("chat") == 2 and owners.count("batch") == 1
