"""benchmarks/queue_heldout.py's truth: a held-out point pooled over independent windows, a training window one."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark

from simulator.probe import Measured, Replica, measure

ROOT = Path(__file__).resolve().parents[1]
queue_heldout = load_benchmark("queue_heldout")

SHAPE = ("roofline", 8, 128, 1.0)
SAT, UTIL, REQUESTS = 2.6, 0.6, 300


def _run(k: int) -> Measured:
    """The k-th independent window `window` records at SHAPE (its seeds, in its order)."""
    prompts, outputs = queue_heldout._tokens(128)
    return measure(Replica(queue_heldout.MODEL, queue_heldout.GPU), UTIL * SAT, prompts, outputs, 8, None,
                   requests=REQUESTS, seed=int(1000 * UTIL) + 8 + 128 + 7919 * k)


def test_a_training_window_is_one_window_as_a_user_records_it() -> None:
    row = queue_heldout.window((SHAPE, SAT, UTIL, REQUESTS, 1))
    one = asdict(_run(0))
    assert row["runs"] == 1
    assert {k: row[k] for k in one} == pytest.approx(one, nan_ok=True)


def test_a_held_out_point_pools_windows_until_its_mean_ttft_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_heldout, "TRUTH_SE", 1e-9)  # never reached: runs until max_runs
    row = queue_heldout.window((SHAPE, SAT, UTIL, REQUESTS, 4))
    runs = [_run(k) for k in range(4)]
    weights = np.array([r.requests for r in runs], dtype=float)
    assert row["runs"] == 4
    assert row["requests"] == int(weights.sum())
    for key in ("ttft_ms", "itl_ms", "queue_ms", "rate_rps", "out_tokens"):
        assert row[key] == pytest.approx(np.average([getattr(r, key) for r in runs], weights=weights))
    # a precision the first windows already meet stops it, but never before three (two say nothing of a spread)
    monkeypatch.setattr(queue_heldout, "TRUTH_SE", 10.0)
    assert queue_heldout.window((SHAPE, SAT, UTIL, REQUESTS, 10))["runs"] == queue_heldout.TRUTH_MIN_RUNS
