"""What replicas were seen to do bounds what the plan asks of one, whatever the queue model predicts."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from controller.capacity_ceiling import TOPPED_SHARE, TOPPED_TTL_S, Ceilings
from controller.optimizer import AcceleratorType, Assignment, Ceiling, Problem, ServiceDemand, get_solver, solve
from queuemodels import Load, ServiceParams, Targets
from queuemodels.accelerators import CATALOG
from tuner import Observation

RUNS = Assignment("H100-SXM", 2, 128, 630.0)


def window(rps: float, **kw: float) -> Observation:
    """One window's observation, per replica, as the estimator builds it."""
    return Observation(rate_rps=rps, in_tokens=2000, out_tokens=400, max_batch=128, max_queue=0, ttft_ms=150.0,
                       itl_ms=20.0, power_cap_w=330.0, **kw)


def test_a_topped_out_rate_bounds_shapes_no_larger_until_more_is_seen_or_it_expires() -> None:
    c = Ceilings()
    c.observe("batch", RUNS, window(4.0), "accepted", 0.0)
    c.observe("batch", RUNS, window(9.0), "transient", 15.0)  # a restart's window says nothing of capacity
    assert c.of("batch") == {}  # nothing topped out: the model's word alone
    c.observe("batch", RUNS, window(6.0), "saturated", 100.0)
    (topped,) = c.of("batch")["H100-SXM"]
    assert topped.limit_rps(128, 630.0, None) == pytest.approx(TOPPED_SHARE * 6.0)
    assert topped.limit_rps(64, 400.0, 0.7) == pytest.approx(TOPPED_SHARE * 6.0)
    assert topped.limit_rps(256, 630.0, None) is None and topped.limit_rps(128, 700.0, None) is None
    c.observe("batch", RUNS, window(6.8), "unsteady-queue", 200.0)  # the same shape: the higher rate
    assert c.of("batch")["H100-SXM"][0].rps_per_replica == pytest.approx(TOPPED_SHARE * 6.8)
    assert c.record("batch") == {"H100-SXM": {"rps_per_replica": round(TOPPED_SHARE * 6.8, 3), "max_batch": 128,
                                              "cap_w": 630.0, "clock": None}}
    c.observe("batch", RUNS, window(6.5), "accepted", 300.0)  # steady, under what it topped out at: it holds
    assert "H100-SXM" in c.of("batch")
    c.observe("batch", RUNS, window(7.0), "accepted", 400.0)  # more, steadily: it was too low
    assert c.of("batch") == {}
    c.observe("batch", RUNS, window(6.0), "saturated", 500.0)
    c.observe("batch", RUNS, window(1.0), "accepted", 500.0 + TOPPED_TTL_S + 1.0)
    assert c.of("batch") == {}  # expired: an upgrade may have made the engine faster


def test_a_budget_that_rises_clears_what_replicas_topped_out_at_under_the_governor() -> None:
    c = Ceilings()
    c.at_budget(2380.0)
    c.observe("batch", RUNS, window(6.0), "saturated", 0.0)
    c.at_budget(2380.0)
    assert len(c.of("batch")["H100-SXM"]) == 1
    c.at_budget(3400.0)
    assert c.of("batch") == {}


def test_the_plan_puts_no_more_on_a_replica_than_its_ceiling_whatever_the_model_says() -> None:
    """budget-step.toml: the model held one replica good for 9 requests a second of 2,000-token prompts; replicas
    had topped out at 6.7. The plan sizes the service from the ceiling where it is the lower."""
    params = {"H100-SXM": ServiceParams("gen1", 6, 0.05, 4, 0.01)}  # one replica carries 9 rps, it says
    svc = ServiceDemand("batch", 3, Targets(5000, 150), Load(9.0, 2000, 400), params, max_replicas=4)
    h100 = AcceleratorType("H100-SXM", 4, 2.99, CATALOG["H100-SXM"])

    def replicas(s: ServiceDemand) -> int:
        plan = solve(Problem((s,), (h100,), 5000.0, "cost", batch_sizes=(128,), power_levels=(1.0,)),
                     get_solver("milp"))
        got = plan.services[0].assignment
        assert got is not None and plan.services[0].short_rps == 0.0
        return got.replicas

    free = replicas(svc)
    bounded = replicas(replace(svc, ceilings={"H100-SXM": (Ceiling(6.7 * TOPPED_SHARE, 128, 700.0),)}))
    assert free == 1 and bounded == math.ceil(9.0 / (6.7 * TOPPED_SHARE)) == 2
