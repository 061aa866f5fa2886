"""Many operating points solved together give the figures `analyze` gives each alone."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from queuemodels import Load, ModelInputError, PowerProfile, ServerShape, ServiceParams, Targets, get_model
from queuemodels.accelerators import CATALOG
from queuemodels.analyzer import MODELS
from queuemodels.chain import means
from queuemodels.continuous_arrays import continuous_laws
from queuemodels.continuous_law import continuous_law
from queuemodels.itl_tails import itl_exceedance
from queuemodels.law_arrays import Bases, Points
from queuemodels.operating_point import solve_chain
from queuemodels.sizing import SATURATION_SHARE, _bracket, _brackets, _surplus
from queuemodels.stacked import _span, solve_together
from queuemodels.step_arrays import FIELDS, ROOFLINE_FIELDS
from queuemodels.tails import GROUPS, ttft_exceedance

H100 = CATALOG["H100-SXM"]
L40S = CATALOG["L40S"]
GEN1 = ServiceParams("gen1", 12, 0.09, 10, 0.035)
GEN2 = ServiceParams("gen2", 14, 0.002, 0.0004)
STEP = ServiceParams("step", 12, 0.09, 10, 0.035, kappa_ms=1e-4, epsilon_ms=2.0, rho=1.0, budget_tokens=1024.0)
"""A roofline law: decode bends at large batches, prompts chunk under a token budget."""
BENT = ServiceParams("step", 12, 0.09, 10, 0.035, kappa_ms=1e-4, epsilon_ms=2.0, rho=1.0)
"""The roofline's bend without a token budget."""
MOE = replace(STEP, expert_weight_share=0.85, expert_token_share=0.125)
"""A mixture of experts: a decode step reads only the experts its tokens route to."""
SPECULATIVE = Load(1.0, 800, 200, tokens_per_step=2.5)
"""Speculative decoding: a step gives a sequence 2.5 tokens."""
DRAFTED = replace(SPECULATIVE, draft_tokens=3.0)
"""The same with its drafts read: 3 a step, each verified and charged to the token budget."""

shapes = st.builds(ServerShape, st.sampled_from([1, 4, 16, 64, 256, 512]), st.sampled_from([None, 0, 3, 64, 1024]),
                   st.sampled_from([None, 300.0, 450.0, 700.0]), st.sampled_from([None, 0.6, 0.85]))
points = st.lists(st.tuples(shapes, st.floats(0.0, 60.0)), min_size=1, max_size=12)
fitted = st.builds(lambda idle, knee, busy, half, sens, exp: replace(
    H100, idle_power_w=idle, knee_fraction=knee, busy_share=busy, batch_half=half, prefill_sensitivity=sens,
    clock_time_sensitivity=sens / 2, clock_draw_exponent=exp), st.floats(30.0, 150.0), st.floats(0.5, 0.99),
    st.floats(0.0, 0.6), st.floats(8.0, 300.0), st.floats(0.2, 2.0), st.floats(1.0, 3.0))
"""Power profiles as the tuner fits them: any value in range, not the catalogue's round ones."""


def alone(model: str, params: ServiceParams, load: Load, shape: ServerShape,
          profile: PowerProfile | None) -> tuple[float, ...] | None:
    try:
        perf = get_model(model).analyze(params, load, shape, profile, tails=False)
    except ModelInputError:
        return None
    return perf.mean_in_system, perf.ttft_ms, perf.itl_ms, perf.extra["prefill_ms"], perf.power_w


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["mm1k-cb", "mm1k-batch"]), st.sampled_from([GEN1, GEN2, STEP, MOE]),
       st.sampled_from([Load(1.0, 800, 200), Load(1.0, 3000, 40, 1.5, 0.6), Load(1.0, 100, 1000),
                        SPECULATIVE, DRAFTED]),
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
@given(st.sampled_from(["mm1k-cb", "mm1k-batch"]), st.sampled_from([GEN1, GEN2, STEP, MOE]),
       st.sampled_from([Load(1.0, 800, 200), Load(1.0, 3000, 40, 1.5, 0.6)]),
       st.sampled_from([Targets(300, 40), Targets(2000, 80), Targets(40, 20), Targets(900, 60, "p95"),
                        Targets(300, 40, margin=0.3), Targets(900, 60, "p95", 0.4)]),
       st.sampled_from([H100, None]), points)
