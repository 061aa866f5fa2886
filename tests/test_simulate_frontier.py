"""A missed simulate target says why in the report's own figures: the emulator's frontier for the energy targets,
the baselines' power limits for an attainment target."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.cli import main
from controller.simulate import frontier as frontier_module
from controller.simulate.command import simulate
from controller.simulate.frontier import FrontierUnavailable, Option, explain, frontier, pick
from controller.simulate.scenario import load_scenario
from controller.simulate.sizing import static_fleet
from controller.simulate.targets import energy_missed, not_judged, targets
from simulator.hardware import SPECS


def _grid(rng: np.random.Generator, services: int) -> list[list[Option]]:
    return [[Option(int(n), None, float(rng.uniform(50, 600)), float(rng.uniform(10, 90)), 0.0, 0.0, 1.0)
             for n in rng.integers(1, 4, size=int(rng.integers(2, 6)))] for _ in range(services)]


def test_pick_finds_what_a_search_of_every_plan_finds() -> None:
    rng = np.random.default_rng(5)
    for _ in range(40):
        grid = _grid(rng, int(rng.integers(1, 4)))
        gpus, bound_w, need = int(rng.integers(2, 8)), float(rng.uniform(100, 1500)), float(rng.uniform(20, 200))
        plans = [p for p in itertools.product(*grid) if sum(o.replicas for o in p) <= gpus]
        within = [p for p in plans if sum(o.dynamic_w for o in p) <= bound_w]
        fast = [p for p in plans if sum(o.t_over_c for o in p) >= need]
        fastest = pick(grid, gpus, most_speed_within_w=bound_w)
        least = pick(grid, gpus, least_draw_for_speed=need)
        assert (fastest is None) == (not within) and (least is None) == (not fast)
        if fastest is not None:
            assert sum(o.t_over_c for o in fastest) == pytest.approx(max(sum(o.t_over_c for o in p) for p in within))
        if least is not None:
            assert sum(o.dynamic_w for o in least) == pytest.approx(min(sum(o.dynamic_w for o in p) for p in fast))


def test_the_frontier_load_tests_the_scenarios_own_engine(small_scenario: Callable[..., Path]) -> None:
    scn = load_scenario(small_scenario('name = "f"\nduration_s = 60\nseed = 3\n'))
    front = frontier(scn, {"chat": {"H100-SXM": 2}})
    assert [(o["replicas"], o["clock"]) for o in front["options"]["chat"]] == [
        (n, c) for n in (1, 2) for c in frontier_module.CLOCKS]
    static = front["static"]["plan"]["chat"]
    assert static == front["options"]["chat"][4] and front["static"]["draw_w"] == pytest.approx(
        2 * SPECS["H100-SXM"].empty_w + static["dynamic_w"])  # both GPUs with no process, the replicas above
    slow = front["options"]["chat"][7]  # 2 replicas at 0.3 of the clock: slower and cheaper than at the free clock
    assert slow["t_over_c"] < static["t_over_c"] and slow["dynamic_w"] < static["dynamic_w"]
    best = front["most_t_over_c_at_energy_target"]
    assert best["tokens_per_joule_vs_static"] >= 1.3 and best["draw_w"] <= front["static"]["draw_w"] / 1.3
    # one replica at a locked clock cannot keep up with 20 rps: its low draw serves fewer tokens, no plan of the same
    # tokens (a plan of one at 0.3 of the clock read as the cheapest, serving under half the load)
    assert [o["served_share"] < 0.97 for o in front["options"]["chat"]][:4] == [False, True, True, True]
    assert best["plan"]["chat"]["served_share"] >= 0.97 and front["meets_both"] is False


def test_the_frontier_caps_uniform_caps_fleet_as_uniform_cap_splits_the_budget(small_scenario: Callable[..., Path]
                                                                                ) -> None:
    """It measured uniform-cap at an even share of every GPU (1,400 / 3 W) while uniform-cap holds an empty GPU at
    its floor and splits the rest over those serving."""
    scn = load_scenario(small_scenario('name = "f"\nduration_s = 60\nseed = 3\n', gpus=3))
    front = frontier(scn, {"chat": {"H100-SXM": 2}})
    assert front["uniform_cap"]["cap_w"] == (1400.0 - SPECS["H100-SXM"].min_limit_w) / 2


def test_a_frontier_that_cannot_be_measured_says_why(small_scenario: Callable[..., Path],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    scn = load_scenario(small_scenario('name = "f"\nduration_s = 60\nseed = 3\n', gpus=4))
    with pytest.raises(FrontierUnavailable, match="runs 0 replicas of chat, outside the 1 to 4 the grid tries"):
        frontier(scn, {})
    monkeypatch.setattr(frontier_module, "MAX_LOAD_TESTS", 16)
    with pytest.raises(FrontierUnavailable, match="17 load tests"):  # 4 replica counts x 4 clocks + uniform-cap's
        frontier(scn, static_fleet(scn, 3))


def test_an_even_split_of_the_budget_is_within_it(small_scenario: Callable[..., Path], tmp_path: Path) -> None:
    """7 x (2600 / 7) sums to 2600.0000000000005 W: uniform-cap read as over the budget every second. (Its split now
    puts the GPUs with no replica at their floor and the rest evenly on those serving, up to their highest limit.)"""
    scn = load_scenario(small_scenario('name = "f"\nduration_s = 30\nseed = 3\n', gpus=7, budget_w=2600.0))
    doc = simulate(scn, tmp_path, ["uniform-cap"], [3], 30.0, progress=False, explain=False)
    assert doc["static_fleet"] == {"chat": {"H100-SXM": 2}}
    assert doc["policies"]["uniform-cap"]["mean_limits_w"] == 5 * 200.0 + 2 * 700.0  # the two serving at their top
    assert doc["policies"]["uniform-cap"]["limits_over_budget_s"] == 0.0


def _policy(attainment: float, limits_over_s: float, tokens_per_joule: float = 2.0, t_over_c: float = 90.0,
            bound_s: float | None = None) -> dict[str, Any]:
    """A policy's figures; its limits over the budget with its draw near it for `bound_s` (all of them unless given)."""
    return {"budget_violation_s": 0.0, "tokens_per_joule": tokens_per_joule, "sum_t_over_c": t_over_c,
            "limits_over_budget_s": limits_over_s, "mean_limits_w": 1500.0 if limits_over_s else 1300.0,
            "limits_over_bound_s": limits_over_s if bound_s is None else bound_s,
            "peak_draw_w": 1350.0,
            "mean_budget_w": 1400.0, "co2_mg_per_token": None, "drop_settle_s": None, "domain_longest_over_s": None,
            "ramp_up_fast_s": None, "ramp_down_fast_by_limits_s": None,
            "services": {"chat": {"slo_attainment": attainment, "finished": 100.0, "restarts_per_hour": 0.0}}}


