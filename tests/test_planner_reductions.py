"""The allocation builder's own reductions (TP degrees a smaller degree matches, replicas bounded by what the
whole demand needs, the robust dual's even-spread row) keep every optimum: the reduced MILP against the
formulation without them, on random specs where they drop and bound something."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.planner.allocation import AllocationModel
from controller.planner.allocation_spec import AllocationSpec, GpuSpec, ModelSpec, Precision, QueryType, RobustSpec


class Unreduced(AllocationModel):
    """Every TP degree the weights fit, each up to max_replicas: the formulation before the reductions."""

    def replicas(self, j: str, k: tuple[str, str]) -> dict[int, int]:
        g, usable = self.spec.gpus[k[0]], self.spec.mem_util * self.spec.gpus[k[0]].memory_gb
        return {n: self.spec.max_replicas for n in sorted(g.tp_degrees) if self.weights_gb(j, k) <= usable * n}


def spec(rng: np.random.Generator, protection: float) -> AllocationSpec:
    """Two query types, two models, two GPUs at TP 1-8 and two precisions: big enough that some degrees are
    dropped and some replica bounds fall below max_replicas, small enough to solve in well under a second."""
    qs = {f"q{n}": QueryType(
        input_tokens=int(rng.integers(200, 2000)), output_tokens=200, arrival_rate_qph=float(rng.uniform(1e4, 2e5)),
        compute_gflop_per_token=14.0, delay_s_per_token=0.002, error_rate=0.03,
        delay_threshold_s=float(rng.uniform(1.0, 6.0)), error_threshold=float(rng.uniform(0.035, 0.06)),
        unmet_penalty=float(rng.uniform(1e-3, 5e-2)), delay_penalty=float(rng.uniform(0, 1e-4)),
        token_size_gb=2e-6) for n in range(2)}
    gpus = {"small": GpuSpec(0.5, 24, float(rng.uniform(60, 120)), delay_factor=1.8,
                             available=int(rng.integers(4, 20))),
            "big": GpuSpec(2.5, 80, float(rng.uniform(300, 900)), delay_factor=0.6, available=int(rng.integers(2, 9)))}
    precisions = {"fp16": Precision(), "int8": Precision(0.5, 1.8, 0.75, 1.3)}
    models = {"m1": ModelSpec(float(rng.uniform(10, 30)), float(rng.uniform(1e-4, 1e-3))),
              "m2": ModelSpec(float(rng.uniform(20, 60)), float(rng.uniform(1e-4, 1e-3)), delay_factor=1.6,
                              error_factor=0.8)}
    return AllocationSpec(kind="allocation", budget=float(rng.uniform(100, 1500)), storage_rate=1e-4,
                          storage_capacity_gb=300.0, queries=qs, models=models, gpus=gpus, precisions=precisions,
                          rental_period_h=24.0, max_replicas=int(rng.integers(2, 9)),
                          robust=RobustSpec(gamma=float(rng.uniform(0, 1)), protection=protection),
                          token_retention_h=0.25)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), protection=st.sampled_from([0.0, 0.5, 1.0]))
def test_reductions_keep_the_optimal_cost(seed: int, protection: float) -> None:
    s = spec(np.random.default_rng(seed), protection)
    got, want = AllocationModel(s).solve(), Unreduced(s).solve()
    assert got.ok == want.ok
    if got.ok:
        assert got.optimal and want.optimal
        assert got.costs["total"] == pytest.approx(want.costs["total"], rel=1e-6, abs=1e-6)


def test_the_random_specs_exercise_every_reduction() -> None:
    """What the property above compares: degrees dropped, degrees kept above a smaller one, bounds below max."""
    dropped = kept = bounded = 0
    for seed in range(20):
        s = spec(np.random.default_rng(seed), 0.5)
        full, reduced = Unreduced(s), AllocationModel(s)
        for j in s.models:
            for k in s.tiers():
                offered, every = reduced.replicas(j, k), full.replicas(j, k)
                dropped += len(every) - len(offered)
                kept += len(offered) > 1
                bounded += any(r < s.max_replicas for r in offered.values())
    assert dropped and kept and bounded
    assert len(AllocationModel(replace(s, robust=RobustSpec())).lp.lb) < len(Unreduced(s).lp.lb)