def test_targets_checked_together_as_one_by_one(model: str, params: ServiceParams, load: Load, targets: Targets,
                                                profile: PowerProfile | None,
                                                pts: list[tuple[ServerShape, float]]) -> None:
    rows = [(params, load.at_rate(rate), shape, profile) for shape, rate in pts]
    together = get_model(model).within_targets_of(Points.of(rows), [targets] * len(rows))
    assert together.tolist() == [get_model(model).within_targets(p, ld, s, targets, pr) for p, ld, s, pr in rows]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["mm1k-cb", "mm1k-batch"]), st.sampled_from([GEN1, GEN2, STEP, BENT]),
       st.sampled_from([Load(1.0, 800, 200), Load(1.0, 3000, 40, 1.5, 0.6), Load(1.0, 100, 1000, 0.0, 0.5)]),
       st.sampled_from([H100, L40S, None]), points, st.floats(20.0, 4000.0), st.floats(10.0, 400.0))
def test_shares_over_a_limit_read_together_as_alone(model: str, params: ServiceParams, load: Load,
                                                    profile: PowerProfile | None, pts: list[tuple[ServerShape, float]],
                                                    ttft_ms: float, itl_ms: float) -> None:
    """P(TTFT > t) and P(ITL > t) of stacked chains (what a percentile target is checked on) are tails' of each
    chain solved alone."""
    rows = [(params, load.at_rate(rate), shape, profile) for shape, rate in pts]
    chain_model = MODELS[model]
    limits = np.full(len(rows), ttft_ms), np.full(len(rows), itl_ms)
    _, _, together = solve_together(chain_model.law, chain_model.many, Points.of(rows), draws=False, limits=limits)
    for i in np.flatnonzero(together.covered).tolist():
        p, ld, shape, pr = Points.of(rows).point(i)
        law = chain_model.law(p, ld, pr, shape)
        chain = solve_chain(law, shape, ld.rate_rps)
        assert math.isclose(together.ttft_over[i], ttft_exceedance(chain, law, ttft_ms), rel_tol=1e-9, abs_tol=1e-12)
        # ITL to 1e-9: a group of batches past the stacked chain's span holds no mass, where the chain solved alone
        # gives it 1e-17 of it, and a prompt count it reaches at 1e-9 may move the pmf's cutoff by that much
        assert math.isclose(together.itl_over[i], itl_exceedance(chain, law, means(chain).throughput_per_ms, itl_ms),
                            rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(["mm1k-cb", "mm1k-batch"]), st.sampled_from([GEN1, GEN2, STEP, MOE]),
       st.sampled_from([Load(1.0, 800, 200), Load(1.0, 3000, 40, 1.5, 0.6)]),
       st.sampled_from([Targets(300, 40), Targets(2000, 80), Targets(40, 20), Targets(900, 60, "p95")]),
       st.sampled_from([H100, None]), st.lists(shapes, min_size=1, max_size=5), st.floats(0.5, 1.5))
def test_max_rates_found_together_are_each_ones_bisection(model: str, params: ServiceParams, load: Load,
                                                          targets: Targets, profile: PowerProfile | None,
                                                          shape_list: list[ServerShape], hint: float) -> None:
    """Within max_rate's tolerance, from no bracket or from a rate known to fit or one known not to (what a sizing's
    brackets hold)."""
    rows = [(params, load, shape, profile) for shape in shape_list]
    chain_model = get_model(model)
    want = np.array([chain_model.max_rate(*row[:3], targets, profile) for row in rows])
    alone = chain_model.max_rates_of(Points.of(rows), [targets] * len(rows))
    fits = np.where(hint < 1.0, want * hint, 0.0)
    misses = np.where(hint > 1.0, want * hint, np.inf)
    hinted = chain_model.max_rates_of(Points.of(rows), [targets] * len(rows), fits, misses)
    for got in (alone, hinted):
        assert ((got == 0.0) == (want == 0.0)).all()
        assert np.allclose(got, want, rtol=2e-4, atol=0.0)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["mm1k-cb", "mm1k-batch"]), st.sampled_from([GEN1, GEN2, STEP, BENT, replace(
    STEP, kv_tokens=60_000.0)]), st.sampled_from([Load(1.0, 800, 200), Load(1.0, 3000, 40, 1.5, 0.6),
                                                  Load(1.0, 100, 1000)]),
       st.sampled_from([H100, L40S, None]), st.lists(shapes, min_size=1, max_size=8))
