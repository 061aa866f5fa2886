"""Planning margins learned from missed SLO windows: the tracker settles at its miss share, a margin tightens
what sizing admits, and the estimator feeds it only the windows a plan ran steady in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from prometheus_client import CollectorRegistry

from controller.estimate import Estimator
from controller.optimizer import Assignment
from controller.own_metrics import OwnMetrics
from controller.plan import DrawReading
from controller.settings import OptimizerSettings, ServiceSettings, load_settings
from controller.slo_margin import SloMargins
from controller.telemetry.base import ServiceWindow
from controller.window_figures import offered_rps
from queuemodels import Load, ModelInputError, ServerShape, ServiceParams, Targets, get_model
from queuemodels.accelerators import CATALOG
from tuner import Observation, Tuner, Verdict

STEP, SHARE, TOP = 0.1, 0.02, 0.5


def test_a_miss_adds_a_step_and_met_windows_take_it_off_at_the_miss_share() -> None:
    m = SloMargins()
    m.observe("a", False, STEP, SHARE, TOP)
    assert m.margin("a", STEP, TOP) == pytest.approx(0.1)
    for _ in range(48):  # 1 miss in 50 windows is the share allowed: back to where it was, almost
        m.observe("a", True, STEP, SHARE, TOP)
    assert m.margin("a", STEP, TOP) == 0.0 and m.level["a"] == pytest.approx(STEP / 49, rel=1e-9)
    for _ in range(20):
        m.observe("a", False, STEP, SHARE, TOP)
    assert m.margin("a", STEP, TOP) == pytest.approx(TOP)  # bounded
    assert m.margin("b", STEP, TOP) == 0.0  # a service never judged plans at its targets
    m.observe("a", False, 0.0, SHARE, TOP)  # a step of 0 turns it off and forgets the level
    assert m.margin("a", 0.0, TOP) == 0.0 and "a" not in m.level


def test_the_planned_margin_falls_half_a_step_late_and_never_past_the_largest_allowed() -> None:
    """A lone miss at a step's edge must not add replicas for one cycle and take them back the next; a reload
    that lowers slo_margin_max takes effect at once, before any window is judged."""
    m = SloMargins()
    m.level["a"] = 0.195
    assert m.margin("a", STEP, TOP) == pytest.approx(0.1)
    m.observe("a", False, STEP, SHARE, TOP)  # 0.295: a step up at once
    assert m.margin("a", STEP, TOP) == pytest.approx(0.2)
    m.observe("a", True, STEP, SHARE, TOP)  # just under 0.2 + 0.1: held
    assert m.margin("a", STEP, TOP) == pytest.approx(0.2)
    m.level["a"] = 0.16
    assert m.margin("a", STEP, TOP) == pytest.approx(0.2)  # still within half a step
    m.level["a"] = 0.149
    assert m.margin("a", STEP, TOP) == pytest.approx(0.1)
    m.level["a"] = 0.5
    assert m.margin("a", STEP, 0.3) == pytest.approx(0.3)
    m.level["a"], m.planned["a"] = 0.0, 0.05  # a reload doubled the step: half of it is never under 0
    assert m.margin("a", STEP, TOP) == 0.0


def test_the_level_settles_where_the_miss_share_is_met() -> None:
    """A plant whose windows miss with probability 0.2 - 0.4 x margin: the tracker finds the margin (0.45) at
    which 2 % miss, whatever it starts from."""
    rng = np.random.default_rng(3)
    m = SloMargins()
    levels = []
    for k in range(40_000):
        met = rng.random() >= 0.2 - 0.4 * m.level.get("a", 0.0)
        m.observe("a", bool(met), 0.02, SHARE, 0.9)
        if k >= 20_000:
            levels.append(m.level["a"])
    assert np.mean(levels) == pytest.approx(0.45, abs=0.03)


def test_a_margin_lowers_the_rate_a_replica_is_sized_for() -> None:
    model, params = get_model("mm1k-cb"), ServiceParams("gen1", 12, 0.09, 10, 0.035)
    load, shape = Load(1.0, 1200, 300, 0.6, 0.6), ServerShape(64, 1024, 700.0)
    rates = [model.max_rate(params, load, shape, Targets(800, 45, stat, margin))
             for stat in ("p95", "mean") for margin in (0.0, 0.3)]
    assert rates[1] < rates[0] and rates[3] < rates[2]
    assert Targets(800, 45, "p95", 0.3).limits() == pytest.approx((800, 45, 0.035))
    assert Targets(800, 45, "mean", 0.3).limits() == pytest.approx((560, 31.5, 1.0))
    with pytest.raises(ModelInputError, match=r"margin: must be below 1, got 1\.0"):
        Targets(800, 45, margin=1.0)


def _window(itl_p95_ms: float, steady: bool = True) -> ServiceWindow:
    return ServiceWindow(15.0, 4.0, 1200.0, 300.0, 300.0, 20.0, 500.0, itl_p95_ms, 8.0, 0.0, 0.1, 0.0, 2,
                         steady=steady)


def test_the_estimator_judges_steady_windows_by_the_services_statistic() -> None:
    s = load_settings(ROOT / "config" / "sim.toml")
    code = next(svc for svc in s.services if svc.name == "code")  # p95 ITL <= 45 ms
    tuner = Tuner(None)
    tuner.ensure(code.model, "H100-SXM", code.prior.params(), CATALOG["H100-SXM"])
    est = Estimator(tuner, OwnMetrics(CollectorRegistry()), lambda kind, message: None)
    a = Assignment("H100-SXM", 2, 64, 700.0)
    o = OptimizerSettings()

    def observe(window: ServiceWindow, still: bool = True) -> float:
        est.observe(code, window, [], a, still, o, 0.0)
        return est.margins.margin("code", o.slo_margin_step, o.slo_margin_max)

    assert observe(_window(30.0)) == 0.0
    assert observe(_window(60.0, steady=False)) == 0.0  # a restart's window says nothing of the plan
    assert observe(_window(60.0)) == 0.0  # the window after a restart still completes what it held up
    assert observe(_window(60.0)) == pytest.approx(0.1)  # steady, and over the p95 target
    assert observe(_window(60.0), still=False) == pytest.approx(0.1)  # a max batch rolling out
    observe(_window(30.0))  # settled again
    est.short.add("code")  # the plan could not serve it in full: its miss is not the model's
    assert observe(_window(60.0)) == pytest.approx(0.1)
    est.short.discard("code")
    est.observe(code, _window(60.0), [DrawReading(400.0, 420.0, True)] * 15, a, True, o, 0.0)  # held throughout
    assert est.margins.margin("code", o.slo_margin_step, o.slo_margin_max) == pytest.approx(0.1)
    assert observe(_window(60.0)) == pytest.approx(0.2)
    # held 2 ticks of 15 (the ramp limiter at a draw spike): the miss is the plan's, counted in 13 / 15
    level = est.margins.level["code"]
    draws = [DrawReading(400.0, 420.0, True)] * 2 + [DrawReading(380.0, 420.0, False)] * 13
    est.observe(code, _window(60.0), draws, a, True, o, 0.0)
    assert est.margins.level["code"] == pytest.approx(level + o.slo_margin_step * 13 / 15)


def _estimator(tuner: Tuner | None = None) -> tuple[Estimator, ServiceSettings]:
    s = load_settings(ROOT / "config" / "sim.toml")
    code = next(svc for svc in s.services if svc.name == "code")
    tuner = tuner or Tuner(None)
    tuner.ensure(code.model, "H100-SXM", code.prior.params(), CATALOG["H100-SXM"])
    return Estimator(tuner, OwnMetrics(CollectorRegistry()), lambda kind, message: None), code


def _grown(served_rps: float, waiting: tuple[float, float] | None, running: tuple[float, float] = (8.0, 8.0),
           replicas: int = 2, steady: bool = True) -> ServiceWindow:
    """A 15-s window of `served_rps` completions whose queue and batch went from the first of each pair to the
    second (`waiting` None: not read)."""
    return ServiceWindow(15.0, served_rps, 1200.0, 300.0, 300.0, 20.0, 500.0, 30.0, running[1],
                         0.0 if waiting is None else waiting[1], 0.1, 0.0, replicas, steady=steady,
                         waiting_before=None if waiting is None else waiting[0], running_before=running[0])


def test_a_window_whose_queue_grew_teaches_the_tuner_nothing() -> None:
    """The daemon judges steadiness from the data too: 40 more requests waiting at a window's end than at its
    start, on 2 replicas of max batch 64, is a ramp or an overload (20 a replica, over 64 / 4)."""
    est, code = _estimator()
    a, o = Assignment("H100-SXM", 2, 64, 700.0), OptimizerSettings()
    assert est.observe(code, _grown(4.0, (0.0, 40.0)), [], a, True, o, 0.0) == "unsteady-queue"
    assert est.observe(code, _grown(4.0, (40.0, 42.0)), [], a, True, o, 0.0) == "accepted"  # a queue that holds
    assert est.observe(code, _grown(4.0, None), [], a, True, o, 0.0) == "accepted"  # not read: no growth known
    # 40 preempted out of the batch into the queue: saturated, not a ramp (the system's count did not grow)
    preempted = dataclasses.replace(_grown(4.0, (0.0, 40.0), (60.0, 20.0)), preemptions=40.0)
    assert est.observe(code, preempted, [], a, True, o, 0.0) == "saturated"


class _Recording(Tuner):
    """The real tuner, keeping what each update was given."""

    def __init__(self) -> None:
        super().__init__(None)
        self.given: list[Observation] = []

    def update(self, model: str, accelerator: str, obs: Observation, save: bool = True) -> Verdict:
        self.given.append(obs)
        return super().update(model, accelerator, obs, save)


def test_the_tuner_takes_the_offered_rate_and_a_filling_batch_teaches_it_nothing() -> None:
    """vLLM counts completions; what the model takes is arrivals, completions plus the growth of the requests in the
    system. A batch that fills (a burst with no queue: 90 more running on 2 replicas of max batch 128) reads 4 rps
    served against 10 offered, and teaches nothing; a steady window's few more running leave the completions."""
    tuner = _Recording()
    est, code = _estimator(tuner)
    a, o = Assignment("H100-SXM", 2, 128, 700.0), OptimizerSettings()

    def given(window: ServiceWindow) -> tuple[str, float, float | None]:
        verdict = est.observe(code, window, [], a, True, o, 0.0)
        return verdict, tuner.given[-1].rate_rps, tuner.given[-1].served_rps

    assert given(_grown(4.0, (0.0, 0.0), (8.0, 98.0))) == ("unsteady-rate", pytest.approx((4.0 + 90.0 / 15.0) / 2),
                                                           2.0)
    assert given(_grown(4.0, (0.0, 0.0), (98.0, 101.0))) == ("accepted", 2.0, 2.0)  # within its noise
    assert given(_grown(4.0, None, (98.0, 101.0))) == ("accepted", 2.0, None)  # not read: as served, unjudged
    # a queue and a batch that both grew: the arrivals are what either took
    assert given(_grown(4.0, (0.0, 30.0), (8.0, 38.0)))[1] == pytest.approx((4.0 + 60.0 / 15.0) / 2)
    # the batch empties with nothing offered: completions from the backlog alone
    assert given(_grown(6.0, (0.0, 0.0), (100.0, 0.0))) == ("unsteady-rate", 0.0, 3.0)


