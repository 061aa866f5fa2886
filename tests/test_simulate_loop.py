"""The closed loop in simulated time, measured by the harness: what the budget, the fail-safe and the plan
must hold whatever the load does, and a report that is the same for the same seed."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.simulate import command
from controller.simulate.accounting import figures
from controller.simulate.command import simulate
from controller.simulate.report import markdown
from controller.simulate.runner import Run, run
from controller.simulate.scenario import load_scenario
from controller.simulate.sources import mean_budget_w

TWO_GPUS = {"chat": {"H100-SXM": 2}}


def test_a_budget_step_down_is_held_within_two_seconds(small_scenario: Callable[..., Path]) -> None:
    """Two GPUs drawing about 700 W; the budget drops from 1,400 W to 500 W at t = 60 s."""
    scn = load_scenario(small_scenario('name = "step"\nduration_s = 120\nseed = 3\n[[events]]\nat_s = 60\n'
                                       'kind = "budget"\nbudget_w = 500\n'))
    r = run(scn, "wattscale", 3, TWO_GPUS)
    tr = r.trace
    assert tr.draw_w[(tr.t_s > 50) & (tr.t_s <= 60)].min() > 600  # the step binds
    after = tr.t_s > 62
    assert tr.draw_w[after].max() <= 500 * 1.02
    assert tr.limits_w[tr.t_s >= 61].max() <= 500
    f = figures(scn, r)
    assert f["budget_violation_s"] == 0
    assert f["budget_violation_raw_s"] <= 2


def test_an_event_in_the_last_tick_applies(small_scenario: Callable[..., Path], tmp_path: Path) -> None:
    """An event between the last tick's start and the end was listed as in the run and never applied (events
    were applied at the first tick at or after them), and the flat policy's mean budget left it out too."""
    scn = load_scenario(small_scenario('name = "late"\nduration_s = 10\nseed = 3\n[[events]]\nat_s = 9.5\n'
                                       'kind = "budget"\nbudget_w = 500\n'))
    tr = run(scn, "static", 3, TWO_GPUS).trace
    assert tr.budget_w[-1] == 500 and tr.budget_w[-2] == 1400
    assert mean_budget_w(scn, 10.0, tmp_path) == pytest.approx((9 * 1400 + 500) / 10)
    # cut short by --duration-s 9.4 (10 ticks), the event is after the run's end, as the report says: not applied
    assert run(scn, "static", 3, TWO_GPUS, duration_s=9.4).trace.budget_w[-1] == 1400
    assert mean_budget_w(scn, 9.4, tmp_path / "cut") == 1400


def test_a_budget_below_the_replicas_floors_sheds_a_replica_at_once(small_scenario: Callable[..., Path]) -> None:
    """The budget drops to 330 W where two busy GPUs at their 200-W floors draw 400: caps cannot hold it, so the
    fast tick wakes the slow loop, whose plan's fewer replicas pass the stability gate at once (it held them for
    its confirmation and cooldown: 43 s over the budget)."""
    scn = load_scenario(small_scenario('name = "floor"\nduration_s = 100\nseed = 3\n[[events]]\nat_s = 60\n'
                                       'kind = "budget"\nbudget_w = 330\n'))
    r = run(scn, "wattscale", 3, TWO_GPUS)
    tr = r.trace
    assert tr.replicas["chat"][(tr.t_s > 50) & (tr.t_s <= 60)].min() == 2
    assert tr.replicas["chat"][tr.t_s >= 62].max() == 1
    assert tr.draw_w[tr.t_s > 62].max() <= 330 * 1.02
    assert figures(scn, r)["budget_violation_s"] == 0


def test_lost_gpu_telemetry_brings_safe_caps(small_scenario: Callable[..., Path]) -> None:
    """GPU readings fail for 30 s under a budget below the load's draw: after the fail-safe's ticks the limits
    sum within the budget, whatever the GPUs do, and the draw stays under it."""
    scn = load_scenario(small_scenario('name = "blind"\nduration_s = 100\nseed = 3\n[[events]]\nat_s = 40\n'
                                       'kind = "telemetry_lost"\nduration_s = 30\n', budget_w=600))
    r = run(scn, "wattscale", 3, TWO_GPUS)
    tr = r.trace
    failsafe = scn.config.daemon.failsafe_after_ticks
    blind = (tr.t_s >= 40 + failsafe) & (tr.t_s <= 70)
    assert blind.sum() >= 25
    assert tr.limits_w[blind].max() <= 600
    assert tr.draw_w[blind].max() <= 600 * 1.02
    assert figures(scn, r)["budget_violation_s"] == 0


