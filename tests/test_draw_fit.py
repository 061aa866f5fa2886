"""The tuner's power-draw curve: learnt from observed GPU power, against the emulator's hidden draw law."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from queuemodels import DEFAULT_MODEL, Load, PowerProfile, ServerShape, ServiceParams, get_model
from queuemodels.accelerators import profile
from simulator.probe import Replica, measure, saturation_rps
from simulator.workload import TokenDist
from tuner import FilterSettings, Observation, PairFilter, Tuner

PRIOR = ServiceParams("gen1", 15.0, 0.1, 10.0, 0.05)
L40S = profile("L40S")


def emulator_window(replica: Replica, batch: int, cap_w: float | None, util: float, seed: int) -> Observation:
    """A steady window of the emulator at `util` of its saturation, as the daemon would observe it."""
    t_in, t_out = TokenDist(512, 0.5), TokenDist(128, 0.5)
    sat = saturation_rps(replica, t_in, t_out, batch, cap_w, seed=seed, min_completions=1000)
    m = measure(replica, util * sat, t_in, t_out, batch, cap_w, requests=1200, seed=seed + 1)
    return Observation(m.rate_rps, m.in_tokens, m.out_tokens, batch, 1024, m.ttft_ms, m.itl_ms, cap_w, m.power_w,
                       in_cv=m.in_cv, out_cv=m.out_cv)


def test_the_fitted_curve_predicts_the_emulators_draw_at_batches_and_caps_it_never_ran() -> None:
    """qwen2.5-14b on an L40S: four windows at batch 64 (two loads, uncapped and at 60 %) teach the curve;
    it then predicts batch 8-256 under other caps within 8 %, where the catalogue's curve is 7-15 % low."""
    replica = Replica("qwen2.5-14b", "L40S", pair_seed=3)
    peak = L40S.max_power_w
    calibration = [emulator_window(replica, 64, cap, util, 10 + i)
                   for i, (cap, util) in enumerate([(None, 0.3), (None, 0.7), (0.6 * peak, 0.3), (0.6 * peak, 0.7)])]
    held_out = [emulator_window(replica, batch, cap, util, 50 + i)
                for i, (batch, cap, util) in enumerate([(16, None, 0.6), (256, None, 0.6), (128, 0.75 * peak, 0.5),
                                                        (8, 0.5 * peak, 0.8)])]
    settings = FilterSettings(anchor_spread=100.0)
    learnt = PairFilter(PRIOR, L40S, settings, fit_power=True)
    blind = PairFilter(PRIOR, L40S, settings, fit_power=True)  # the same windows without a power reading
    for o in calibration:
        learnt.update(o)
        blind.update(replace(o, power_w=None))
    assert learnt.draw.busy_share is not None and blind.draw.busy_share is None
    model = get_model(DEFAULT_MODEL)

    def errors(pair: PairFilter) -> np.ndarray:
        params, prof = pair.params()
        return np.array([model.analyze(params, o.load, o.shape, prof, tails=False).power_w / float(o.power_w) - 1
                         for o in held_out])

    fitted, catalogue = errors(learnt), errors(blind)
    assert np.abs(fitted).max() < 0.08, fitted
    assert np.median(np.abs(fitted)) < 0.5 * np.median(np.abs(catalogue)), (fitted, catalogue)


def synthetic(rate: float, power_w: float | None, **extra: float | bool) -> Observation:
    perf = get_model(DEFAULT_MODEL).analyze(PRIOR, Load(rate, 500, 200), ServerShape(64, 512), None, tails=False)
    return Observation(rate, 500, 200, 64, 512, perf.ttft_ms, perf.itl_ms, None, power_w, **extra)  # type: ignore[arg-type]


def test_power_trains_the_draw_curve_and_never_the_latency_filter() -> None:
    with_power, without = PairFilter(PRIOR, L40S), PairFilter(PRIOR, L40S)
    for rate, watts in ((1.0, 150.0), (3.0, 190.0), (5.0, 230.0), (4.0, 215.0), (2.0, 170.0)):
        with_power.update(synthetic(rate, watts))
        without.update(synthetic(rate, None))
    np.testing.assert_array_equal(with_power.x, without.x)
    np.testing.assert_array_equal(with_power.p, without.p)
    assert with_power.draw.busy_share is not None and without.draw.busy_share is None
    assert with_power.params()[1] != without.params()[1]


@pytest.mark.parametrize("watts,extra", [(None, {}), (math.nan, {}), (0.0, {}), (200.0, {"steady": False}),
                                         (200.0, {"waiting": 600.0})])
def test_windows_that_cannot_teach_the_draw_leave_it_alone(watts: float | None, extra: dict[str, float]) -> None:
    pair = PairFilter(PRIOR, L40S)
    pair.update(synthetic(3.0, watts, **extra))
    assert pair.draw.busy_share is None and pair.draw.recent == []
    assert pair.params()[1] == L40S