def test_an_attainment_miss_says_what_the_better_baselines_limits_were(small_scenario: Callable[..., Path]) -> None:
    scn = load_scenario(small_scenario('name = "f"\nduration_s = 60\nseed = 3\n'))
    ahead = {"static": _policy(0.99, 60.0), "slo-only": _policy(0.985, 12.0), "uniform-cap": _policy(0.9, 0.0)}
    got = {t["target"]: t for t in targets(scn, {**ahead, "wattscale": _policy(0.98, 0.0)}, 3600.0)}
    why = got["chat (priority 1): slo_attainment >= every baseline's (best: static 0.9900)"]["why"]
    assert why == ("static (0.9900) ran with its GPUs' power limits summed above the budget for 60 s, 60 s of them "
                   "drawing within 5% of it or over (limits' mean sum 1500 W; peak draw 1350 W); slo-only (0.9850) ran "
                   "with its GPUs' power limits summed above the budget for 12 s, 12 s of them drawing within 5% of it "
                   "or over (limits' mean sum 1500 W; peak draw 1350 W); wattscale (0.9800) kept its GPUs' "
                   "power limits' sum within the budget (limits' mean sum 1300 W; peak draw 1350 W), under a mean "
                   "budget of 1400 W: those ahead ran on limits that a hard budget does not allow")
    assert got["chat (priority 1): slo_attainment >= 0.99 (static reaches 0.9900)"]["why"].endswith(
        "under a mean budget of 1400 W: static ran on limits that a hard budget does not allow")
    # wattscale's sum over the budget too: nothing tells them apart, and no cause is claimed where the budget is
    # above the GPUs' lowest limits (1,400 W over 2 x 200 W) ...
    over = {**ahead, "wattscale": _policy(0.98, 30.0) | {"budget_violation_s": 3.0}}
    both = {t["target"]: t for t in targets(scn, over, 3600.0)}
    assert both["chat (priority 1): slo_attainment >= 0.99 (static reaches 0.9900)"]["why"].endswith(
        "under a mean budget of 1400 W: wattscale passed a line too, so the hard limits do not tell them apart")
    assert both["budget_violation_s = 0"]["why"] == "wattscale's GPUs' power limits summed above the budget for 30 s"
    # ... and where it is below them, that no policy can hold it (350 W less headroom under 400 W)
    low = load_scenario(small_scenario('name = "f"\nduration_s = 60\nseed = 3\n', budget_w=350.0))
    floor = {t["target"]: t for t in targets(low, over, 3600.0)}
    assert floor["chat (priority 1): slo_attainment >= 0.99 (static reaches 0.9900)"]["why"].endswith(
        ": the budget at its lowest, 340 W less headroom, is below the GPUs' lowest limits, 400 W, which no policy can "
        "hold")
    assert floor["budget_violation_s = 0"]["why"].endswith("for 30 s: the budget at its lowest, 340 W less headroom, "
                                                         "is below the GPUs' lowest limits, 400 W, which no policy can "
                                                         "hold")
    # static's limits over a budget its draw never neared (spare GPUs at their highest limit): not what it ran on
    spare = {t["target"]: t for t in targets(scn, {"static": _policy(0.99, 60.0, bound_s=0.0),
                                                    "wattscale": _policy(0.98, 0.0)}, 3600.0)}
    why = spare["chat (priority 1): slo_attainment >= 0.99 (static reaches 0.9900)"]["why"]
    assert why.startswith("static (0.9900) ran with its GPUs' power limits summed above the budget for 60 s, never "
                          "drawing within 5% of it (")
    assert why.endswith("; static did better within the budget and every power domain's limit, so the hard limits do "
                        "not explain this miss")
    within = {**ahead, "uniform-cap": _policy(0.995, 0.0)}
    got = {t["target"]: t for t in targets(scn, {**within, "wattscale": _policy(0.98, 0.0)}, 3600.0)}
    assert got["chat (priority 1): slo_attainment >= every baseline's (best: uniform-cap 0.9950)"]["why"].endswith(
        "; uniform-cap did better within the budget and every power domain's limit, so the hard limits do not explain "
        "this miss")
    # a rack over its own limit is a hard limit broken too (rack-limit: uniform-cap's racks 44 s over theirs)
    racks = {**within, "uniform-cap": _policy(0.995, 0.0) | {"domain_over_s": 44.0}}
    why = {t["target"]: t for t in targets(scn, {**racks, "wattscale": _policy(0.98, 0.0)}, 3600.0)}[
        "chat (priority 1): slo_attainment >= every baseline's (best: uniform-cap 0.9950)"]["why"]
    assert "uniform-cap (0.9950) kept its GPUs' power limits' sum within the budget (limits' mean sum 1300 W; peak " \
        "draw 1350 W; a power domain's draw over its limit 44 s)" in why
    assert why.endswith(": those ahead ran on limits that a hard budget does not allow, or over a power domain's limit")


