"""The EKF tuner: convergence, gating, saturation, persistence."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from queuemodels import DEFAULT_MODEL, Load, ServerShape, ServiceParams, get_model
from tuner import FilterSettings, Observation, PairFilter, Tuner
from tuner.robust_fit import START_SCALES
from tuner.shift import three_sigma, within

TRUE = ServiceParams("gen1", 12.0, 0.09, 20.0, 0.035)
PRIOR = ServiceParams("gen1", 24.0, 0.18, 40.0, 0.07)


def observe(params: ServiceParams, rate: float, n_in: float = 500, n_out: float = 200, noise: float = 0.0,
            rng: np.random.Generator | None = None) -> Observation:
    perf = get_model(DEFAULT_MODEL).analyze(params, Load(rate, n_in, n_out), ServerShape(64, 512), None, tails=False)
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
    reasons = [tuner.update("m", "gpu", observe(shifted, float(r), noise=0.02, rng=rng)).reason
               for r in rng.uniform(2, 11, 10)]
    # Three rejections in a row are a shift: the filter refits on them, then warms up again.
    assert reasons[:6] == ["gate", "gate", "shift", "warmup", "warmup", "warmup"], reasons
    assert relative_error(tuner, observe(shifted, 6.0)).max() < 0.08


def test_warmup_keeps_the_prior_shape_where_observations_leave_it_open() -> None:
    # Three noisy windows at close loads pin the scale but not the gamma/delta and alpha/beta splits; the
    # truth is the prior's shape at 1.5x. Held to the prior's shape, the fit lands nearer than a free one.
    truth = ServiceParams.from_vector("gen1", [1.5 * v for v in PRIOR.as_vector()])

    def error(settings: FilterSettings, seed: int) -> float:
        rng = np.random.default_rng(seed)
        pair = PairFilter(PRIOR, None, settings)
        for r in (3.0, 4.0, 5.0):  # below the truth's saturation (5.6 rps)
            assert pair.update(observe(truth, r, noise=0.03, rng=rng)).reason == "warmup"
        return float(np.abs(pair.x / truth.as_vector() - 1).max())

    pairs = [(error(FilterSettings(), seed), error(FilterSettings(anchor_spread=30.0), seed)) for seed in range(6)]
    assert all(held < 0.2 for held, _ in pairs), pairs
    # nearer on average and on most seeds (seed 3's two land within 1.2 % of each other, the held one behind)
    mean_held, mean_free = np.mean(pairs, axis=0)
    assert sum(held < free for held, free in pairs) >= 5 and mean_held < 0.85 * mean_free


def test_warmup_fit_is_not_dragged_by_one_burst_window() -> None:
    rates = (3.0, 9.0, 6.0, 4.5, 7.5)
    clean, burst = PairFilter(PRIOR, None), PairFilter(PRIOR, None)
    clean.fit([observe(TRUE, r) for r in rates])
    windows = [observe(TRUE, r) for r in rates]
    windows[2] = Observation(6.0, 500, 200, 64, 512, windows[2].ttft_ms * 1.6, windows[2].itl_ms)
    burst.fit(windows)
    check = observe(TRUE, 5.0)
    assert np.abs(clean.predict(check) / clean.observed(check) - 1).max() < 0.01
    assert np.abs(burst.predict(check) / burst.observed(check) - 1).max() < 0.03


def write_csv(path: Path, rows: list[Observation], extra: str = "") -> None:
    lines = ["rate_rps,in_tokens,out_tokens,max_batch,max_queue,ttft_ms,itl_ms,waiting,preemptions,steady"]
    lines += [f"{o.rate_rps},{o.in_tokens},{o.out_tokens},{o.max_batch},{o.max_queue},{o.ttft_ms},{o.itl_ms},"
              f"{o.waiting},{o.preemptions},{int(o.steady)}" for o in rows]
    path.write_text("\n".join(lines) + "\n" + extra)


def test_tune_cli_fits_recorded_observations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import main

    rng = np.random.default_rng(3)
    rows = [observe(TRUE, r, noise=0.01, rng=rng) for r in (2.0, 8.0, 5.0, 11.0, 3.0, 9.0, 6.0, 10.0, 4.0, 7.0)]
    rows.append(Observation(6.0, 500, 200, 64, 512, float("nan"), 20.0))
    rows.append(Observation(6.0, 500, 200, 64, 512, 9000.0, 20.0, steady=False))  # a restart's window
    csv_path = tmp_path / "obs.csv"
    write_csv(csv_path, rows)
    assert main(["tune", str(csv_path), "--alpha-ms", "24", "--beta-ms", "0.18", "--gamma-ms", "40",
                 "--delta-ms", "0.07", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["observations"] == 12 and report["verdicts"]["non-finite"] == 1
    assert report["verdicts"]["transient"] == 1
    assert report["rejected_rows"]["non-finite"] == [12] and report["rejected_rows"]["transient"] == [13]  # lines
    assert report["error_in_sample"]["median_ttft"] < 0.03 and report["error_in_sample"]["median_itl"] < 0.03


@pytest.mark.parametrize(("content", "message"), [
    ("rate_rps,in_tokens\n1,2\n", "missing columns"),
    ("", "is empty (a header of the columns ['rate_rps'"),  # it said every column was missing
    ("\n\n", "is empty"),
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms,colour\n1,2,3,4,5,6,red\n", "unknown columns"),
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms\n1,2,3,4,five,6\n", "'ttft_ms' is not a number"),
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms\n1,2,3,4.5,5,6\n", "'max_batch' must be a whole"),
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms\n", "no observations"),
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms\n1,2,3,4,5,6,7\n", ":2: 7 values for 6 columns"),
    # a short row took the columns it lacks as absent (optional ones at their defaults) or named a shifted one empty
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms,in_cv,out_cv\n1,200,100,8,50,20\n",
     "bad.csv:2: 6 values for 8 columns"),
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms\n1,200,100,8,50,20\n\n  \n,,,,,\n1,200,8,50,20\n",
     "bad.csv:6: 5 values for 6 columns"),  # blank lines and a row of empty cells skipped, as a spreadsheet ends
    # a quote left open took every line after it into one value, quoted whole under the line it ended on
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms\n1,200,100,8,50,20\n\"1,200,100,8,50,20\n"
     + "1,200,100,8,50,20\n" * 1500, "bad.csv:3: a quoted value runs on to line 1503 (a quote left open?)"),
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms\n1,200,100,8,50,20\n\"1,200,100,8,50,20\n"
     + "1,200,100,8,50,20\n" * 9000, "bad.csv:3: a quoted value runs on over 100000 characters (a quote left open?)"),
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms\n1,200,100,8," + "5" * 5000 + "x,20\n",
     "column 'ttft_ms' is not a number: '5555555555555555555555555555555555555555'... (5001 characters)"),
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms,steady\n1,2,3,4,5,6,2\n", "'steady' must be 1 or 0"),
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms\n" + "nan,nan,nan,nan,nan,nan\n" * 3,
     "'max_batch' must be a whole"),
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms\n" + "nan,nan,nan,8,nan,nan\n" * 3,
     "no usable observation (3 non-finite; the first, "),
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms,steady\n1,2,3,4,5,6,0\n", "(1 transient;"),
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms\n-3,500,200,8,30,10\n",  # it named neither row nor why
     "bad.csv:2: column 'rate_rps' must be in [0, 1e+06], got -3"),
    ("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms\n0,500,200,8,30,10\n",
     "bad.csv:2: no-traffic (no requests or zero latency))"),
])
def test_tune_cli_refuses_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                                    message: str) -> None:
    from controller.cli import main

    path = tmp_path / "bad.csv"
    path.write_text(content)
    assert main(["tune", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_tune_cli_refuses_a_cap_outside_the_accelerators_limits(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import main

    path = tmp_path / "obs.csv"
    path.write_text("rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms,power_cap_w\n1,200,100,8,50,20,5000\n")
    assert main(["tune", str(path), "--accelerator", "H100-SXM"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:2: column 'power_cap_w' must be in [200, 700], got 5000" in err[0], err


def test_tune_cli_refuses_a_binary_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from controller.cli import main

    path = tmp_path / "obs.csv"
    path.write_bytes(bytes(range(256)) * 4)
    assert main(["tune", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a CSV text file" in err[0], err


def test_tune_says_which_parameters_sit_on_their_bounds(caplog: pytest.LogCaptureFixture) -> None:
    from tuner.offline import run

    prior = ServiceParams("gen1", 12.0, 0.09, 20.0, 0.035 * 30)  # prompts 30x too slow: delta wants its floor
    rows = [observe(TRUE, r) for r in (2.0, 4.0, 6.0, 8.0, 3.0, 5.0)]
    with caplog.at_level(logging.WARNING):
        report = run(PairFilter(prior, None), rows)
    assert report["bounds_hit"] == {"delta_ms": "lower bound 0.105 (prior / 10)"}
    # said once, as soon as the warm-up shows it (a prior that far off refits slowly: a user may stop it there)
    assert caplog.text.count("delta_ms held at its lower bound 0.105") == 1
    assert re.search(r"delta_ms held at its lower bound 0.105 \(prior / 10\) after the warm-up \(observation [3-6]\);",
                     caplog.text)


def test_tune_prints_parameters_as_analyze_takes_them_back() -> None:
    """Six fixed decimals printed a fit's alpha_ms of 1e-9 as 0, which `analyze` and a prior refuse."""
    from tuner.offline import significant

    assert significant(2.63817432e-09) == 2.63817e-09 and significant(13.519712345) == 13.5197
    assert significant(2048.6912) == 2048.69