def test_brackets_found_together_are_each_ones(model: str, params: ServiceParams, load: Load,
                                               profile: PowerProfile | None, shape_list: list[ServerShape]) -> None:
    """The max-rate search's bracket, its saturation rate found for all points at once by regula falsi, is each
    point's own (Brent's method on its scalar law) within their tolerance (a share of the capacity at a
    trickle), and never past saturation."""
    chain_model = get_model(model)
    rows = [(params, load, shape, profile) for shape in shape_list]
    pts = Points.of(rows)
    low, high = _brackets(pts, chain_model.law, chain_model.many, 1e-4)
    for i in range(len(rows)):
        p, ld, shape, pr = pts.point(i)
        want_low, want_high = _bracket(p, ld, shape, pr, chain_model.law, 1e-4)
        assert math.isclose(low[i], want_low, rel_tol=1e-12)
        trickle = _surplus(chain_model.law, p, ld, shape, pr, 0.0)  # both find the root within 1e-4 of it
        assert abs(high[i] - want_high) <= 2e-4 * trickle + 1e-12
        sat = high[i] / SATURATION_SHARE
        assert _surplus(chain_model.law, p, ld, shape, pr, sat) >= 0.0


def test_long_free_spans_are_grouped_as_tails_groups_them() -> None:
    """A light load on a large batch spreads arrivals over more free states than tails' GROUPS: the stacked read
    merges them into the same runs (a share over the limit strictly between 0 and 1, so the mixture matters)."""
    rows = [(GEN1, Load(rate, 800, 200, 1.0), ServerShape(512, None), H100) for rate in (5.0, 10.0, 20.0)]
    chain_model = MODELS["mm1k-cb"]
    limits = np.full(3, 60.0), np.full(3, 60.0)
    _, _, together = solve_together(chain_model.law, chain_model.many, Points.of(rows), draws=False, limits=limits)
    assert together.covered.all() and ((together.ttft_over > 1e-3) & (together.ttft_over < 0.999)).all()
    for i, (p, ld, shape, pr) in enumerate(rows):
        law = chain_model.law(p, ld, pr, shape)
        chain = solve_chain(law, shape, ld.rate_rps)
        assert int((chain.p[:512] > 1e-12 * chain.p[:512].max()).sum()) > GROUPS
        assert math.isclose(together.ttft_over[i], ttft_exceedance(chain, law, 60.0), rel_tol=1e-9)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([GEN1, GEN2, replace(GEN1, kv_tokens=90_000.0), STEP, BENT, replace(STEP, kv_tokens=90_000.0),
                        replace(STEP, budget_tokens=300.0), MOE, replace(MOE, rho=0.0, budget_tokens=0.0)]),
       st.sampled_from([Load(1.0, 800, 200), Load(1.0, 3000, 40, 1.5, 0.6), Load(1.0, 100, 1000),
                        SPECULATIVE, DRAFTED]),
       st.one_of(st.sampled_from([H100, L40S, None]), fitted), points)