def test_offered_is_completions_plus_a_growth_past_its_noise() -> None:
    assert offered_rps(60.0, 1000.0, 1150.0, 15.0) == pytest.approx(70.0)  # past 3 x sqrt(2 x 900 completions)
    assert offered_rps(60.0, 1000.0, 1120.0, 15.0) == 60.0  # within 3 x sqrt(1,800) = 127
    assert offered_rps(4.0, 0.0, 18.0, 15.0) == 4.0  # within 3 x sqrt(2 x 18)
    assert offered_rps(4.0, 0.0, 20.0, 15.0) == pytest.approx(4.0 + 20.0 / 15.0)
    # requests that outlive the window (a count of 200 at 4 rps): the window's 60 completions set the noise, not
    # the count; 8 rps offered against 4 served is no noise
    assert offered_rps(4.0, 200.0, 260.0, 15.0) == pytest.approx(8.0)
    assert offered_rps(1.0, 200.0, 0.0, 15.0) == 0.0  # emptied with nothing offered, not a negative rate


def test_demand_is_what_arrived_not_what_was_served() -> None:
    """A saturated replica's completions read its capacity: the queue's or the batch's growth over the window is
    demand too (arrivals = completions + growth), and a steady window's backlog joins it as waiting / drain_s."""
    est, code = _estimator()
    a, o = Assignment("H100-SXM", 1, 64, 700.0), OptimizerSettings(drain_s=120.0)

    def rate(window: ServiceWindow) -> float:
        est.observe(code, window, [], a, True, o, 0.0)
        return est.load["code"].rate_rps

    full = (64.0, 64.0)
    assert rate(_grown(4.0, None, full, 1)) == pytest.approx(4.0)  # not read: nothing to compare
    assert rate(_grown(4.0, (0.0, 60.0), full, 1)) == pytest.approx(4.0 + 60.0 / 15.0 + 60.0 / 120.0)
    assert rate(_grown(4.0, (60.0, 30.0), full, 1)) == pytest.approx(4.0 + 30.0 / 120.0)  # draining: served covers it
    assert rate(_grown(4.0, (0.0, 0.0), (10.0, 60.0), 1)) == pytest.approx(4.0 + 50.0 / 15.0)  # a batch that filled
    est.short.add("code")  # the plan left it short: its backlog is the shortfall's, its arrivals still demand
    assert rate(_grown(4.0, (30.0, 90.0), full, 1)) == pytest.approx(4.0 + 60.0 / 15.0)
    est.short.discard("code")
    assert rate(_grown(4.0, (90.0, 150.0), full, 1, steady=False)) == pytest.approx(4.0)  # a restart's queue
    assert rate(_grown(4.0, (150.0, 190.0), full, 1)) == pytest.approx(4.0 + 190.0 / 120.0)  # and the next growth
    # a queue grown out of the batch (20 preempted) is no new demand: only its backlog is
    assert rate(_grown(4.0, (0.0, 20.0), (64.0, 44.0), 1)) == pytest.approx(4.0 + 20.0 / 120.0)


