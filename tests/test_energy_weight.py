"""The token-speed objective with a price on watts (`optimizer.energy_weight`): what it trades and what it keeps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from controller.config_loader import ConfigError
from controller.optimizer import AcceleratorType, Problem, ServiceDemand, get_solver, solve
from controller.optimizer.candidates import enumerate_all
from controller.optimizer.problem import Assignment, Candidate
from controller.optimizer.values import energy_price, valued
from controller.settings import load_settings
from controller.simulate.controlled import slo_only_settings
from queuemodels import Load, ServiceParams, Targets
from queuemodels.accelerators import CATALOG

H100 = AcceleratorType("H100-SXM", 8, 2.99, CATALOG["H100-SXM"])
P8 = ServiceParams("gen1", 12, 0.09, 10, 0.035)
P14 = ServiceParams("gen1", 16, 0.12, 14, 0.05)


def _problem(weight: float, clocks: tuple[float, ...] = (0.5, 0.7, 1.0)) -> Problem:
    demands = (
        ServiceDemand("chat", 1, Targets(300, 40), Load(10.0, 400, 200), {"H100-SXM": P8}, max_replicas=4),
        ServiceDemand("code", 2, Targets(800, 60, "p95"), Load(4.0, 1200, 300), {"H100-SXM": P14}, max_replicas=4),
    )
    return Problem(demands, (H100,), 5000.0, batch_sizes=(16, 64), power_levels=(0.6, 1.0), clock_levels=clocks,
                   energy_weight=weight)


def test_a_price_on_watts_trades_speed_for_more_speed_per_watt() -> None:
    fast, lean = (solve(_problem(w), get_solver("greedy")) for w in (0.0, 1.0))
    assert all(s.short_rps == 0 for s in (*fast.services, *lean.services))  # the whole load served either way
    assert lean.power_w < fast.power_w
    assert lean.objective < fast.objective  # the speed given up ...
    assert lean.objective / lean.power_w > fast.objective / fast.power_w  # ... for more speed per watt


def test_the_price_is_the_fastest_plans_speed_per_watt_times_the_weight() -> None:
    problem = _problem(0.5)
    assert problem.idle_w == 760.0  # 8 H100s idle

    def option(service: int, score: float, power_w: float) -> Candidate:
        return Candidate(service, Assignment("H100-SXM", 1, 64, 700.0), 1, power_w, 2.99, 1.0, 0.0, score)

    # each service's fastest is not its first: chat 20 at 300 W, code 30 at 400 W
    hand = [[option(0, 10.0, 100.0), option(0, 20.0, 300.0)], [option(1, 5.0, 50.0), option(1, 30.0, 400.0)]]
    assert energy_price(problem, hand) == pytest.approx(0.5 * 50.0 / 1460.0)
    assert energy_price(_problem(0.0), hand) == 0.0
    assert energy_price(replace(problem, objective="energy"), hand) == 0.0  # energy and cost price watts already
    raw = enumerate_all(problem)
    price = energy_price(problem, raw)
    [chat, _], _ = valued(replace(problem, transition_penalty=0.0), raw)
    assert price > 0 and any(c.short_rps == 0 for c in chat)
    for c in chat:
        if c.short_rps == 0:
            assert c.value == pytest.approx(c.score - price * c.power_w)


def test_the_solvers_agree_with_the_oracle_under_a_price() -> None:
    problem = _problem(1.0, clocks=(1.0,))
    oracle = solve(problem, get_solver("exhaustive"))
    for name in ("milp", "greedy"):
        sol = solve(problem, get_solver(name))
        assert sol.power_w <= problem.budget_w + 1e-6
        assert [s.assignment for s in sol.services] == [s.assignment for s in oracle.services], name


@pytest.mark.parametrize("value", ["-0.5", "11.0", "nan"])
def test_a_bad_weight_is_refused_naming_its_field(sim_config: Callable[..., Path], value: str) -> None:
    with pytest.raises(ConfigError, match=r"optimizer\.energy_weight"):
        load_settings(sim_config({"energy_weight = 0.0": f"energy_weight = {value}"}))


@pytest.mark.parametrize("objective", ["cost", "energy"])
def test_a_weight_under_an_objective_that_reads_none_is_refused(sim_config: Callable[..., Path],
                                                                objective: str) -> None:
    """Only token speed trades against watts: under another objective the weight was accepted and dropped unsaid."""
    edits = {"energy_weight = 0.0": "energy_weight = 0.5", 'objective = "token_speed"': f'objective = "{objective}"'}
    with pytest.raises(ConfigError, match=rf"^optimizer\.energy_weight: prices watts against token speed, and "
                       rf"objective is '{objective}': set it 0, or objective \"token_speed\", got 0.5"):
        load_settings(sim_config(edits))


def test_slo_only_plans_without_a_price_on_watts(sim_config: Callable[..., Path]) -> None:
    """The llm-d mode the `slo-only` baseline stands for knows no watts, whatever wattscale's own config weighs them."""
    settings = load_settings(sim_config({"energy_weight = 0.0": "energy_weight = 0.5"}))
    assert settings.optimizer.energy_weight == 0.5
    assert slo_only_settings(settings).optimizer.energy_weight == 0.0
