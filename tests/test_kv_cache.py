"""The KV cache's bound on the batch: what every vLLM publishes (`cache_config_info`), read, not fitted."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from queuemodels import Load, ModelInputError, ServerShape, ServiceParams, Targets, get_model
from queuemodels.kv_cache import batch_limit
from tuner import Observation, PairFilter

TRUTH = ServiceParams("step", 11.8, 0.01, 6.2, 0.034, kappa_ms=5e-5, epsilon_ms=0.5, rho=1.0, budget_tokens=8000.0)
CACHE = dataclasses.replace(TRUTH, kv_tokens=437_500.0)
MODEL = get_model("mm1k-cb")


def test_the_cache_bounds_the_batch_by_what_a_running_sequence_holds() -> None:
    assert batch_limit(TRUTH, Load(1.0, 2048, 256)) is None
    # a running sequence holds its prompt and what it generated: m (1 + cv^2) / 2 tokens of it on average
    assert batch_limit(CACHE, Load(1.0, 2048, 256, out_cv=1.0)) == 437_500 // 2304
    assert batch_limit(CACHE, Load(1.0, 2048, 256, out_cv=0.0)) == 437_500 // 2176
    assert batch_limit(dataclasses.replace(CACHE, kv_tokens=10.0), Load(1.0, 2048, 256)) == 1
    with pytest.raises(ModelInputError, match="kv_tokens"):
        dataclasses.replace(TRUTH, kv_tokens=-1.0)


def test_a_batch_the_cache_cannot_hold_runs_as_the_batch_it_holds() -> None:
    long, short = Load(4.0, 2048, 256), Load(20.0, 128, 256)
    full, held = ServerShape(256, None), ServerShape(437_500 // 2304, None)
    assert MODEL.saturation_rps(CACHE, long, full) == MODEL.saturation_rps(TRUTH, long, held)
    assert MODEL.saturation_rps(CACHE, long, full) < MODEL.saturation_rps(TRUTH, long, full)
    bound, free = MODEL.analyze(CACHE, long, full), MODEL.analyze(TRUTH, long, held)
    assert (bound.ttft_ms, bound.itl_ms, bound.ttft_p95_ms) == (free.ttft_ms, free.itl_ms, free.ttft_p95_ms)
    targets = Targets(2000.0, 60.0)
    assert MODEL.max_rate(CACHE, long, full, targets) == MODEL.max_rate(TRUTH, long, held, targets)
    # short prompts fit 256 sequences: nothing changes
    a, b = MODEL.analyze(CACHE, short, full), MODEL.analyze(TRUTH, short, full)
    assert (a.ttft_ms, a.itl_ms, a.ttft_p95_ms) == (b.ttft_ms, b.itl_ms, b.ttft_p95_ms)


def test_the_tuner_carries_the_cache_size_it_reads_and_does_not_fit_it() -> None:
    pair = PairFilter(dataclasses.replace(ServiceParams("step", 15.0, 0.1, 10.0, 0.05), kv_tokens=437_500.0), None)
    for n_in, rate in ((256, 2.0), (1024, 1.5), (256, 4.0)):
        perf = MODEL.analyze(TRUTH, Load(rate, n_in, 256), ServerShape(64, 1024), tails=False)
        pair.update(Observation(rate, n_in, 256, 64, 1024, perf.ttft_ms, perf.itl_ms))
    assert pair.params()[0].kv_tokens == 437_500.0
    assert len(pair.x) == len(TRUTH.as_vector())


def test_each_window_is_predicted_at_the_cache_of_the_replicas_that_served_it() -> None:
    """Two services of one model on one accelerator share the pair's filter but not their caches: a window says
    its own (the prior's where it says none), so neither service's cache stands in for the other's."""
    pair = PairFilter(ServiceParams("step", 15.0, 0.1, 10.0, 0.05), None)
    window = Observation(4.0, 2048, 256, 256, 1024, 900.0, 40.0)
    small = dataclasses.replace(window, kv_tokens=60_000.0)
    alone, bound = pair.predict(window), pair.predict(small)
    assert bound[1] < alone[1]  # 60,000 tokens hold 26 of these sequences: a smaller batch, shorter decode steps
    many = pair.predict_many([(window, None), (small, None)])
    assert many[0] is not None and many[1] is not None
    assert np.allclose(many[0], alone, rtol=1e-9) and np.allclose(many[1], bound, rtol=1e-9)