def test_a_client_that_drops_is_not_saturated_and_steadiness_is_read_from_data() -> None:
    base = observe(TRUE, 5.0)
    row = dataclasses.replace(base, max_queue=0, waiting=0.0)
    assert row.problem() is None  # max_queue 0 with nothing waiting: 0 >= 0 no longer reads saturated
    assert dataclasses.replace(base, served_rps=0.95 * base.rate_rps, queue_growth=1.0).problem() is None
    assert dataclasses.replace(base, served_rps=0.5 * base.rate_rps).problem() == "unsteady-rate"  # a ramp
    assert dataclasses.replace(base, served_rps=1.6 * base.rate_rps).problem() == "unsteady-rate"  # a backlog drains
    # with no queue, served under offered is requests turned away at a full batch (read as a ramp: a trial)
    assert dataclasses.replace(row, served_rps=0.5 * base.rate_rps).problem() == "saturated"
    assert dataclasses.replace(row, served_rps=1.6 * base.rate_rps).problem() == "unsteady-rate"
    assert dataclasses.replace(base, queue_growth=30.0).problem() == "unsteady-queue"


def test_a_latency_no_server_reads_is_gated_before_the_fit_and_the_filter_goes_on() -> None:
    """1e-308 ms (a hostile scrape's histogram) made the warm-up fit's residuals infinite: scipy raised."""
    tuner = Tuner()
    tuner.ensure("m", "gpu", PRIOR, None)
    for rate in (2.0, 8.0):  # the warm-up fit runs at the third window
        tuner.update("m", "gpu", observe(TRUE, rate))
    for field in ("ttft_ms", "itl_ms"):
        row = dataclasses.replace(observe(TRUE, 5.0), **{field: 1e-308})
        assert row.problem() == "implausible"
        assert tuner.update("m", "gpu", row).reason == "implausible"
    assert tuner.update("m", "gpu", observe(TRUE, 5.0)).accepted


