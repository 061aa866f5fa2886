"""The step family (context-dependent decode, a per-step prefill cost) and the tuner's periodic refit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from queuemodels import Load, ServerShape, ServiceParams, get_model
from queuemodels.params import STEP_DEFAULTS
from tuner import FilterSettings, Observation, PairFilter

GEN1 = ServiceParams("gen1", 11.0, 0.03, 6.0, 0.035)


@pytest.mark.parametrize("model", ["mm1k-cb", "mm1k-batch"])
def test_step_with_no_context_or_overhead_is_gen1(model: str) -> None:
    step = dataclasses.replace(GEN1, family="step")
    for load, shape in ((Load(3.0, 512, 128), ServerShape(32, None)), (Load(8.0, 2048, 64), ServerShape(64, 100))):
        a = get_model(model).analyze(GEN1, load, shape)
        b = get_model(model).analyze(step, load, shape)
        assert (a.ttft_ms, a.itl_ms, a.ttft_p95_ms) == (b.ttft_ms, b.itl_ms, b.ttft_p95_ms)


def test_step_terms_act_where_they_should() -> None:
    model, shape = get_model("mm1k-cb"), ServerShape(64, None)
    base = dataclasses.replace(GEN1, family="step")
    ctx = dataclasses.replace(base, kappa_ms=5e-5)
    over = dataclasses.replace(base, epsilon_ms=8.0)
    short, long = Load(2.0, 128, 128), Load(2.0, 4096, 128)
    itl_gain = [model.analyze(ctx, x, shape).itl_ms / model.analyze(base, x, shape).itl_ms for x in (short, long)]
    assert itl_gain[1] > itl_gain[0] > 1.0  # the KV read grows with context
    ttft_gain = [model.analyze(over, x, shape).ttft_ms - model.analyze(base, x, shape).ttft_ms for x in (short, long)]
    assert ttft_gain[0] == pytest.approx(8.0, rel=0.1)  # a fixed cost per prefill step, whatever the prompt
    assert ttft_gain[1] >= ttft_gain[0]
    started = ServiceParams.from_vector("step", base.with_step_defaults().as_vector())
    assert (started.kappa_ms, started.epsilon_ms) == (STEP_DEFAULTS["kappa_ms"], STEP_DEFAULTS["epsilon_ms"])


def windows(truth: ServiceParams) -> list[Observation]:
    """The narrow design of queue_heldout, from the model itself: batch 32/64, prompts 256/1024, 20-80 %."""
    model = get_model("mm1k-cb")
    out = []
    for batch, n_in, share in ((b, n, u) for u in (0.2, 0.8, 0.5) for b in (32, 64) for n in (256, 1024)):
        load = Load(1.0, n_in, 128)
        sat = model.saturation_rps(truth, load, ServerShape(batch, None))
        perf = model.analyze(truth, dataclasses.replace(load, rate_rps=share * sat), ServerShape(batch, 1024),
                             tails=False)
        out.append(Observation(share * sat, n_in, 128, batch, 1024, perf.ttft_ms, perf.itl_ms))
    return out


def test_the_periodic_refit_learns_what_one_window_at_a_time_does_not() -> None:
    truth = ServiceParams("step", 11.0, 0.03, 6.0, 0.035, kappa_ms=6e-5, epsilon_ms=9.0)
    prior = ServiceParams("step", 15.0, 0.1, 10.0, 0.05)
    held_out = [Load(r, n, 128) for r, n in ((2.0, 128), (4.0, 2048))]
    errors = []
    for every in (0, 6):
        pair = PairFilter(prior, None, FilterSettings(refit_every=every))
        for obs in windows(truth):
            pair.update(obs)
        params, _ = pair.params()
        model = get_model("mm1k-cb")
        errors.append(max(abs(model.analyze(params, x, ServerShape(128, None)).ttft_ms
                              / model.analyze(truth, x, ServerShape(128, None)).ttft_ms - 1) for x in held_out))
    assert errors[1] < 0.1 and errors[1] < 0.5 * errors[0], errors
    assert np.isfinite(errors[0])


def test_a_run_of_rejections_one_law_explains_is_a_refit_not_a_shift() -> None:
    truth = ServiceParams("step", 11.0, 0.03, 6.0, 0.035, kappa_ms=6e-5, epsilon_ms=9.0)
    prior = ServiceParams("step", 15.0, 0.1, 10.0, 0.05)
    seen = windows(truth)
    young = PairFilter(prior, None)
    young.history, young.suspects = seen[:9], seen[9:]
    assert young._explains_all() and not young.suspects and len(young.history) == 12
    shifted = dataclasses.replace(truth, alpha_ms=1.3 * truth.alpha_ms, beta_ms=1.3 * truth.beta_ms,
                                  delta_ms=1.3 * truth.delta_ms)
    real = PairFilter(prior, None)
    real.history, real.suspects = seen[:9], windows(shifted)[9:]
    before = real.x.copy()
    assert not real._explains_all() and np.array_equal(real.x, before) and len(real.suspects) == 3