def test_laws_built_as_arrays_are_the_scalar_laws(params: ServiceParams, load: Load, profile: PowerProfile | None,
                                                 pts: list[tuple[ServerShape, float]]) -> None:
    """Operation for operation: the same floats, so stacked figures do not move when a law is built as arrays (a
    roofline's to rounding: np.cbrt where the scalar law takes `** (1/3)`), and the same step times at any batch."""
    together = Points.shaped(Bases([(params, load, profile)]), np.zeros(len(pts), dtype=np.intp), [s for s, _ in pts],
                             np.array([r for _, r in pts]))
    laws, built = continuous_laws(together, together.tops())
    for i in range(len(pts)):
        p, ld, shape, pr = together.point(i)
        try:
            want = continuous_law(p, ld, pr, shape)
        except ModelInputError:
            assert not built[i]
            continue
        assert built[i]
        names = (*FIELDS, "bend_scale", "skip_scale", "budget_wait_ms", "budget_wait_var")
        got, expected = [getattr(laws, f)[i] for f in names], [getattr(want, f) for f in names]
        if want.roofline is None:  # its bend_scale scales no bend
            assert got[:len(FIELDS)] == expected[:len(FIELDS)] and laws.affine[i]
            continue
        assert np.allclose(got, expected, rtol=1e-12, atol=1e-300) and not laws.affine[i]  # denormals round
        assert [getattr(laws, f)[i] for f in ROOFLINE_FIELDS] == [getattr(want.roofline, f) for f in ROOFLINE_FIELDS]
        row, batches = laws.rows(np.full(3, i)), np.array([1.0, 7.5, float(shape.max_batch)])
        for name in ("tau", "prefill", "decode"):
            assert np.allclose(getattr(row, name)(batches), getattr(want, name)(batches), rtol=1e-12, atol=0.0)
        served_ms = float(want.tau(0.3 * shape.max_batch + 0.2))
        assert math.isclose(float(row.batch_at(np.full(3, served_ms), np.full(3, float(shape.max_batch)))[0]),
                            want.batch_at(served_ms, float(shape.max_batch)), rel_tol=1e-12, abs_tol=1e-12)


def test_light_affine_points_are_solved_together_not_alone() -> None:
    """The comparisons above pass whatever the stacked solve covers (what it leaves out is solved alone): here it
    must cover every point, light loads of an affine law, capped, clocked, bounded or not."""
    load = Load(1.0, 800, 200)
    rows = [(GEN1, load.at_rate(rate), ServerShape(batch, queue, cap, clock), H100)
            for batch in (8, 64, 256) for queue in (None, 1024) for cap in (None, 450.0) for clock in (None, 0.7)
            for rate in (0.5, 2.0)]
    built_alone, _, together = solve_together(continuous_law, continuous_laws, Points.of(rows))
    assert together.covered.all() and not built_alone  # every law built as arrays, every point solved stacked
    laws, _ = continuous_laws(Points.of(rows), Points.of(rows).tops())
    lam = np.array([ld.rate_rps for _, ld, _, _ in rows]) / 1000.0
    tops = np.array([s.max_batch for _, _, s, _ in rows], dtype=float)
    assert (_span(lam * laws.t0, lam * laws.t1, tops) < tops).sum() >= len(rows) // 2  # light: solved on fewer states
    for k, row in enumerate(rows):
        want = alone("mm1k-cb", *row)
        assert want is not None
        got = (together.in_system[k], together.ttft_ms[k], together.itl_ms[k], together.prefill_ms[k],
               together.power_w[k])
        assert all(math.isclose(g, w, rel_tol=1e-9) for g, w in zip(got, want, strict=True))


def test_roofline_points_are_solved_together_not_alone() -> None:
    """The step family's roofline laws (the daemon's default) are built as arrays and solved stacked too: at a
    fleet's scale one by one they cost seconds a cycle. Light and busy, capped, clocked, bounded or not; many
    points on one base each, as a plan's candidates of one service are (their chains read the bend and chunks off
    one table per base and clock: a lock slows the decodes' compute, so a base's clocks bend apart), with the
    fitted share of a step's fixed time that follows the clock too."""
    load = Load(1.0, 800, 200, 1.0, 0.5)
    shapes = [(ServerShape(batch, queue, cap, clock), rate) for batch in (8, 64, 256, 512) for queue in (None, 1024)
              for cap in (None, 450.0) for clock in (None, 0.7) for rate in (0.3, 1.5)]
    bases = Bases([(STEP, load, H100), (BENT, load, H100), (BENT, load, replace(H100, clock_step_share=0.3))])
    together = Points.shaped(bases, np.repeat(np.arange(3), len(shapes)), [s for s, _ in shapes] * 3,
                             np.array([r for _, r in shapes] * 3))
    built_alone, _, figures = solve_together(continuous_law, continuous_laws, together)
    assert figures.covered.all() and not built_alone
    for k in range(len(together.rates_rps)):
        want = alone("mm1k-cb", *together.point(k))
        assert want is not None
        got = (figures.in_system[k], figures.ttft_ms[k], figures.itl_ms[k], figures.prefill_ms[k], figures.power_w[k])
        assert all(math.isclose(g, w, rel_tol=1e-9) for g, w in zip(got, want, strict=True))
