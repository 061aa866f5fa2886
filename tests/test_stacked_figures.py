"""Many operating points solved together give the figures `analyze` gives each alone."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from queuemodels import Load, ModelInputError, PowerProfile, ServerShape, ServiceParams, Targets, get_model
from queuemodels.accelerators import CATALOG

H100 = CATALOG["H100-SXM"]
L40S = CATALOG["L40S"]
GEN1 = ServiceParams("gen1", 12, 0.09, 10, 0.035)
GEN2 = ServiceParams("gen2", 14, 0.002, 0.0004)
STEP = ServiceParams("step", 12, 0.09, 10, 0.035, kappa_ms=1e-4, epsilon_ms=2.0, rho=1.0, budget_tokens=1024.0)
"""A roofline law: not stacked, solved alone."""

shapes = st.builds(ServerShape, st.sampled_from([1, 4, 16, 64, 256, 512]), st.sampled_from([None, 0, 3, 64, 1024]),
                   st.sampled_from([None, 300.0, 450.0, 700.0]), st.sampled_from([None, 0.6, 0.85]))
points = st.lists(st.tuples(shapes, st.floats(0.0, 60.0)), min_size=1, max_size=12)


def alone(model: str, params: ServiceParams, load: Load, shape: ServerShape,
          profile: PowerProfile | None) -> tuple[float, ...] | None:
    try:
        perf = get_model(model).analyze(params, load, shape, profile, tails=False)
    except ModelInputError:
        return None
    return perf.mean_in_system, perf.ttft_ms, perf.itl_ms, perf.extra["prefill_ms"], perf.power_w


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["mm1k-cb", "mm1k-batch"]), st.sampled_from([GEN1, GEN2, STEP]),
       st.sampled_from([Load(1.0, 800, 200), Load(1.0, 3000, 40, 1.5, 0.6), Load(1.0, 100, 1000)]),
       st.lists(st.sampled_from([H100, L40S, None]), min_size=12, max_size=12), points)
def test_stacked_figures_are_the_single_point_ones(model: str, params: ServiceParams, load: Load,
                                                   profiles: list[PowerProfile | None],
                                                   pts: list[tuple[ServerShape, float]]) -> None:
    rows = [(params, load.at_rate(rate), shape, profile) for (shape, rate), profile in zip(pts, profiles, strict=False)]
    together = get_model(model).mean_figures(rows)
    for row, got in zip(rows, together, strict=True):
        want = alone(model, *row)
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            for g, w in zip(got, want, strict=True):
                assert (math.isnan(g) and math.isnan(w)) or math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["mm1k-cb", "mm1k-batch"]), st.sampled_from([GEN1, GEN2, STEP]),
       st.sampled_from([Load(1.0, 800, 200), Load(1.0, 3000, 40, 1.5, 0.6)]),
       st.sampled_from([Targets(300, 40), Targets(2000, 80), Targets(40, 20), Targets(900, 60, "p95")]),
       st.sampled_from([H100, None]), points)
def test_targets_checked_together_as_one_by_one(model: str, params: ServiceParams, load: Load, targets: Targets,
                                                profile: PowerProfile | None,
                                                pts: list[tuple[ServerShape, float]]) -> None:
    rows = [(params, load.at_rate(rate), shape, profile) for shape, rate in pts]
    together = get_model(model).within_targets_many(rows, targets)
    assert together == [get_model(model).within_targets(p, ld, s, targets, pr) for p, ld, s, pr in rows]
