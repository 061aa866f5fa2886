"""The EKF tuner: convergence, gating, saturation, persistence."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from queuemodels import Load, ServerShape, ServiceParams
from queuemodels.operating_point import evaluate
from queuemodels.service_time import capped_law
from tuner import Observation, Tuner

TRUE = ServiceParams("gen1", 12.0, 0.09, 20.0, 0.035)
PRIOR = ServiceParams("gen1", 24.0, 0.18, 40.0, 0.07)


def observe(params: ServiceParams, rate: float, n_in: float = 500, n_out: float = 200, noise: float = 0.0,
            rng: np.random.Generator | None = None) -> Observation:
    perf = evaluate(capped_law(params, Load(rate, n_in, n_out), None, None), ServerShape(64, 512), rate, None,
                    tails=False)
    jitter = (lambda: 1 + noise * rng.normal()) if rng is not None else (lambda: 1.0)
    return Observation(rate, n_in, n_out, 64, 512, perf.ttft_ms * jitter(), perf.itl_ms * jitter())


def relative_error(tuner: Tuner, obs: Observation) -> np.ndarray:
    pair = tuner.filters["m|gpu"]
    return np.abs(pair.predict(obs) / pair.observed(obs) - 1)


def test_converges_on_noiseless_data() -> None:
    tuner = Tuner()
    tuner.ensure("m", "gpu", PRIOR, None)
    rates = [2.0, 8.0, 5.0, 11.0, 3.0, 9.0, 6.0, 10.0]
    for r in rates:
        assert tuner.update("m", "gpu", observe(TRUE, r)).accepted
    for r in (1.0, 4.0, 7.0, 12.0):
        assert relative_error(tuner, observe(TRUE, r)).max() < 0.03


def test_gate_rejects_an_outlier() -> None:
    tuner = Tuner()
    tuner.ensure("m", "gpu", PRIOR, None)
    for r in (2.0, 8.0, 5.0, 11.0, 3.0, 9.0):
        tuner.update("m", "gpu", observe(TRUE, r))
    before = tuner.filters["m|gpu"].x.copy()
    good = observe(TRUE, 6.0)
    outlier = Observation(6.0, 500, 200, 64, 512, good.ttft_ms * 5, good.itl_ms * 3)
    verdict = tuner.update("m", "gpu", outlier)
    assert not verdict.accepted and verdict.reason == "gate" and verdict.nis > 7.378
    np.testing.assert_array_equal(tuner.filters["m|gpu"].x, before)


def test_saturated_and_empty_observations_are_skipped() -> None:
    tuner = Tuner()
    tuner.ensure("m", "gpu", PRIOR, None)
    base = observe(TRUE, 5.0)
    saturated = Observation(5.0, 500, 200, 64, 512, base.ttft_ms, base.itl_ms, waiting=600)
    preempting = Observation(5.0, 500, 200, 64, 512, base.ttft_ms, base.itl_ms, preemptions=3)
    nan = Observation(5.0, 500, 200, 64, 512, float("nan"), base.itl_ms)
    assert tuner.update("m", "gpu", saturated).reason == "saturated"
    assert tuner.update("m", "gpu", preempting).reason == "saturated"
    assert tuner.update("m", "gpu", nan).reason == "non-finite"
    assert tuner.filters["m|gpu"].accepted == 0
    assert tuner.filters["m|gpu"].rejected == {"saturated": 2, "non-finite": 1}


def test_restart_resumes_from_saved_state(tmp_path: Path) -> None:
    path = tmp_path / "state" / "tuner.json"
    first = Tuner(path)
    first.ensure("m", "gpu", PRIOR, None)
    for r in (2.0, 8.0, 5.0, 11.0):
        first.update("m", "gpu", observe(TRUE, r))
    saved = json.loads(path.read_text())
    assert saved["kind"] == "wattscale-tuner" and saved["version"] == 1
    second = Tuner(path)
    pair = second.ensure("m", "gpu", PRIOR, None)
    np.testing.assert_allclose(pair.x, first.filters["m|gpu"].x)
    assert pair.accepted == 4 and list(path.parent.iterdir()) == [path]  # no temporary files left


BAD_STATES = ["{not json", '{"kind": "something-else"}', '{"kind": "wattscale-tuner", "version": 99}']


@pytest.mark.parametrize("content", BAD_STATES)
def test_corrupt_state_falls_back_to_priors(tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str) -> None:
    path = tmp_path / "tuner.json"
    path.write_text(content)
    tuner = Tuner(path)
    with caplog.at_level(logging.WARNING):
        pair = tuner.ensure("m", "gpu", PRIOR, None)
    np.testing.assert_allclose(pair.x, PRIOR.as_vector())
    assert "starting from priors" in caplog.text


def test_follows_a_step_change() -> None:
    rng = np.random.default_rng(3)
    tuner = Tuner()
    tuner.ensure("m", "gpu", PRIOR, None)
    for r in rng.uniform(2, 11, 8):
        tuner.update("m", "gpu", observe(TRUE, float(r), noise=0.02, rng=rng))
    shifted = ServiceParams("gen1", 12.0 * 1.3, 0.09 * 1.3, 20.0 * 1.3, 0.035 * 1.3)
    for r in rng.uniform(2, 11, 10):
        tuner.update("m", "gpu", observe(shifted, float(r), noise=0.02, rng=rng))
    assert relative_error(tuner, observe(shifted, 6.0)).max() < 0.08