def test_a_queue_that_left_the_plan_short_is_not_sized_again_until_it_has_drained_by_half() -> None:
    """Left out only while the last plan was short, a queue beyond any fleet made the next plan (sized without it)
    not short, and the one after sized it, short again: a trial's priority-1 service was planned on 2 x H100 and 1 x
    A100 every other cycle (each held at the gate; a gate confirming at once would have moved it each cycle)."""
    est, code = _estimator()
    a, o = Assignment("H100-SXM", 1, 64, 700.0), OptimizerSettings(drain_s=120.0)
    full = (64.0, 64.0)

    def rate(waiting: float, short_rps: float) -> float:
        """One cycle: the window's demand, then the plan's shortfall as the controller hands it back."""
        est.observe(code, _grown(4.0, (waiting, waiting), full, 1), [], a, True, o, 0.0)
        est.planned_short("code", short_rps)
        return est.load["code"].rate_rps

    assert rate(720.0, 1.75) == pytest.approx(4.0 + 720.0 / 120.0)  # sized: the plan is short
    assert rate(720.0, 0.0) == pytest.approx(4.0)  # left out: not short
    assert rate(720.0, 0.0) == pytest.approx(4.0)  # still left out (it swapped back here)
    assert rate(500.0, 0.0) == pytest.approx(4.0)
    assert rate(360.0, 0.0) == pytest.approx(4.0 + 360.0 / 120.0)  # drained by half: sized again
    assert "code" not in est.held