def test_energy_targets_are_judged_where_the_scenario_asks_for_them(small_scenario: Callable[..., Path]) -> None:
    policies = {"static": _policy(0.99, 60.0), "uniform-cap": _policy(0.9, 0.0),
                "wattscale": _policy(0.99, 0.0, 2.2, 110.0)}
    unasked = load_scenario(small_scenario('name = "f"\nduration_s = 60\nseed = 3\n'))
    assert not [t for t in targets(unasked, policies, 3600.0, "not measured here") if "x static's" in t["target"]]
    assert not energy_missed(unasked, policies)
    scn = load_scenario(small_scenario('name = "f"\nduration_s = 60\nseed = 3\nenergy_targets = true\n'))
    assert energy_missed(scn, policies)
    energy = {t["target"]: t for t in targets(scn, policies, 3600.0, "not measured here")}
    assert energy["tokens_per_joule >= 1.3 x static's"]["why"] == "not measured here"
    assert "why" not in energy["sum_t_over_c >= 1.15 x uniform-cap's"]  # met: 110 / 90
    assert not_judged(scn, policies, 60.0) == []
    alone = {"wattscale": policies["wattscale"]}
    assert not_judged(scn, alone, 60.0) == ["slo_attainment >= every baseline's: no baseline ran",
                                      "slo_attainment >= 0.99 where static reaches it: static did not run",
                                      "tokens_per_joule >= 1.3 x static's: static did not run",
                                      "sum_t_over_c >= 1.15 x uniform-cap's: uniform-cap did not run"]
    assert not_judged(unasked, alone, 60.0)[2:] == []
    assert not_judged(scn, {"static": policies["static"]}, 60.0) == ["every target: wattscale did not run (--policies)"]


