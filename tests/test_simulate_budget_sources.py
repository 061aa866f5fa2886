"""Budget sources in simulated time (controller/simulate/sources.py) and the power figures: the
sources read the scenario's clock, never the wall clock; a demand-response signal reaches the real source
through its file; the figures count what the trace shows."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from controller.budget.settings import CarbonCsvSettings, DemandResponseSettings
from controller.config_loader import ConfigError
from controller.settings import PowerDomainSettings, PowerSettings
from controller.simulate.accounting import figures, violations
from controller.simulate.power_figures import carbon_figures, domain_figures, drop_figures, ramp_figures
from controller.simulate.runner import Trace, run
from controller.simulate.scenario import load_scenario
from controller.simulate.sources import mean_budget_w
from controller.simulate.targets import carbon_limits

TWO_GPUS = {"chat": {"H100-SXM": 2}}
HEADER = ("Datetime (UTC),Country,Zone name,Zone id,Carbon intensity gCO₂eq/kWh (direct),"
          "Carbon intensity gCO₂eq/kWh (Life cycle),Data source\n")
DR = ('[power.budget]\nsafe_budget_w = 1000\n[[power.budget.sources]]\nkind = "fixed"\nbudget_w = 1400\n'
      '[[power.budget.sources]]\nkind = "demand_response"\nname = "utility"\npath = "signal.json"\n')


def test_a_demand_response_signal_is_met_within_two_seconds_on_the_simulated_clock(
        small_scenario: Callable[..., Path], tmp_path: Path) -> None:
    """The signal (500 W for 30 s at t = 40 s) ends at start_utc + 70 s, months before the wall clock: a source
    reading the wall clock would take it as past and set no limit."""
    scn = load_scenario(small_scenario('name = "dr"\nduration_s = 100\nseed = 3\nstart_utc = "2026-04-15T00:00:00Z"\n'
                                       '[[events]]\nat_s = 40\nkind = "demand_response"\nbudget_w = 500\n'
                                       'duration_s = 30\nreason = "peak event"\n' + DR))
    log = tmp_path / "decisions.jsonl"
    r = run(scn, "wattscale", 3, TWO_GPUS, decision_log=log)
    tr = r.trace
    assert set(tr.budget_w[(tr.t_s > 40) & (tr.t_s <= 70)]) == {500.0}
    assert set(tr.budget_w[tr.t_s > 71]) == {1400.0}
    assert tr.draw_w[(tr.t_s > 30) & (tr.t_s <= 40)].min() > 600  # the signal binds
    f = figures(scn, r)
    assert f["drop_settle_s"] is not None and f["drop_settle_s"] <= 2 and f["drop_over_after_s"] == 0
    whys = [line for line in log.read_text().splitlines() if "peak event" in line]
    assert whys and "utility" in json.loads(whys[0])["budget"]["why"]
    assert not (tmp_path / "signal.json").exists()  # the run wrote its signal into its own temporary directory


def test_a_carbon_csv_sets_the_budget_on_the_scenarios_clock(small_scenario: Callable[..., Path],
                                                              tmp_path: Path) -> None:
    """Intensity steps every 10 grid minutes (one simulated minute at grid_time_scale 10); the curve maps 100 g
    to 1,400 W and 300 g to 800 W; the forecast is not read ahead (lead_s 0)."""
    rows = [("00:00", 100), ("00:10", 300), ("00:20", 200), ("00:30", 100)]
    (tmp_path / "grid.csv").write_text(HEADER + "".join(f"2026-04-15 {t}:00,X,X,X,{g},{g},synthetic\n"
                                                        for t, g in rows))
    body = ('name = "carbon"\nduration_s = 180\nseed = 3\nstart_utc = "2026-04-15T00:00:00Z"\ngrid_time_scale = 10\n'
            '[power.budget]\nsafe_budget_w = 1000\n[[power.budget.sources]]\nkind = "carbon_csv"\npath = "grid.csv"\n'
            'curve = [[100, 1400], [300, 800]]\nlead_s = 0\nrefresh_s = 60\n')
    scn = load_scenario(small_scenario(body))
    r = run(scn, "wattscale", 3, TWO_GPUS)
    tr = r.trace
    assert list(tr.budget_w[[0, 59, 60, 119, 120, 179]]) == [1400.0, 1400.0, 800.0, 800.0, 1100.0, 1100.0]
    assert list(tr.intensity_g_per_kwh[[0, 60, 120]]) == [100.0, 300.0, 200.0]
    assert mean_budget_w(scn, 180, tmp_path / "signals") == pytest.approx(float(tr.budget_w.mean()))
    flat = run(scn, "wattscale-flat", 3, TWO_GPUS, flat_budget_w=1100.0)
    assert set(flat.trace.budget_w) == {1100.0}
    f, g = figures(scn, r), figures(scn, flat)
    assert f["co2_mg_per_token"] is not None and g["co2_mg_per_token"] is not None
    assert f["mean_budget_w"] == pytest.approx(g["mean_budget_w"])
    assert f["budget_bound_share"] is not None and 0 < f["idle_energy_share"] < 1


@pytest.mark.parametrize(("content", "reason"), [
    (None, "No such file"), ("", "empty file"), ("not,an,export\n1,2,3\n", "column"),
    (HEADER, "no intensity in its rows"),
    (HEADER + "1999-04-15 00:00:00,X,X,X,100,100,synthetic\n",  # the run's dates missed: all at the safe budget
     "its points run 1999-04-15T00:00Z to 1999-04-15T00:00Z, and the run reads 2026-"),
])
def test_a_scenarios_carbon_csv_is_read_once_before_it_runs(small_scenario: Callable[..., Path], tmp_path: Path,
                                                            content: str | None, reason: str) -> None:
    """A missing, empty or garbled CSV, or one whose points miss the run's dates, ran the whole simulation on the
    safe budget (no CO2 figures), said only in simulate.log."""
    if content is not None:
        (tmp_path / "grid.csv").write_text(content)
    body = ('name = "carbon"\nduration_s = 30\nseed = 3\n[power.budget]\nsafe_budget_w = 900\nttl_s = 60\n'
            '[[power.budget.sources]]\nkind = "carbon_csv"\npath = "grid.csv"\ncurve = [[100, 1400], [300, 800]]\n')
    with pytest.raises(ConfigError, match=reason) as caught:
        load_scenario(small_scenario(body))
    assert caught.value.where == "power.budget.sources[0].path"


def test_a_carbon_csv_broken_while_it_runs_falls_back_to_the_safe_budget_without_a_traceback(
        small_scenario: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "grid.csv").write_text(HEADER + "2026-04-15 00:00:00,X,X,X,100,100,synthetic\n")
    scn = load_scenario(small_scenario(
        'name = "carbon"\nduration_s = 30\nseed = 3\nstart_utc = "2026-04-15T00:00:00Z"\n[power.budget]\n'
        'safe_budget_w = 900\nttl_s = 60\n[[power.budget.sources]]\nkind = "carbon_csv"\npath = "grid.csv"\n'
        'curve = [[100, 1400], [300, 800]]\n'))
    (tmp_path / "grid.csv").write_text("not,an,export\n1,2,3\n")
    r = run(scn, "wattscale", 3, TWO_GPUS)
    assert set(r.trace.budget_w) == {900.0}
    assert figures(scn, r)["co2_mg_per_token"] is None


def trace_of(draw_w: list[float], budget_w: list[float], limits_w: list[float] | None = None,
             domains: dict[str, list[float]] | None = None) -> Trace:
    n = len(draw_w)
    arr = np.asarray
    return Trace(arr(np.arange(1.0, n + 1)), arr(budget_w, dtype=float), arr(draw_w, dtype=float),
                 arr(limits_w if limits_w is not None else [4000.0] * n, dtype=float), {}, {}, {}, np.full(n, np.nan),
                 {k: arr(v, dtype=float) for k, v in (domains or {}).items()})


def test_the_power_figures_count_what_the_trace_shows() -> None:
    """A drop met in its third second, one second over after that; a rack over its limit for two seconds in a
    row and once more. Ramps on 10-s means: a step of +500 W reads as a triangle of rates peaking at 50 W/s
    (7 s past a 30 W/s limit), a step of -600 W peaks at 60 W/s (9 s), 7 of them with the limits falling as
    fast (their step of -500 W)."""
    tr = trace_of([900, 900, 900, 700, 490, 510, 480, 480], [1000, 1000, 500, 500, 500, 500, 500, 500])
    assert drop_figures(tr, 1.0) == {"drop_settle_s": 3.0, "drop_over_after_s": 1.0}
    assert drop_figures(trace_of([100.0] * 3, [900.0] * 3), 1.0)["drop_settle_s"] is None
    # a drop to 10 W for 3 s, never met while it held (the GPUs draw 700 W idle): it read "settled in 4 s", met by
    # the budget lifted back after it
    lifted = trace_of([800, 750, 720, 700, 710, 800], [4000, 10, 10, 10, 4000, 4000])
    assert drop_figures(lifted, 1.0) == {"drop_settle_s": 3.0, "drop_over_after_s": 0.0}
    # a budget falling 10 W a second for a minute, the draw 100 W over it throughout, then met: one drop of 61 s
    # (each step read as a drop of its own, met within 2 s); a drop met, then another: two, each its own over-time
    stairs = [2000.0] + [2000.0 - 10.0 * i for i in range(1, 61)] + [1400.0] * 5
    falling = trace_of([b + 100.0 for b in stairs[:61]] + [1300.0] * 5, stairs)
    assert drop_figures(falling, 1.0) == {"drop_settle_s": 61.0, "drop_over_after_s": 0.0}
    assert violations(SimpleNamespace(trace=falling)) == (59.0, 61.0)  # its first 2 s excused, not each step's
    jagged = [2000.0] + [2000.0 - 10.0 * i + (0.0 if i % 2 else 15.0) for i in range(1, 61)] + [1400.0] * 5
    wavering = trace_of([b + 100.0 for b in jagged[:61]] + [1300.0] * 5, jagged)  # down 25, up 5, ...: one drop
    assert drop_figures(wavering, 1.0)["drop_settle_s"] == 61.0
    assert violations(SimpleNamespace(trace=wavering)) == (59.0, 61.0)
    twice = trace_of([900, 600, 600, 750, 400, 450], [1000, 700, 700, 700, 500, 500])
    assert drop_figures(twice, 1.0) == {"drop_settle_s": 1.0, "drop_over_after_s": 1.0}
    power = PowerSettings(budget_w=2000.0, ramp_up_w_per_s=30.0, ramp_down_w_per_s=30.0,
                          domains=(PowerDomainSettings("rack", 600.0, (0,)),))
    tr = trace_of([500, 600, 650, 550, 610, 500], [2000.0] * 6, domains={"rack": [500, 601, 650, 550, 610, 500]})
    assert domain_figures(power, tr, 1.0) == {"domain_over_s": 3.0, "domain_longest_over_s": 2.0}
    tr = trace_of([500.0] * 20 + [1000.0] * 40 + [400.0] * 20, [2000.0] * 80, limits_w=[1200.0] * 60 + [700.0] * 20)
    ramps = ramp_figures(power, tr, 1.0)
    assert ramps["ramp_rise_max_w_per_s"] == 50.0 and ramps["ramp_fall_max_w_per_s"] == 60.0
    assert ramps["ramp_up_fast_s"] == 7.0 and ramps["ramp_down_fast_s"] == 9.0
    assert ramps["ramp_down_fast_by_limits_s"] == 7.0
    rising = ramp_figures(power, trace_of([500.0 + t for t in range(40)], [2000.0] * 40), 1.0)
    assert rising["ramp_rise_max_w_per_s"] == 1.0 and rising["ramp_fall_max_w_per_s"] == 0.0  # read -1 W/s


def test_the_carbon_figures_count_what_the_trace_shows() -> None:
    """1,000 / 960 / 500 / 400 W for a second each under a 1,000 W budget at 100 / 200 / 300 / 400 g/kWh, 10
    tokens, 200 W idle: 602,000 J g/kWh / 3.6e6 = 0.1672 g, 16.722 mg a token; bound (within 5 %) two seconds
    of four; idle 800 of 2,860 J. The targets' line says what bounds a gain in those figures."""
    tr = replace(trace_of([1000, 960, 500, 400], [1000.0] * 4), intensity_g_per_kwh=np.array([100.0, 200, 300, 400]))
    f = carbon_figures(tr, 1.0, 10, 200.0)
    assert f == {"co2_mg_per_token": 16.72222, "co2_kg": 0.0002, "mean_budget_w": 1000.0, "budget_bound_share": 0.5,
                 "idle_energy_share": 0.28}
    why = carbon_limits({**f, "budget_bound_share": 0.031}, f)
    assert "bound the draw (within 5%) 50.0% of the time and the following one 3.1%" in why and "is 28% of" in why


