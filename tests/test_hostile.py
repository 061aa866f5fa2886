"""Property-based: hostile edits of the shipped config, optimize spec, plan specs, tuner state, tune CSVs and
analyze's numbers. Any input gives exit 0 or 2 (plan: 1 when nothing is feasible) with one line, never a
traceback, in bounded time.

The `ci` profile (tests/conftest.py) is derandomized and runs in well under two minutes; for a longer hunt:
`.venv/bin/python -m pytest tests/test_hostile.py --hypothesis-profile=long`.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import pytest
from hostile_inputs import Edit, apply_safely, assert_clean, bounded, edits_of, load, run_cli, toml_text
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.daemon import Daemon
from controller.settings import load_settings
from queuemodels import DEFAULT_MODEL, Load, ServerShape, ServiceParams, get_model
from tuner import Observation, Tuner

SIM = load("config/sim.toml")
SIM["metrics"]["port"] = 0  # the property is about the file; a port someone else holds is its own test
SIM["daemon"]["state_dir"] = "state"  # beside the file, in its temporary directory
OPTIMIZE = load("config/examples/optimize.toml")
PACKING = load("config/plans/seed002-packing.toml")
ALLOCATION = load("config/plans/seed001-allocation.toml")


def write(directory: str, name: str, text: str | bytes) -> str:
    path = Path(directory) / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


@given(edits_of(SIM))
def test_check_config_on_hostile_edits(edits: list[Edit]) -> None:
    with TemporaryDirectory() as d:
        path = write(d, "w.toml", toml_text(apply_safely(SIM, edits)))
        assert_clean(*run_cli(["check-config", path], seconds=10))


@settings(max_examples=40)
@given(edits_of(SIM))
def test_what_check_config_passes_the_daemon_runs_in_bounded_ticks(edits: list[Edit]) -> None:
    """check-config runs the checks `run` relies on: a simulated daemon built from a file it passes makes
    its first fast and slow ticks, and a second pair five seconds on, within the bound."""
    with TemporaryDirectory() as d:
        path = write(d, "w.toml", toml_text(apply_safely(SIM, edits)))
        code, _, _ = run_cli(["check-config", path], seconds=10)
        if code != 0:
            return
        with bounded(20):
            daemon = Daemon(Path(path), load_settings(Path(path)))
            daemon.fast()
            daemon.slow()
            daemon.t0 -= 5.0
            daemon.fast()
            daemon.slow()
            daemon.parts.close()


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_check_config_on_arbitrary_bytes(content: bytes | str) -> None:
    with TemporaryDirectory() as d:
        path = write(d, "w.toml", content)
        assert_clean(*run_cli(["check-config", path], seconds=10))


@given(edits_of(OPTIMIZE))
def test_optimize_on_hostile_edits(edits: list[Edit]) -> None:
    with TemporaryDirectory() as d:
        path = write(d, "spec.toml", toml_text(apply_safely(OPTIMIZE, edits)))
        assert_clean(*run_cli(["optimize", path, "--solver", "greedy"], seconds=20))


@settings(max_examples=25)
@given(edits_of(PACKING, max_edits=2))
def test_plan_packing_on_hostile_edits(edits: list[Edit]) -> None:
    with TemporaryDirectory() as d:
        path = write(d, "plan.toml", toml_text(apply_safely(PACKING, edits)))
        assert_clean(*run_cli(["plan", path, "--requests", "200"], seconds=30), allowed=(0, 1, 2))


@settings(max_examples=25)
@given(edits_of(ALLOCATION, max_edits=2))
def test_plan_allocation_on_hostile_edits(edits: list[Edit]) -> None:
    with TemporaryDirectory() as d:
        path = write(d, "plan.toml", toml_text(apply_safely(ALLOCATION, edits)))
        assert_clean(*run_cli(["plan", path], seconds=30), allowed=(0, 1, 2))


PRIOR = ServiceParams("gen1", 24.0, 0.18, 40.0, 0.07)


def observation(rate: float) -> Observation:
    true = ServiceParams("gen1", 12.0, 0.09, 20.0, 0.035)
    perf = get_model(DEFAULT_MODEL).analyze(true, Load(rate, 500, 200), ServerShape(64, 512), None, tails=False)
    return Observation(rate, 500, 200, 64, 512, perf.ttft_ms, perf.itl_ms)


def genuine_state() -> dict[str, Any]:
    with TemporaryDirectory() as d:
        path = Path(d) / "tuner.json"
        tuner = Tuner(path)
        tuner.ensure("m", "gpu", PRIOR, None)
        for r in (2.0, 8.0, 5.0, 11.0):
            tuner.update("m", "gpu", observation(r))
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc


STATE = genuine_state()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@given(st.one_of(edits_of(STATE).map(lambda e: apply_safely(STATE, e)), json_values))
def test_state_file_on_hostile_content(doc: Any) -> None:
    """Whatever the file holds: at most one warning, an estimate within the filter's bounds, and the pair
    goes on learning."""
    collect = Collect()
    logger = logging.getLogger("tuner")
    logger.addHandler(collect)
    try:
        with TemporaryDirectory() as d:
            path = Path(d) / "tuner.json"
            path.write_text(json.dumps(doc))  # NaN and Infinity as Python's json writes them
            tuner = Tuner(path)
            pair = tuner.ensure("m", "gpu", PRIOR, None)
            low, high = pair.bounds
            assert all(math.isfinite(v) for v in pair.x) and np.all(pair.x >= low) and np.all(pair.x <= high)
            tuner.update("m", "gpu", observation(3.0))
    finally:
        logger.removeHandler(collect)
    assert len(collect.messages) <= 1, collect.messages


@pytest.mark.parametrize("field", ["x", "prior", "p"])
def test_a_state_file_integer_too_big_for_a_float_is_set_aside(field: str) -> None:
    """JSON integers have no bound: one of 401 digits made math.isfinite raise, and the daemon stopped at start."""
    doc = json.loads(json.dumps(STATE))
    pair = next(iter(doc["pairs"].values()))
    if field == "p":
        pair["p"][0][0] = 10**400
    else:
        pair[field][0] = 10**400
    test_state_file_on_hostile_content.hypothesis.inner_test(doc)  # type: ignore[attr-defined]


def test_a_state_file_with_a_variance_past_any_the_filter_makes_is_set_aside() -> None:
    """A variance of 1e300 is finite and positive semi-definite, and made every update's innovation covariance
    ill-conditioned (scipy's LinAlgWarning at each): one warning naming p, and the pair starts from its prior."""
    doc = json.loads(json.dumps(STATE))
    pair = next(iter(doc["pairs"].values()))
    pair["p"][2][2] *= 1e300
    with TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("error")
        path = Path(d) / "tuner.json"
        path.write_text(json.dumps(doc))
        tuner = Tuner(path)
        pair_filter = tuner.ensure("m", "gpu", PRIOR, None)
        assert np.allclose(pair_filter.x, [24.0, 0.18, 40.0, 0.07])  # PRIOR's
        tuner.update("m", "gpu", observation(3.0))
        assert (Path(d) / "tuner.json.bad").exists()


COLUMNS = ["rate_rps", "in_tokens", "out_tokens", "max_batch", "ttft_ms", "itl_ms", "max_queue", "power_cap_w",
           "power_w", "waiting", "preemptions", "in_cv", "out_cv", "steady"]
cells = st.one_of(
    st.sampled_from(["", "nan", "inf", "-inf", "-1", "0", "1", "64", "1e308", "1e-308", "abc", "2.5", "1e9"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**12), 10**12).map(str),
)


@st.composite
def observation_csvs(draw: st.DrawFn) -> str:
    header = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=len(COLUMNS), unique=True)
                  | st.just(COLUMNS[:6]))
    rows = draw(st.lists(st.lists(cells, min_size=len(header), max_size=len(header)), max_size=8))
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