def test_restarts_and_full_queues_are_not_steady_states() -> None:
    base = observe(TRUE, 5.0)
    pair = PairFilter(PRIOR, None)
    restart = Observation(5.0, 500, 200, 64, 512, base.ttft_ms, base.itl_ms, steady=False)
    queued = Observation(5.0, 500, 200, 64, 512, base.ttft_ms, base.itl_ms, waiting=64)
    short_queue = Observation(5.0, 500, 200, 64, 512, base.ttft_ms, base.itl_ms, waiting=63)
    assert pair.update(restart).reason == "transient"
    assert pair.update(queued).reason == "saturated"  # a full batch waits behind the running one
    assert pair.update(short_queue).accepted


def test_a_load_the_old_law_cannot_carry_counts_towards_a_shift() -> None:
    # Learnt while prompts were 14x slower; now the server carries 6 rps, which that law cannot: with the
    # window's bounded queue it predicts a full queue turning arrivals away, far from what was seen.
    slow = ServiceParams("gen1", 12.0, 0.09, 20.0, 0.5)
    tuner = Tuner()
    tuner.ensure("m", "gpu", slow, None)
    for r in (0.5, 1.0, 1.5):
        tuner.update("m", "gpu", observe(slow, r))
    reasons = [tuner.update("m", "gpu", observe(TRUE, 6.0)).reason for _ in range(3)]
    assert reasons == ["gate", "gate", "shift"], reasons
    assert relative_error(tuner, observe(TRUE, 6.0)).max() < 0.05