def test_no_actuator_flaps_on_a_steady_load_over_a_simulated_hour(small_scenario: Callable[..., Path]) -> None:
    """One GPU at a steady 10 requests/s under a budget it presses against: after the first ten minutes the
    plan holds (no restart, no replica change) and the limit in force settles, not see-sawing."""
    scn = load_scenario(small_scenario('name = "steady"\nduration_s = 3600\nseed = 3\n', gpus=1, rate_rps=10.0,
                                       budget_w=420.0))
    r = run(scn, "wattscale", 3, {"chat": {"H100-SXM": 1}})
    tr = r.trace
    f = figures(scn, r)
    assert f["services"]["chat"]["restarts_per_hour"] <= 2
    assert f["budget_violation_s"] == 0
    settled = tr.t_s > 600
    assert np.count_nonzero(np.diff(tr.max_batch["chat"][settled])) == 0
    assert np.count_nonzero(np.diff(tr.replicas["chat"][settled])) == 0
    steps = np.diff(tr.limit_w["chat"][settled])
    big = steps[np.abs(steps) > 25.0]  # a change of more than 25 W; the governor's trims are smaller
    reversals = np.count_nonzero(np.diff(np.sign(big)) != 0)
    assert reversals <= 6, f"the limit see-saws: {reversals} reversals of > 25 W steps"


def test_the_same_seed_gives_the_same_summary(small_scenario: Callable[..., Path], tmp_path: Path) -> None:
    scn = load_scenario(small_scenario('name = "same"\nduration_s = 90\nseed = 3\n[workload.chat]\nrate_rps = 12\n'
                                       'bursts = [{ start_s = 30, duration_s = 20, factor = 2 }]\n'
                                       'prompt_tail = { share = 0.05, min_tokens = 2000 }\n[[events]]\nat_s = 45\n'
                                       'kind = "slowdown"\nservice = "chat"\nfactor = 1.3\n'))
    policies = ["static", "threshold", "wattscale"]
    one = simulate(scn, tmp_path / "a", policies, [3], 90.0, progress=False)
    two = simulate(scn, tmp_path / "b", policies, [3], 90.0, progress=False)
    assert (tmp_path / "a" / "summary.json").read_text() == (tmp_path / "b" / "summary.json").read_text()
    assert one == two
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["policies"]["static"]["services"]["chat"][
        "requests"] > 500  # counted until GRACE_S before the end, or half the run
    for png in ("power.png", "slo.png", "actuators.png", "energy.png"):
        assert (tmp_path / "a" / png).stat().st_size > 10_000
    row = next(line for line in (tmp_path / "a" / "summary.md").read_text().splitlines()
               if line.startswith("| chat | wattscale |"))
    services = json.loads((tmp_path / "a" / "summary.json").read_text())["policies"]["wattscale"]["services"]
    assert f"| {services['chat']['finished']:g} / {services['chat']['requests']:g} |" in row  # what the p95s are over
    doc = json.loads((tmp_path / "a" / "summary.json").read_text())
    doc["policies"]["wattscale"]["services"]["chat"]["slo_attainment"] = 0.9996  # four misses in 10,000
    assert any(line.startswith("| chat | wattscale | 0.9996 |") for line in markdown(doc, []).splitlines())  # not 1.000
    plant = json.loads((tmp_path / "a" / "summary.json").read_text())["plant"]  # what a scale-down costs there
    assert plant["shutdown_timeout_s"] == 0.0
    assert "restarted aborts what it holds" in (tmp_path / "a" / "summary.md").read_text()
    other = simulate(scn, tmp_path / "c", ["static"], [4], 90.0, progress=False)
    assert other["policies"]["static"] != one["policies"]["static"]


