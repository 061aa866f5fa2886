"""The simulator's ground truth for scenarios: mixed GPU types, a GPU lost, an engine drift, bursts, a
heavy-tailed prompt mix, and a request log that loses no request."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actuators.base import PermanentActuatorError
from actuators.sim import SimPowerLimiter, SimReplicaScaler
from controller.telemetry.sim import SimGpuSource
from simulator.host import SimHost
from simulator.traffic import Burst, HeavyTail, with_bursts
from simulator.workload import TokenDist, Workload, constant

MIXED = ["H100-SXM", "H100-SXM", "L40S", "L40S"]


def mixed_host(rate_rps: float = 4.0) -> SimHost:
    host = SimHost("H100-SXM", 0, seed=3, start_delay_s=0.0, gpu_types=MIXED, log_requests=True)
    workload = Workload(constant(rate_rps), TokenDist(200, 0.5), TokenDist(50, 0.5), np.random.default_rng(1))
    host.add_service("chat", "llama-3.1-8b", workload, 1, 32)
    return host


def test_a_mixed_host_scales_each_variant_on_its_own_gpus() -> None:
    host = mixed_host()
    scaler = SimReplicaScaler(host)
    assert scaler.set_replicas("chat", "L40S", 5) == 2  # only two L40S
    assert scaler.get_replicas("chat", "H100-SXM") == 1
    assert sorted(r.gpu.spec.name for r in host.services["chat"].replicas) == ["H100-SXM", "L40S", "L40S"]
    assert scaler.set_replicas("chat", "H100-SXM", 0) == 0
    assert [r.gpu.spec.name for r in host.services["chat"].replicas] == ["L40S", "L40S"]
    with pytest.raises(PermanentActuatorError, match="no A100-SXM4 GPUs"):
        scaler.get_replicas("chat", "A100-SXM4")
    host.advance_to(30.0)
    log = host.services["chat"].requests
    assert len(log.finished().arrival_s) > 0.8 * len(log.arrivals())


def test_a_lost_gpu_is_gone_from_listing_limits_and_service_and_no_request_is_lost() -> None:
    host = mixed_host(rate_rps=8.0)
    SimReplicaScaler(host).set_replicas("chat", "H100-SXM", 2)
    host.advance_to(20.0)
    host.lose_gpu(0)
    assert [r.gpu.index for r in host.services["chat"].replicas] == [1]
    assert 0 not in {g.index for g in SimGpuSource(host).sample(20.0)}
    with pytest.raises(PermanentActuatorError, match="gpu 0"):
        SimPowerLimiter(host).set_power_limit(0, 400)
    assert all(g.index != 0 for g in host.free_gpus())
    energy = host.gpus[0].energy_j
    host.advance_to(40.0)
    assert host.gpus[0].energy_j == energy  # off the bus: it draws nothing we can count
    arrivals = host.services["chat"].requests.arrivals()
    host.services["chat"].workload.rate = constant(0.0)
    host.advance_to(120.0)
    done = host.services["chat"].requests.finished()
    assert len(done.arrival_s) == len(arrivals) == len(set(done.arrival_s.tolist()))


def test_an_engine_drift_slows_every_step_of_running_and_new_replicas() -> None:
    host = mixed_host()
    before = host.services["chat"].replicas[0].engine.cost
    host.slow_down("chat", 1.3)
    after = host.services["chat"].replicas[0].engine.cost
    assert after.weights_ms == pytest.approx(1.3 * before.weights_ms)
    assert after.kv_capacity_tokens == before.kv_capacity_tokens
    SimReplicaScaler(host).set_replicas("chat", "H100-SXM", 2)
    assert host.services["chat"].replicas[1].engine.cost.overhead_ms > 1.2 * 3.0  # the pair's overhead is >= 3 ms


def test_bursts_multiply_the_rate_only_while_they_last() -> None:
    rate = with_bursts(constant(2.0), [Burst(10.0, 5.0, 3.0), Burst(12.0, 10.0, 2.0)])
    assert [rate(t) for t in (9.9, 10.0, 12.0, 14.9, 15.0, 22.0)] == [2.0, 6.0, 12.0, 12.0, 4.0, 2.0]


def test_a_heavy_tail_draws_long_prompts_at_its_share_up_to_the_context() -> None:
    dist = HeavyTail(TokenDist(400, 0.5), tail_share=0.05, tail_min=4000, alpha=1.3, maximum=32768)
    values = dist.draw(np.random.default_rng(0), 200_000)
    assert np.mean(values >= 4000) == pytest.approx(0.05, abs=0.005)
    assert values.max() == 32768
    assert np.median(values) == pytest.approx(360, rel=0.1)


def test_an_engine_drift_slows_a_draining_replica_too() -> None:
    host = SimHost("H100-SXM", 3, seed=3, start_delay_s=0.0, shutdown_timeout_s=30.0, log_requests=True)
    host.add_service("chat", "llama-3.1-8b", Workload(constant(8.0), TokenDist(200, 0.5), TokenDist(200, 0.5),
                                                      np.random.default_rng(1)), 2, 32)
    host.advance_to(10.0)
    host.scale("chat", 1)
    [gone] = host.services["chat"].leaving
    before = gone.replica.engine.cost.weights_ms
    host.slow_down("chat", 1.3)
    assert gone.replica.engine.cost.weights_ms == pytest.approx(1.3 * before)


def test_a_burst_of_zero_silences_the_rate_whatever_else_is_in_force_and_a_rate_of_zero_stays_zero() -> None:
    """Past a float the product read inf, and inf x 0 NaN: a poisson draw then raised mid-run."""
    many = [Burst(10.0, 1.0, 100.0)] * 160
    for bursts in ([*many, Burst(10.0, 1.0, 0.0)], [Burst(10.0, 1.0, 0.0), *many]):
        assert with_bursts(constant(2.0), bursts)(10.5) == 0.0
    assert with_bursts(constant(0.0), many)(10.5) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(1, 10), st.sampled_from([0.0, 0.5, 2.0, 3.0])),
                max_size=8), st.floats(0.0, 35.0))
def test_bursts_read_as_steps_multiply_as_every_burst_in_force(spans: list[tuple[int, int, float]], t: float) -> None:
    """The step function a burst list is read as (a search, not a pass over every burst) multiplies the rate by every
    burst in force at t, as the pass did."""
    bursts = [Burst(float(a), float(d), f) for a, d, f in spans]
    expected = math.prod(b.factor for b in bursts if b.start_s <= t < b.start_s + b.duration_s)
    assert with_bursts(constant(2.0), bursts)(t) == pytest.approx(2.0 * expected)