def test_the_curve_survives_a_restart_and_a_bad_one_is_dropped(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "tuner.json"
    tuner = Tuner(state)
    tuner.ensure("m", "L40S", PRIOR, L40S)
    for rate, watts in ((1.0, 150.0), (3.0, 190.0), (5.0, 230.0)):
        tuner.update("m", "L40S", synthetic(rate, watts))
    saved = tuner.params("m", "L40S")
    again = Tuner(state)
    again.ensure("m", "L40S", PRIOR, L40S)
    assert again.params("m", "L40S") == saved
    assert again.filters["m|L40S"].draw.recent == tuner.filters["m|L40S"].draw.recent

    doc = json.loads(state.read_text())
    doc["pairs"]["m|L40S"]["draw"]["batch_half"] = -3.0
    state.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING):
        broken = Tuner(state)
        broken.ensure("m", "L40S", PRIOR, L40S)
    assert "draw curve of m|L40S is unreadable" in caplog.text
    restored = broken.params("m", "L40S")
    assert restored is not None and saved is not None
    assert restored[0] == saved[0] and restored[1] == L40S  # latency state kept, the curve from the catalogue


def test_tune_cli_recovers_a_known_curve_from_recorded_power(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Rows whose draws come from a known curve (busy share 0.35, batch half 40) at three batch sizes; six
    windows leave a little of the catalogue's pull (0.2, 96) in the fit."""
    from controller.cli import main

    model = get_model(DEFAULT_MODEL)
    truth = replace(L40S, busy_share=0.35, batch_half=40.0)
    rows = ["rate_rps,in_tokens,out_tokens,max_batch,ttft_ms,itl_ms,power_w"]
    for batch, rate in ((16, 1.0), (16, 3.0), (64, 2.0), (64, 5.0), (256, 4.0), (256, 7.0)):
        perf = model.analyze(PRIOR, Load(rate, 500, 200), ServerShape(batch, 1024), truth, tails=False)
        rows.append(f"{rate},500,200,{batch},{perf.ttft_ms},{perf.itl_ms},{perf.power_w}")
    path = tmp_path / "windows.csv"
    path.write_text("\n".join(rows) + "\n")
    prior = ["--alpha-ms", "15", "--beta-ms", "0.1", "--gamma-ms", "10", "--delta-ms", "0.05"]
    assert main(["tune", str(path), *prior, "--accelerator", "L40S", "--json"]) == 0
    draw = json.loads(capsys.readouterr().out)["draw"]
    assert draw["windows"] == 6 and draw["median_abs_err_power"] < 0.01
    assert draw["busy_share"] == pytest.approx(0.35, abs=0.02) and draw["batch_half"] == pytest.approx(40, rel=0.15)
    assert main(["tune", str(path), *prior]) == 2
    assert "--accelerator: the observations carry power readings" in capsys.readouterr().err


def test_the_curve_is_refitted_where_a_window_misses_it_and_every_eighth_window() -> None:
    model = get_model(DEFAULT_MODEL)
    truth = replace(L40S, busy_share=0.3, batch_half=60.0)

    def window(rate: float, batch: int, off: float = 1.0) -> Observation:
        perf = model.analyze(PRIOR, Load(rate, 500, 200), ServerShape(batch, 1024), truth, tails=False)
        return Observation(rate, 500, 200, batch, 1024, perf.ttft_ms, perf.itl_ms, None, perf.power_w * off)

    pair = PairFilter(PRIOR, L40S)
    for rate, batch in ((1.0, 16), (4.0, 64), (6.0, 256), (2.0, 64)):  # the first fits, the curve then holds
        pair.update(window(rate, batch))
    pair.refit_draw()
    fitted = pair.params()[1]
    for k in range(7):
        pair.update(window(1.5 + 0.5 * k, 64))  # predicted within 3 %: kept, not refitted
        assert pair.params()[1] == fitted and pair.draw.unfitted == k + 1
    pair.update(window(3.0, 64))  # the 8th since the last fit is refitted, predicted or not
    assert pair.draw.unfitted == 0
    pair.update(window(3.0, 128, off=1.2))  # 20 % more than the curve says: refitted at once
    assert pair.draw.unfitted == 0 and pair.params()[1] != fitted


def test_a_prior_above_the_truth_is_learnt_down_on_windows_capped_below_it() -> None:
    """The fit once saw the cap, not the curve: a prior that put decode above a window's cap predicted the cap
    whatever its parameters, and the fit had no slope to follow. A 0.45 busy share stayed 0.45 for an hour on
    GPUs capped at 339 W that drew 290 (budget-step with the catalogue's share raised to what an H200 draws)."""
    model = get_model(DEFAULT_MODEL)
    h100 = profile("H100-SXM")
    prior, truth = replace(h100, busy_share=0.45, batch_half=64.0), replace(h100, busy_share=0.15, batch_half=96.0)
    cap_w = 339.0

    def window(rate: float, batch: int) -> Observation:
        perf = model.analyze(PRIOR, Load(rate, 500, 200), ServerShape(batch, 1024, cap_w), truth, tails=False)
        return Observation(rate, 500, 200, batch, 1024, perf.ttft_ms, perf.itl_ms, cap_w, perf.power_w)

    windows = [window(rate, batch) for rate, batch in ((1.0, 32), (2.5, 64), (4.0, 128), (3.0, 64), (1.5, 32))]
    assert all(o.power_w is not None and o.power_w < 0.9 * cap_w for o in windows)  # the cap never bound
    pair = PairFilter(PRIOR, prior)
    for o in windows:
        pair.update(o)
    params, fitted = pair.params()
    assert fitted is not None and pair.draw.busy_share is not None and pair.draw.busy_share < 0.3
    error = pair.draw.error(params, fitted, pair.queue_model)
    assert error is not None and error < 0.03, error


@pytest.mark.parametrize("under", [1.0, 0.985])
def test_a_cap_that_binds_leaves_a_right_curve_where_it_is(under: float) -> None:
    """The slope that lets a curve above a cap learn down must not pull a right one down to the cap: windows
    whose GPUs sit at (or, as an H200 under SwPowerCap reads, 1.5 % under) a 300-W cap they would pass."""
    model = get_model(DEFAULT_MODEL)
    truth = replace(profile("H100-SXM"), busy_share=0.45, batch_half=64.0)
    cap_w = 300.0

    def window(rate: float, batch: int) -> Observation:
        perf = model.analyze(PRIOR, Load(rate, 500, 200), ServerShape(batch, 1024, cap_w), truth, tails=False)
        return Observation(rate, 500, 200, batch, 1024, perf.ttft_ms, perf.itl_ms, cap_w, perf.power_w * under)

    pair = PairFilter(PRIOR, truth)
    for rate, batch in ((1.0, 32), (2.5, 64), (4.0, 128), (3.0, 64), (1.5, 32), (2.0, 128)):
        pair.update(window(rate, batch))
    pair.refit_draw()
    assert pair.draw.busy_share == pytest.approx(0.45, abs=0.03)


def held_windows(truth: PowerProfile, cap_w: float, under: float, share: float) -> list[Observation]:
    """Windows of `truth` at a 400-W limit the governor held them against in `share` of their ticks, their draw read
    `under` times what the curve says."""
    model = get_model(DEFAULT_MODEL)
    out = []
    for rate, batch in ((1.0, 32), (2.5, 64), (4.0, 128), (3.0, 64), (1.5, 32), (2.0, 128)):
        perf = model.analyze(PRIOR, Load(rate, 500, 200), ServerShape(batch, 1024, cap_w), truth, tails=False)
        out.append(Observation(rate, 500, 200, batch, 1024, perf.ttft_ms, perf.itl_ms, cap_w, perf.power_w * under,
                               power_held_share=share))
    return out


def test_windows_the_governor_held_teach_a_curve_that_reads_low_to_rise() -> None:
    """Under a budget that binds, most windows are held in some tick. Their draw is a bound the curve must reach: a
    catalogue that reads the GPU's draw low (busy share 0.2 where it is 0.45) learns up from them."""
    truth = replace(profile("H100-SXM"), busy_share=0.45, batch_half=64.0)
    pair = PairFilter(PRIOR, profile("H100-SXM"))
    for o in held_windows(truth, 600.0, 0.99, 0.3):
        pair.update(o)
    pair.refit_draw()
    assert pair.draw.busy_share == pytest.approx(0.45, abs=0.05)
    assert len(pair.draw.recent) == 6


@pytest.mark.parametrize("share,moved", [(0.0, True), (0.5, False), (1.0, False)])
def test_a_held_draw_below_the_curve_leaves_it_where_it_is(share: float, moved: bool) -> None:
    """A draw the governor held 30 % under what the load would draw teaches a reading's fit down to it, and leaves
    a bound's where it was: the load would have drawn at least that much, not at most."""
    truth = replace(profile("H100-SXM"), busy_share=0.45, batch_half=64.0)
    pair = PairFilter(PRIOR, truth)
    for o in held_windows(truth, 600.0, 0.7, share):
        pair.update(o)
    pair.refit_draw()
    assert pair.draw.busy_share is not None
    assert (pair.draw.busy_share < 0.35) == moved, pair.draw.busy_share


def test_a_budget_that_binds_for_an_hour_keeps_the_readings_beside_its_bounds() -> None:
    truth = replace(profile("H100-SXM"), busy_share=0.45, batch_half=64.0)
    readings, bounds = held_windows(truth, 600.0, 1.0, 0.0), held_windows(truth, 300.0, 1.0, 1.0)
    pair = PairFilter(PRIOR, truth)
    for o in [*readings, *bounds * 10]:
        pair.update(o)
    kept = pair.draw.recent
    assert len(kept) == len(readings) + pair.draw.keep
    assert kept[: len(readings)] == readings and all(o.power_held_share == 1.0 for o in kept[len(readings):])


@pytest.mark.parametrize("share", [math.nan, -0.1, 1.5, True, "x"])
def test_a_held_share_outside_its_range_teaches_nothing(share: object) -> None:
    """A hand-edited state file's share: the window is implausible to every fit (the clock fit had read -1 as a
    reading)."""
    pair = PairFilter(PRIOR, L40S)
    window = synthetic(3.0, 200.0, power_held_share=share)  # type: ignore[arg-type]
    assert window.problem() == "implausible"
    pair.update(window)
    assert pair.draw.recent == [] and pair.clock.recent == []