def test_a_scenarios_power_keys_leave_the_configs_own_paths_to_the_config(small_scenario: Callable[..., Path],
                                                                          tmp_path: Path) -> None:
    """The config's carbon CSV resolves from the config's directory even where a scenario in a directory of its
    own lays a ramp limit over its [power]; a scenario's own source file resolves from the scenario's."""
    host = small_scenario("").parent / "host.toml"
    host.write_text(host.read_text() + '\n[power.budget]\nsafe_budget_w = 1000\n[[power.budget.sources]]\n'
                    'kind = "carbon_csv"\npath = "grid.csv"\ncurve = [[100, 1400], [300, 800]]\n')
    (host.parent / "grid.csv").write_text(HEADER + "2026-04-15 00:00:00,X,X,X,100,100,synthetic\n")
    (tmp_path / "scn").mkdir()
    (tmp_path / "scn" / "ramp.toml").write_text('config = "../host.toml"\nname = "r"\nduration_s = 30\n[power]\n'
                                                'ramp_up_w_per_s = 50\n')
    (tmp_path / "scn" / "dr.toml").write_text('config = "../host.toml"\nname = "d"\nduration_s = 30\n'
                                              '[power.budget]\nsafe_budget_w = 900\n[[power.budget.sources]]\n'
                                              'kind = "demand_response"\npath = "dr.json"\n'
                                              '[[power.budget.sources]]\nkind = "fixed"\nbudget_w = 1400\n')

    def first_path(name: str) -> Path:
        config = load_scenario(tmp_path / "scn" / name).config
        assert config.budget is not None
        src = config.budget.sources[0][1]
        assert isinstance(src, (CarbonCsvSettings, DemandResponseSettings))
        return (Path(config.base_dir) / src.path).resolve()

    assert first_path("ramp.toml") == (tmp_path / "grid.csv").resolve()
    assert first_path("dr.toml") == (tmp_path / "scn" / "dr.json").resolve()


def test_a_service_no_request_reached_reads_so_on_the_console(small_scenario: Callable[..., Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Its attainment is None (summary.md says "no request of it came"): the console printed "SLO chat None"."""
    from controller.cli import main

    path = small_scenario('name = "idle"\nduration_s = 30\nseed = 3\n', rate_rps=0.0)
    assert main(["simulate", str(path), "--report", str(tmp_path / "r"), "--policies", "static", "--no-progress",
                 "--no-frontier"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("static "))
    assert line.endswith("SLO chat no request") or "SLO chat no request " in line, line