def test_a_run_that_one_law_takes_in_with_the_steady_windows_is_no_shift() -> None:
    """Two steady windows no law of the family fits (30 % out, as gen1's queueing at 80 % load) were out before the
    run of rejections too: one law that explains the run and the rest as well as the estimate did is a refit."""
    pair = PairFilter(TRUE, None)
    steady = [observe(TRUE, r) for r in (2.0, 8.0, 5.0, 11.0, 3.0, 9.0, 6.0, 10.0)]
    steady[3] = dataclasses.replace(steady[3], ttft_ms=steady[3].ttft_ms * 1.35)
    steady[5] = dataclasses.replace(steady[5], ttft_ms=steady[5].ttft_ms * 1.35)
    pair.accepted, pair.history = 8, list(steady)
    young = ServiceParams("gen1", 12.0, 0.09, 13.0, 0.05)  # the gamma/delta ridge, off at longer prompts
    pair.x, pair.p = np.array(young.as_vector()), np.diag((0.01 * np.array(young.as_vector())) ** 2)
    limit = three_sigma(pair.settings.error_level)
    assert not all(within(pair._residuals(steady[:3] + steady[6:]), limit))  # the young estimate misses some
    reasons = [pair.update(observe(TRUE, r, n_in=2000)).reason for r in (1.0, 2.0, 1.5)]
    assert reasons == ["gate", "gate", "refit"], reasons
    probe = observe(TRUE, 1.2, n_in=2000)
    assert np.abs(pair.predict(probe) / pair.observed(probe) - 1).max() < 0.03


def test_a_run_that_errs_as_its_shape_always_did_is_no_shift_and_a_changed_server_still_is() -> None:
    """ITL at 250-token prompts 30 % below what any gen1 law gives with the 1,500-token windows (a law's bias at
    one shape, as gen1's missing per-step prompt overhead): a run there errs as the steady windows of its shape
    did, which is what the law misses there. A server 30 % slower leaves its old windows of the same shape behind."""
    def biased(o: Observation) -> Observation:
        return dataclasses.replace(o, itl_ms=o.itl_ms * 0.7)

    steady = [observe(TRUE, r, n_in=1500) for r in (2.0, 4.0, 3.0, 5.0, 2.5, 4.5)]
    pair = PairFilter(TRUE, None)
    pair.fit([*steady, *(biased(observe(TRUE, r, n_in=250)) for r in (3.0, 8.0))])
    pair.accepted, pair.history = 8, [*steady, *(biased(observe(TRUE, r, n_in=250)) for r in (3.0, 8.0))]
    pair.p = np.diag((0.01 * pair.x) ** 2)
    assert [pair.update(biased(observe(TRUE, r, n_in=250))).reason for r in (4.0, 6.0, 9.0)] == ["gate", "gate",
                                                                                                 "refit"]
    mixed = [observe(TRUE, r, n_in=n) for r in (2.0, 4.0, 3.0, 5.0) for n in (250, 1500)]
    pair = PairFilter(TRUE, None)
    pair.fit(mixed)
    pair.accepted, pair.history, pair.p = 8, mixed, np.diag((0.01 * pair.x) ** 2)
    slower = ServiceParams("gen1", 12.0 * 1.3, 0.09 * 1.3, 20.0 * 1.3, 0.035 * 1.3)
    assert [pair.update(observe(slower, r, n_in=250)).reason for r in (2.5, 3.5, 4.5)] == ["gate", "gate", "shift"]


def test_a_prior_that_changes_and_changes_back_keeps_what_the_pair_learnt(tmp_path: Path) -> None:
    """A config reloaded half-written lost its last service's prior, and the whole file, reloaded next, brought
    it back: the pair started from the prior both times, and what it had learnt was saved over and gone."""
    path = tmp_path / "tuner.json"
    tuner = Tuner(path)
    tuner.ensure("m", "gpu", PRIOR, None)
    for r in (2.0, 8.0, 5.0, 11.0):
        tuner.update("m", "gpu", observe(TRUE, r))
    learnt = tuner.filters["m|gpu"].x.copy()
    other = dataclasses.replace(PRIOR, alpha_ms=30.0)
    assert tuner.ensure("m", "gpu", other, None).accepted == 0  # another prior: learning starts over
    tuner.update("m", "gpu", observe(TRUE, 3.0))  # and is saved, over the state of the old prior
    back = tuner.ensure("m", "gpu", PRIOR, None)
    np.testing.assert_array_equal(back.x, learnt)
    assert back.accepted == 4
    assert Tuner(path).ensure("m", "gpu", PRIOR, None).accepted == 4  # saved at once: a restart keeps it too