def test_a_report_holds_one_runs_requests_at_a_time(small_scenario: Callable[..., Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`simulate` kept each policy's first-seed run whole for its PNGs, the plant with every request (some 4 MB a
    simulated hour a policy: GBs for a week's scenario), and the last run's beside the next one's. Each run's
    plant is gone before the next run starts, and none outlives the report, which draws the same PNGs."""
    scn = load_scenario(small_scenario('name = "kept"\nduration_s = 60\nseed = 3\n'))
    plants: list[weakref.ref[Any]] = []

    def watched(*args: Any, **kwargs: Any) -> Run:
        gc.collect()
        assert all(plant() is None for plant in plants), "an earlier run's plant is still held"
        r = run(*args, **kwargs)
        plants.append(weakref.ref(r.host))
        return r

    monkeypatch.setattr(command, "run", watched)
    simulate(scn, tmp_path, ["static", "threshold"], [3], 60.0, progress=False)
    gc.collect()
    assert len(plants) == 2 and all(plant() is None for plant in plants)
    assert (tmp_path / "slo.png").stat().st_size > 10_000


def test_the_site_draw_is_read_as_it_happens_not_a_step_ahead(small_scenario: Callable[..., Path]) -> None:
    """An engine step is accounted whole as it starts; read per second from the energy counters, a slowed step's
    joules landed in its first second: draw above the limits' sum, which a capped GPU cannot do, counted as a budget
    violation (3,862 W under 3,290 W of limits on sim.toml's host with chat and code 3 x slower)."""
    scn = load_scenario(small_scenario('name = "slow"\nduration_s = 60\nseed = 3\n[workload.chat]\nrate_rps = 30\n'
                                       'prompt_tail = { share = 0.2, min_tokens = 4000 }\n[[events]]\nat_s = 5\n'
                                       'kind = "slowdown"\nservice = "chat"\nfactor = 3\n', budget_w=700.0))
    tr = run(scn, "uniform-cap", 3, {"chat": {"H100-SXM": 2}}).trace
    assert np.nanmax(tr.draw_w - tr.limits_w) <= 1e-6
    assert np.nanmax(tr.draw_w) > 0.95 * 700.0  # the caps bind: the reading is at stake


def test_the_power_figure_draws_each_domain_against_its_limit(small_scenario: Callable[..., Path], tmp_path: Path
                                                             ) -> None:
    """rack-limit's power.png drew the site alone: not the rack the scenario is about."""
    pytest.importorskip("matplotlib")

    def height(body: str, report: str) -> int:
        scn = load_scenario(small_scenario('name = "r"\nduration_s = 30\nseed = 3\n' + body))
        simulate(scn, tmp_path / report, ["static"], [3], 30.0, progress=False, explain=False)
        return int.from_bytes((tmp_path / report / "power.png").read_bytes()[20:24], "big")  # the PNG's IHDR

    site = height("", "site")
    assert height('[power]\ndomains = [{ name = "rack", limit_w = 650, gpus = [0] }]\n', "rack") > site * 1.4


def test_policies_on_one_value_stay_apart_in_the_figures(small_scenario: Callable[..., Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Five policies running one fleet drew one line (static under uniform-cap, every max batch under wattscale's),
    and slo.png drew the first and the fifth both solid; a constant max batch of 64 sat on a 61-67 axis, as if it
    varied. Each policy's line has its own dash and width now, and counts are drawn from 0."""
    pytest.importorskip("matplotlib")
    from controller.simulate import plots
    from controller.simulate.accounting import Shown
    from controller.simulate.runner import Trace

    scn = load_scenario(small_scenario('name = "styles"\nduration_s = 60\n'))
    t = np.arange(1.0, 61.0)
    flat = {"chat": np.full(60, 64.0)}
    trace = Trace(t, t * 0 + 1400, t * 0 + 900, t * 0 + 1400, {"chat": t * 0 + 2}, flat, {"chat": t * 0 + 500},
                  t * 0 + np.nan, {})
    runs = {name: Shown(trace, {"chat": np.ones(4)}) for name in command.POLICIES}
    figs: list[Any] = []
    monkeypatch.setattr(plots, "_save", lambda plt, fig, path: figs.append(fig))
    plt = plots._pyplot()
    plots.slo(plt, scn, runs, tmp_path / "slo.png")
    plots.actuators(plt, scn, runs, tmp_path / "actuators.png")
    for ax in [figs[0].axes[0], *figs[1].axes]:  # each thinner than the one before, drawn over it
        widths = [line.get_linewidth() for line in ax.get_lines()]
        assert len(widths) == len(command.POLICIES) and all(a > b for a, b in pairwise(widths)), widths
    replicas, batch = figs[1].axes[:2]
    assert replicas.get_ylim()[0] == 0 and batch.get_ylim()[0] == 0 and batch.get_ylim()[1] > 64
    for fig in figs:
        plt.close(fig)
