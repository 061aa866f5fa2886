"""benchmarks/queue_heldout.py's truth: a held-out point pooled over independent windows, a training window one;
the engine it is recorded on reaching the workers, and a stored file refused under other settings."""

from __future__ import annotations

import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
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
TRUTH = queue_heldout.Truth()


def _run(k: int, replica: Replica | None = None) -> Measured:
    """The k-th independent window `window` records at SHAPE (its seeds, in its order)."""
    prompts, outputs = queue_heldout._tokens(128)
    return measure(replica or Replica(queue_heldout.MODEL, queue_heldout.GPU), UTIL * SAT, prompts, outputs, 8, None,
                   requests=REQUESTS, seed=int(1000 * UTIL) + 8 + 128 + 7919 * k)


def test_a_training_window_is_one_window_as_a_user_records_it() -> None:
    row = queue_heldout.window((TRUTH, SHAPE, SAT, UTIL, REQUESTS, 1))
    one = asdict(_run(0))
    assert row["runs"] == 1
    assert {k: row[k] for k in one} == pytest.approx(one, nan_ok=True)


def test_a_held_out_point_pools_windows_until_its_mean_ttft_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue_heldout, "TRUTH_SE", 1e-9)  # never reached: runs until max_runs
    row = queue_heldout.window((TRUTH, SHAPE, SAT, UTIL, REQUESTS, 4))
    runs = [_run(k) for k in range(4)]
    weights = np.array([r.requests for r in runs], dtype=float)
    assert row["runs"] == 4
    assert row["requests"] == int(weights.sum())
    for key in ("ttft_ms", "itl_ms", "queue_ms", "rate_rps", "out_tokens"):
        assert row[key] == pytest.approx(np.average([getattr(r, key) for r in runs], weights=weights))
    # a precision the first windows already meet stops it, but never before three (two say nothing of a spread)
    monkeypatch.setattr(queue_heldout, "TRUTH_SE", 10.0)
    assert queue_heldout.window((TRUTH, SHAPE, SAT, UTIL, REQUESTS, 10))["runs"] == queue_heldout.TRUTH_MIN_RUNS


def test_the_pair_seed_and_engine_model_reach_a_worker_s_replica() -> None:
    fresh = queue_heldout.Truth(pair_seed=11, engine_model="qwen2.5-14b")
    # forked, as the benchmark's pool is on Linux: the worker sees only what the point carries
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        fresh_row, default_row = pool.map(queue_heldout.window, [(t, SHAPE, SAT, UTIL, REQUESTS, 1)
                                                                  for t in (fresh, TRUTH)])
    one = asdict(_run(0, Replica("qwen2.5-14b", queue_heldout.GPU, pair_seed=11)))
    assert {k: fresh_row[k] for k in one} == pytest.approx(one, nan_ok=True)
    assert fresh_row["itl_ms"] != pytest.approx(default_row["itl_ms"], rel=0.01)  # another engine, not the default
    # the prior reads that engine's KV cache, as `wattscale tune` starts on its replicas
    prior = fresh.prior("step", "roofline")
    assert prior.kv_tokens == Replica("qwen2.5-14b", queue_heldout.GPU).cost().kv_capacity_tokens
    assert prior.kv_tokens != TRUTH.prior("step", "roofline").kv_tokens
    assert prior.expert_weight_share == 0.0  # a dense engine's prior reads no routing
    routed = fresh.prior("step", "mixture-of-experts")  # a user reads its model card
    assert (routed.expert_weight_share, routed.expert_token_share) == queue_heldout.CARDS["mixture-of-experts"]


def _stored(path: Path, **truth: object) -> None:
    windows = [{"personality": "roofline"}]
    path.write_text(json.dumps({"truth": truth, "saturation": [], "windows": windows} if truth
                               else {"saturation": [], "windows": windows}))


def _main(monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    """The benchmark's command line, refused before it simulates or fits anything: the message."""
    monkeypatch.setattr(sys, "argv", ["queue_heldout.py", "--personality", "roofline", *args])
    with pytest.raises(SystemExit) as refused:
        queue_heldout.main()
    return str(refused.value.code)


@pytest.mark.parametrize(("stored", "asked", "message"), [
    ({"pair_seed": 0}, ["--pair-seed", "11"], "recorded with pair_seed=0, asked pair_seed=11"),
    ({"engine_model": "llama-3.1-8b"}, ["--engine-model", "qwen2.5-14b"],
     "recorded with engine_model='llama-3.1-8b', asked engine_model='qwen2.5-14b'"),
    ({"quick": True}, [], "recorded with quick=True, asked quick=False"),
])
def test_stored_runs_recorded_under_other_truth_settings_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stored: dict[str, object], asked: list[str],
        message: str) -> None:
    path = tmp_path / "runs.json"
    _stored(path, **(asdict(TRUTH) | stored))
    assert _main(monkeypatch, "--measurements", str(path), *asked) == f"{path}: {message}: use another file or the " \
        "recorded setting"


def test_stored_runs_without_settings_or_without_a_personality_asked_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "runs.json"
    _stored(path)  # recorded before the settings were stored
    assert "pair_seed not stored" in _main(monkeypatch, "--measurements", str(path))
    _stored(path, **asdict(TRUTH))
    assert "no windows of personality chunked" in _main(monkeypatch, "--measurements", str(path), "--personality",
                                                        "roofline", "chunked")
    # the same settings pass the check
    queue_heldout.check_stored(json.loads(path.read_text()), TRUTH, ["roofline"], path)