def test_a_fit_solves_each_jacobians_perturbed_states_in_one_call_and_lands_where_one_by_one_does() -> None:
    # least_squares' finite differences perturb one parameter at a time; solved one call each, they were most of
    # a fit's time (and of the daemon's tuner's). Batched, the fit must land where state-by-state calls land.
    rng = np.random.default_rng(4)
    windows = [observe(TRUE, r, noise=0.03, rng=rng) for r in (3.0, 9.0, 6.0, 4.5, 7.5, 10.0)]
    batched, single = PairFilter(PRIOR, None), PairFilter(PRIOR, None)
    sizes: list[int] = []
    real = PairFilter.predict_many

    def counted(self: PairFilter, pairs: list) -> list:  # type: ignore[type-arg]
        sizes.append(len(pairs))
        return real(self, pairs)

    def one_by_one(self: PairFilter, pairs: list) -> list:  # type: ignore[type-arg]
        return [out for pair in pairs for out in real(self, [pair])]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PairFilter, "predict_many", counted)
        batched.fit(windows)
        mp.setattr(PairFilter, "predict_many", one_by_one)
        single.fit(windows)
    free = len(batched.x) + 1  # the fit's log parameters and the anchor's common scale
    assert sizes[0] == len(START_SCALES) * len(windows)  # the starts it chooses between, in one call
    assert free * len(windows) in sizes[1:]  # a Jacobian's states, all in one call
    assert np.allclose(batched.x, single.x, rtol=1e-4)  # to the fit's tolerance: the stacked solve rounds apart
    assert not np.allclose(batched.x, PRIOR.as_vector(), rtol=0.05)  # it moved: the comparison says something


def test_a_filter_update_runs_the_model_once_at_the_estimate() -> None:
    # h(x) served the innovation and then filterpy's update, whose predicted state is x itself: two solves of the
    # same chain. Worked out once, the update lands on the same state.
    pair = PairFilter(PRIOR, None)
    for r in (3.0, 9.0, 6.0):
        assert pair.update(observe(TRUE, r)).reason == "warmup"
    window = observe(TRUE, 4.5)
    model = type(get_model(DEFAULT_MODEL))
    real = model.analyze
    calls: list[tuple[object, ...]] = []

    def counted(self: object, *args: object, **kwargs: object) -> object:
        calls.append(args)
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model, "analyze", counted)
        assert pair.update(window).reason == "accepted"
    assert len(calls) == 1


def test_a_pair_the_config_no_longer_names_keeps_its_saved_state_and_has_it_back(tmp_path: Path) -> None:
    """A model renamed or a service commented out over a restart had its fit dropped at the next save, unsaid: the
    file's other pairs are saved again as they were read, and a pair back in the config (a reload, the file not
    read again) starts from them."""
    path = tmp_path / "tuner.json"
    first = Tuner(path)
    for model in ("m", "gone"):
        first.ensure(model, "gpu", PRIOR, None)
        for r in (2.0, 8.0, 5.0, 11.0):
            first.update(model, "gpu", observe(TRUE, r))
    saved = json.loads(path.read_text())["pairs"]["gone|gpu"]
    second = Tuner(path)  # a restart whose config runs "m" alone
    second.ensure("m", "gpu", PRIOR, None)
    second.update("m", "gpu", observe(TRUE, 6.0))
    assert json.loads(path.read_text())["pairs"]["gone|gpu"] == saved and second.saved_whole
    back = second.ensure("gone", "gpu", PRIOR, None)  # a reload that names it again
    assert back.accepted == saved["accepted"] and list(back.x) == saved["x"]


def test_a_reload_that_changes_a_prior_reads_no_state_file_once_it_holds_what_memory_does(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each save writes every pair in memory, so after one the file holds nothing the daemon lacks; yet a reload
    that changed a prior parsed it again for the new filter (31 MB held the governor's thread 2 s in a trial). The
    new filter now takes the pair's draw curve from the one it replaces, as the file would have given it."""
    from queuemodels.accelerators import profile

    path, h100 = tmp_path / "tuner.json", profile("H100-SXM")
    tuner = Tuner(path)
    tuner.ensure("m", "gpu", PRIOR, h100)
    for r in (2.0, 8.0, 5.0, 11.0):
        tuner.update("m", "gpu", dataclasses.replace(observe(TRUE, r), power_cap_w=700.0, power_w=300.0 + 20 * r))
    draw = tuner.filters["m|gpu"].draw.dump()
    assert len(draw["recent"]) == 4
    path.write_text("{not what a parse would read")  # read, it would be set aside with a warning
    with caplog.at_level(logging.WARNING):
        pair = tuner.ensure("m", "gpu", dataclasses.replace(PRIOR, alpha_ms=30.0), h100)
    assert pair.accepted == 0 and pair.draw.dump() == draw
    assert not caplog.records and path.read_text() == "{not what a parse would read"
