"""The tuner learns a pair's clock sensitivity from windows run at different locked clocks, and only then."""

from __future__ import annotations

from dataclasses import replace

import pytest

from queuemodels import Load, PowerProfile, ServerShape, ServiceParams, get_model
from tuner.clock import ClockFit
from tuner.observation import Observation

PARAMS = ServiceParams("gen2", 6.0, 0.04, 2e-5)
CATALOGUE = PowerProfile("H100-SXM", 700.0, 200.0, 95.0)
TRUE = replace(CATALOGUE, clock_time_sensitivity=0.55, clock_draw_exponent=2.9)


def window(clock: float | None, rate: float, truth: PowerProfile = TRUE, params: ServiceParams = PARAMS) -> Observation:
    """What a replica at this clock shows, as the law with the true sensitivities says."""
    load, shape = Load(rate, 300.0, 600.0), ServerShape(64, 1024, 700.0, clock)
    perf = get_model("mm1k-cb").analyze(params, load, shape, truth, tails=False)
    return Observation(rate, 300.0, 600.0, 64, 1024, perf.ttft_ms, perf.itl_ms, 700.0, perf.power_w,
                       sm_clock_fraction=clock)


def test_windows_at_one_clock_leave_the_catalogues_values() -> None:
    fit = ClockFit()
    for rate in (1.0, 2.0, 3.0):
        assert fit.observe(window(None, rate), PARAMS, CATALOGUE, "mm1k-cb")
    assert fit.applied(CATALOGUE) is CATALOGUE


def test_windows_at_several_clocks_recover_the_sensitivities() -> None:
    fit = ClockFit()
    for clock in (None, 0.8, 0.6, 0.5):
        for rate in (1.5, 3.0):
            fit.observe(window(clock, rate), PARAMS, CATALOGUE, "mm1k-cb")
    assert fit.time_sensitivity == pytest.approx(0.55, abs=0.05)
    assert fit.draw_exponent == pytest.approx(2.9, abs=0.15)
    fitted = fit.applied(CATALOGUE)
    held_out = window(0.7, 2.2)
    perf = get_model("mm1k-cb").analyze(PARAMS, held_out.load, held_out.shape, fitted, tails=False)
    assert perf.power_w == pytest.approx(held_out.power_w, rel=0.01)
    assert perf.itl_ms == pytest.approx(held_out.itl_ms, rel=0.01)


def test_unusable_windows_are_not_kept_and_state_round_trips() -> None:
    fit = ClockFit()
    assert not fit.observe(replace(window(0.6, 1.0), steady=False), PARAMS, CATALOGUE, "mm1k-cb")
    for clock in (None, 0.6):
        fit.observe(window(clock, 2.0), PARAMS, CATALOGUE, "mm1k-cb")
    again = ClockFit()
    assert again.restore(fit.dump()) and again.applied(CATALOGUE) == fit.applied(CATALOGUE)
    assert not ClockFit().restore({**fit.dump(), "draw_exponent": 99.0})
    assert not ClockFit().restore({"recent": "nope"})
    saved = fit.dump()
    saved["recent"][0]["itl_ms"] = 0.0  # a window observe() refuses: kept, it would break the next fit
    assert not ClockFit().restore(saved)
    saved = fit.dump()  # a hand-edited clock no GPU locks at overflowed every slow tick's fit (OverflowError)
    saved["recent"][0]["sm_clock_fraction"] = 1e-300
    assert not ClockFit().restore(saved)
    assert replace(window(0.6, 1.0), sm_clock_fraction=1e-300).problem() == "bad-shape"
    assert not fit.observe(replace(window(0.6, 1.0), power_cap_w=-5.0), PARAMS, CATALOGUE, "mm1k-cb")


