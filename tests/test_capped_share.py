"""How much of a tick a GPU's power limit held its clock: read off NVML's power violation time (the fake driver
keeps it as the real one does, bursts within a second included) and off the simulated GPU's own counter."""

from __future__ import annotations

import math

import numpy as np
import pynvml
import pytest

from actuators.nvml import NvmlDevices
from actuators.nvml_limits import NvmlPowerLimiter
from controller.telemetry.capped import CappedShares
from controller.telemetry.nvml import NvmlGpuSource
from controller.telemetry.sim import SimGpuSource
from simulator.host import SimHost
from simulator.workload import TokenDist, Workload, constant
from tests.fake_pynvml import FakeGpu, FakeNvml


def test_a_share_is_the_counters_rise_over_the_time_stamps() -> None:
    shares = CappedShares()
    assert shares.share("a", 10.0, 3.0) is None  # a first read has nothing to compare with
    assert shares.share("a", 12.0, 3.5) == pytest.approx(0.25)
    assert shares.share("a", 13.0, 5.0) == 1.0  # within [0, 1] whatever a counter's grain
    assert shares.share("a", 13.0, 5.0) is None  # the stamp did not advance
    assert shares.share("a", 14.0, 1.0) is None  # the counter fell: a driver reload started it again
    assert shares.share("a", 15.0, 1.1) == pytest.approx(0.1)  # and it reads on from there
    for at, capped in [(None, 1.0), (16.0, None), (math.nan, 1.0), (17.0, math.inf)]:
        assert shares.share("a", at, capped) is None
    assert shares.share("a", 18.0, 2.0) is None  # a gap starts it again
    assert shares.share("b", 1.0, 0.0) is None and shares.share("b", 2.0, 0.0) == 0.0  # per GPU


def test_nvml_reads_bursts_the_limit_clips_under_a_mean_draw_below_it() -> None:
    """A GPU at 350 W on average whose prompts want 650 W for a fifth of each second, under a 500-W limit:
    its mean reads 50 W under the limit, and the violation time a fifth of each tick."""
    fake = FakeNvml([FakeGpu(demand_mw=300_000, burst_mw=650_000, burst_share=0.2), FakeGpu(demand_mw=300_000)])
    dev = NvmlDevices(fake)
    fake.nvmlInit()
    for i in (0, 1):
        NvmlPowerLimiter(dev).set_power_limit(i, 500.0)
    source = NvmlGpuSource(dev, {0: ("chat", "H100-SXM"), 1: ("chat", "H100-SXM")})
    first = source.sample(0.0)
    assert [s.capped_share for s in first] == [None, None]  # nothing to compare the counter with yet
    clipped, free = source.sample(1.0)
    assert clipped.power_w == pytest.approx(340.0) and clipped.capped_share == pytest.approx(0.2)
    assert free.power_w == 300.0 and free.capped_share == 0.0


@pytest.mark.parametrize("error", [None, pynvml.NVMLError_Unknown, pynvml.NVMLError_InvalidArgument])
def test_a_driver_without_the_counter_or_failing_it_keeps_the_gpus_reading(error: type[Exception] | None) -> None:
    """Any error of this read (not only NotSupported) loses the share alone: it had lost the GPU's whole reading,
    and on a node the limit its plan set."""
    fake = FakeNvml([FakeGpu()])
    if error is None:
        fake.gpus[0].unsupported = {"violation"}
    else:
        fake.fail[("violation", 0)] = error
    fake.nvmlInit()
    source = NvmlGpuSource(NvmlDevices(fake), {})
    source.sample(0.0)
    (s,) = source.sample(1.0)
    assert s.power_w == 450.0 and s.capped_share is None


def test_the_simulated_gpu_counts_the_steps_its_limit_slowed() -> None:
    host = SimHost("H100-SXM", 2, seed=3, start_delay_s=1.0)
    work = Workload(constant(12.0), TokenDist(2000), TokenDist(100), np.random.default_rng(3))
    host.add_service("summaries", "mistral-7b", work, replicas=2, max_num_seqs=64)
    host.set_power_limit(0, 250.0)  # prompts of 2,000 tokens draw far more; GPU 1 keeps its 700 W
    source = SimGpuSource(host)
    host.advance_to(20.0)
    source.sample(host.now_s)
    host.advance_to(60.0)
    held, free = source.sample(host.now_s)
    assert held.capped_share is not None and 0.2 < held.capped_share <= 1.0
    assert free.capped_share == 0.0
    assert held.power_w is not None and held.power_w < 250.0  # its mean under the limit all the same


def test_the_simulated_counter_rises_no_faster_than_time() -> None:
    """A step is accounted whole as it starts; the counter, as NVML's, reads only its part elapsed (read whole, half
    of the ticks of a GPU held at 200 W rose by more than the tick, up to 1.34 s a second)."""
    host = SimHost("H100-SXM", 1, seed=3, start_delay_s=1.0)
    work = Workload(constant(8.0), TokenDist(2000), TokenDist(100), np.random.default_rng(3))
    host.add_service("summaries", "mistral-7b", work, replicas=1, max_num_seqs=64)
    host.set_power_limit(0, 200.0)
    host.advance_to(1.0)
    gpu, rises = host.gpus[0], []
    last = gpu.capped_at_s(1.0)
    for t in range(2, 90):
        host.advance_to(float(t))
        now = gpu.capped_at_s(float(t))
        rises.append(now - last)
        last = now
    assert max(rises) <= 1.0 + 1e-9 and min(rises) >= 0.0 and sum(rises) > 30.0  # held most of the time