def test_simulate_prints_why_an_energy_target_was_missed(small_scenario: Callable[..., Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = small_scenario('name = "f"\nduration_s = 60\nseed = 3\nenergy_targets = true\n')
    report = tmp_path / "r"
    assert main(["simulate", str(path), "--report", str(report), "--policies", "static,uniform-cap,wattscale",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "target MISSED: tokens_per_joule >= 1.3 x static's" in out
    assert "\n  why: a bound from load tests, not from this run: " in out
    assert "x the even-cap fleet's sum T/C (chat 2 replicas at 0.5 of the clock)" in out
    assert "- tokens_per_joule >= 1.3 x static's" in (summary := (report / "summary.md").read_text())
    whys = [line for line in out.splitlines() if line.startswith("  why: ")]  # both missed: one reason, said once
    assert len(whys) == 2 and whys[1] == "  why: as above", whys
    assert summary.count(whys[0][len("  why: "):]) == 1
    assert "- tokens_per_joule >= 1.3 x static's and sum_t_over_c >= 1.15 x uniform-cap's: " in summary
    assert main(["simulate", str(path), "--report", str(report), "--policies", "static,wattscale", "--no-progress",
                 "--no-frontier"]) == 0
    out = capsys.readouterr().out
    # a new user read no why at all: it says it was not measured, and how to have it
    assert "target MISSED: tokens_per_joule" in out and ("\n  why: the emulator's frontier was not measured "
                                                        "(--no-frontier): run without it") in out
    assert "\nnot judged: sum_t_over_c >= 1.15 x uniform-cap's: uniform-cap did not run\n" in out
    assert "- sum_t_over_c >= 1.15 x uniform-cap's: uniform-cap did not run." in (report / "summary.md").read_text()


def test_a_run_under_an_hour_judges_its_restarts_by_their_count(small_scenario: Callable[..., Path]) -> None:
    """One restart in a 10-minute run read 6 per hour, a MISSED verdict on what the next 50 minutes never held."""
    scn = load_scenario(small_scenario('name = "f"\nduration_s = 3600\nseed = 3\n'))

    def restarts(per_hour: float, duration_s: float) -> dict[str, Any]:
        ws = _policy(0.99, 0.0)
        ws["services"]["chat"]["restarts_per_hour"] = per_hour
        return next(t for t in targets(scn, {"wattscale": ws}, duration_s) if "restarts" in t["target"])

    one = restarts(6.0, 600.0)
    assert one == {"target": "chat: restarts <= 2 per service-hour (a steady load's target; 1 in this 600-s run, "
                   "judged as its first hour)", "value": 6.0, "unit": "per hour", "met": True}
    assert not restarts(18.0, 600.0)["met"]  # 3 in 10 minutes: more than an hour may have
    assert restarts(6.0, 3600.0) == {"target": "chat: restarts <= 2 per service-hour (a steady load's target)",
                                     "value": 6.0, "unit": "per hour", "met": False}
    # --duration-s 599.5 runs 600 s of whole fast ticks, and its rate is per hour of those: 1 restart, not 0.999
    assert restarts(6.0, 599.5)["target"].endswith("; 1 in this 600-s run, judged as its first hour)")


def test_a_service_no_policy_finished_a_request_of_is_not_judged(small_scenario: Callable[..., Path]) -> None:
    """`--duration-s 1`: no request finished, every attainment read 0, and 0 >= every baseline's 0 was called met."""
    scn = load_scenario(small_scenario('name = "f"\nduration_s = 60\nseed = 3\n'))
    none = {k: _policy(0.0, 0.0) for k in ("static", "wattscale")}
    for p in none.values():
        p["services"]["chat"]["finished"] = 0.0
    assert not [t for t in targets(scn, none, 1.0) if "slo_attainment" in t["target"]]
    assert not_judged(scn, none, 60.0) == ["chat: slo_attainment: no request of it finished under any policy (too "
                                           "short a run)"]
    none["static"]["services"]["chat"] |= {"finished": 3.0, "slo_attainment": 0.5}  # wattscale's 0 is a miss
    assert [t["met"] for t in targets(scn, none, 1.0) if "slo_attainment" in t["target"]] == [False]
    assert not_judged(scn, none, 60.0) == []
    gone = load_scenario(small_scenario('name = "f"\nduration_s = 60\nseed = 3\n' + "".join(
        f'[[events]]\nat_s = 0\nkind = "gpu_lost"\ngpu = {g}\n' for g in (0, 1))))
    none["static"]["services"]["chat"] |= {"finished": 0.0, "slo_attainment": 0.0}
    assert not_judged(gone, none, 60.0) == ["chat: slo_attainment: no request of it finished under any policy (every "
                                            "GPU of the host was lost)"]


def test_a_frontier_with_no_plan_at_a_target_says_so_in_words() -> None:
    """It read "reaches nothing: no tested plan is that fast"."""
    why = explain({"most_t_over_c_at_energy_target": None, "most_tokens_per_joule_at_speed_target": None,
                   "uniform_cap": {"cap_w": 325.0}, "meets_both": False})
    assert why.endswith("not against the rows above. No tested plan reaches 1.3 x static's tokens per joule; no tested "
                        "plan reaches 1.15 x the even-cap fleet's sum T/C; no tested plan meets both")