@given(observation_csvs() | st.binary(max_size=200) | st.text(max_size=200))
def test_tune_on_hostile_observations(content: str | bytes) -> None:
    with TemporaryDirectory() as d:
        path = write(d, "obs.csv", content)
        assert_clean(*run_cli(["tune", path, "--accelerator", "H100-SXM"], seconds=20))


numbers = st.sampled_from(["0", "-1", "1", "20", "0.2", "64", "500", "4096", "1e9", "1e308", "1e-300", "nan",
                           "inf"]) | st.floats().map(repr)
MODEL_FLAGS = ["--alpha-ms", "--beta-ms", "--gamma-ms", "--delta-ms", "--in-tokens", "--out-tokens", "--rate-rps",
               "--in-cv", "--out-cv"]
OPTIONS = {
    "--max-batch": st.sampled_from(["0", "1", "64", "4096", "4097"]),
    "--max-queue": st.sampled_from(["-7", "-1", "0", "1024", "1000000"]),
    "--power-cap-w": numbers, "--accelerator": st.sampled_from(["H100-SXM", "L4", "B300"]),
    "--ttft-slo-ms": numbers, "--itl-slo-ms": numbers, "--slo-statistic": st.sampled_from(["mean", "p95", "p99"]),
    "--batch-sizes": st.sampled_from(["8,16", "1,4096", "64", "0", "8,100000"]),
    "--model": st.sampled_from(["mm1k-cb", "mm1k-batch"]), "--family": st.sampled_from(["gen1", "gen2"]),
}


@given(st.fixed_dictionaries(dict.fromkeys(MODEL_FLAGS, numbers)), st.fixed_dictionaries({}, optional=OPTIONS))
def test_analyze_on_hostile_numbers(model: dict[str, str], options: dict[str, str]) -> None:
    argv = ["analyze", *(f"{flag}={value}" for flag, value in {**model, **options}.items())]
    assert_clean(*run_cli(argv, seconds=20))