def test_margins_that_cannot_be_saved_warn_once_and_count_each_time(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "afile").write_text("")
    tuner = Tuner(tmp_path / "afile" / "tuner.json")  # works as root too: a file is never a directory
    registry = CollectorRegistry()
    est = Estimator(tuner, OwnMetrics(registry), lambda kind, message: None)
    for _ in range(3):
        est.margins.observe("code", False, STEP, SHARE, TOP)
        est.margins.margin("code", STEP, TOP)
        est.save_margins()
    est.save_margins()  # nothing changed, but the file does not hold it yet: tried again
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith(f"{tmp_path}/afile/slo_margins.json: cannot save SLO margins (")
    assert message.endswith("); running on, they start at 0 on restart")
    assert registry.get_sample_value("wattscale_errors_total", {"kind": "slo_margins"}) == 4.0
    assert est.margins.planned["code"] == pytest.approx(0.3)


def test_saved_margins_read_back_as_they_were(tmp_path: Path) -> None:
    path = tmp_path / "slo_margins.json"
    margins = SloMargins(path=path)
    margins.observe("chat", False, STEP, SHARE, TOP)
    margins.observe("chat", False, STEP, SHARE, TOP)
    margins.observe("chat", True, STEP, SHARE, TOP)
    margins.margin("chat", STEP, TOP)
    assert margins.save()
    back, problem = SloMargins.restored(path)
    assert problem is None and (back.level, back.planned) == (margins.level, margins.planned)
    assert back.margin("chat", STEP, TOP) == margins.margin("chat", STEP, TOP) == pytest.approx(0.1)


def test_the_planned_margin_is_a_whole_number_of_steps_as_written() -> None:
    """Three steps of 0.1 were planned, logged and stored as 0.30000000000000004 (a new-user trial)."""
    m = SloMargins()
    m.level["a"] = 0.31
    assert m.margin("a", 0.1, TOP) == 0.3 and repr(m.planned["a"]) == "0.3"