def test_a_fit_solves_every_window_at_a_jacobians_states_in_one_call_of_the_model() -> None:
    # The fit had run `analyze` window by window at every state least_squares tried: a third of clock_gain's
    # learning. Batched, it must land where the model's windows taken one at a time land.
    windows = [window(clock, rate) for clock in (None, 0.8, 0.6) for rate in (1.5, 3.0)]
    windows.insert(3, replace(window(0.7, 2.0), power_w=None))  # no draw read: its latency counts, its draw not
    model = type(get_model("mm1k-cb"))
    real = model.mean_figures
    sizes: list[int] = []

    def counted(self: object, points: list) -> list:  # type: ignore[type-arg]
        sizes.append(len(points))
        return real(self, points)  # type: ignore[arg-type]

    def one_by_one(self: object, points: list) -> list:  # type: ignore[type-arg]
        return [real(self, [p])[0] for p in points]  # type: ignore[arg-type]

    fits = []
    for patched in (counted, one_by_one):
        fit = ClockFit(recent=list(windows))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(model, "mean_figures", patched)
            mp.setattr(model, "analyze", None)  # none of it window by window
            fit.fit(PARAMS, CATALOGUE, "mm1k-cb")
        fits.append((fit.time_sensitivity, fit.draw_exponent, fit.step_share))
    assert max(sizes) == 3 * len(windows)  # the three perturbed states of a Jacobian, every window
    assert fits[0] == pytest.approx(fits[1], rel=1e-3)
    assert fits[0][0] == pytest.approx(0.55, abs=0.05)  # it found the truth: the comparison says something


ROOF = ServiceParams("step", 10.0, 0.03, 8.0, 0.03).with_step_defaults()
"""A roofline law whose step is mostly its fixed per-step time (alpha 10 ms), as decode-bound services fit."""


@pytest.mark.parametrize("share", [0.0, 0.4])
def test_the_share_of_a_decode_steps_fixed_time_that_follows_the_clock_is_learnt(share: float) -> None:
    """Under the roofline a lock slows only the compute the memory time no longer hides, and, by the share the
    engine runs on the GPU's clock (its small kernels and launches; none of the host's scheduling), the step's fixed
    time: each engine's own, learnt from windows at several clocks, 0 where decode keeps its pace."""
    truth = replace(CATALOGUE, clock_time_sensitivity=0.9, clock_step_share=share)
    fit = ClockFit()
    for clock in (None, 0.8, 0.6, 0.5):
        for rate in (1.5, 3.0):
            fit.observe(window(clock, rate, truth, ROOF), ROOF, CATALOGUE, "mm1k-cb")
    assert fit.step_share == pytest.approx(share, abs=0.05)
    held_out = window(0.7, 2.2, truth, ROOF)
    perf = get_model("mm1k-cb").analyze(ROOF, held_out.load, held_out.shape, fit.applied(CATALOGUE), tails=False)
    assert perf.itl_ms == pytest.approx(held_out.itl_ms, rel=0.01)


def test_a_state_file_from_before_the_step_share_restores_with_a_share_of_0() -> None:
    fit = ClockFit()
    for clock in (None, 0.6):
        fit.observe(window(clock, 2.0), PARAMS, CATALOGUE, "mm1k-cb")
    old = {k: v for k, v in fit.dump().items() if k != "step_share"}
    again = ClockFit()
    assert again.restore(old) and again.step_share == 0.0
    assert again.applied(CATALOGUE).clock_time_sensitivity == fit.time_sensitivity
    assert not ClockFit().restore({**fit.dump(), "step_share": 2.0})
    assert not ClockFit().restore({**fit.dump(), "step_share": None})


@pytest.mark.parametrize("value", ["", "0.5", [], {}, True, 10**400, float("nan"), -0.1],
                         ids=["empty", "text", "list", "table", "bool", "huge-int", "nan", "negative"])
def test_a_hostile_step_share_is_refused_and_changes_nothing(value: object) -> None:
    """A state file is anyone's to edit: a value no fit writes is refused (the daemon starts from the catalogue),
    never raised (a string or an integer of 400 digits had stopped the daemon at start)."""
    fit = ClockFit()
    for clock in (None, 0.6):
        fit.observe(window(clock, 2.0), PARAMS, CATALOGUE, "mm1k-cb")
    saved = fit.dump()
    before = (fit.time_sensitivity, fit.draw_exponent, fit.step_share, list(fit.recent))
    assert not fit.restore({**saved, "step_share": value})
    assert not fit.restore({**saved, "time_sensitivity": value})
    assert (fit.time_sensitivity, fit.draw_exponent, fit.step_share, fit.recent) == before
