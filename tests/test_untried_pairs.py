"""A type no window of a service's pair has measured: its parameters are the service's one prior, written for
another GPU, so the plan moves the service there where the prior meets its targets with the untried margin to
spare, or to serve more than a quarter of its load that it could not serve otherwise; never, short of that, to
make room for a lower priority."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import ROOT
from prometheus_client import CollectorRegistry

from controller.demands import service_demand
from controller.estimate import Estimator
from controller.optimizer import AcceleratorType, Assignment, Problem, ServiceDemand, get_solver, solve
from controller.own_metrics import OwnMetrics
from controller.settings import OptimizerSettings, load_settings
from controller.sizing_basis import SizingBasis
from controller.telemetry.base import ServiceWindow
from queuemodels import Load, ServiceParams, Targets
from queuemodels.accelerators import CATALOG
from tuner import Tuner

CHAT = ServiceParams("step", 20.0, 0.2, 20.0, 0.06)
CODE = ServiceParams("step", 30.0, 0.3, 30.0, 0.1)
ON_H100 = Assignment("H100-SXM", 1, 64, 700.0)
SOLVERS = ("greedy", "milp", "exhaustive")


def _chat(rate: float, untried: frozenset[str]) -> ServiceDemand:
    return ServiceDemand("chat", 1, Targets(300, 30), Load(rate, 400, 200), {"H100-SXM": CHAT, "L40S": CHAT},
                         max_replicas=4, current=ON_H100, untried=untried)


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_higher_priority_is_not_moved_to_an_untried_type_for_a_lower_ones_room(solver: str) -> None:
    """Two H100s, two L40S: code (priority 2) runs on H100s only and wants both. Taken at its prior's word, chat
    goes to the L40S to give code the second H100; untried there, it stays and code is planned short."""
    code = ServiceDemand("code", 2, Targets(800, 45, "p95"), Load(2.5, 1200, 300), {"H100-SXM": CODE},
                         max_replicas=2, current=ON_H100)
    accs = (AcceleratorType("H100-SXM", 2, 2.99, CATALOG["H100-SXM"]), AcceleratorType("L40S", 2, 1.1, CATALOG["L40S"]))

    def plan(untried: frozenset[str]) -> list[tuple[str, int, float]]:
        problem = Problem((_chat(6.0, untried), code), accs, 5000.0, batch_sizes=(16, 64), power_levels=(0.6, 1.0))
        sol = solve(problem, get_solver(solver))
        return [(s.assignment.accelerator, s.assignment.replicas, s.short_rps) for s in sol.services
                if s.assignment is not None]

    trusted = plan(frozenset())
    assert [(a, n) for a, n, _ in trusted] == [("L40S", 2), ("H100-SXM", 2)] and trusted[1][2] == 0.0
    cautious = plan(frozenset({"L40S"}))
    assert [(a, n) for a, n, _ in cautious] == [("H100-SXM", 1), ("H100-SXM", 1)] and cautious[1][2] > 0.5


@pytest.mark.parametrize("solver", SOLVERS[:2])
def test_a_service_moves_to_an_untried_type_for_a_quarter_of_its_load_and_not_less(solver: str) -> None:
    """One H100 and four L40S; chat's prior (a 20-ms step) cannot meet its 30-ms mean ITL with half of it to
    spare. At 8 rps the H100 leaves 15 % of chat's load unserved, and chat stays; at 10 rps it leaves 32 %, and
    chat goes where the prior says it is served at its own targets (the move then measures the pair)."""
    accs = (AcceleratorType("H100-SXM", 1, 2.99, CATALOG["H100-SXM"]), AcceleratorType("L40S", 4, 1.1, CATALOG["L40S"]))
    got = {}
    for rate in (8.0, 10.0):
        problem = Problem((_chat(rate, frozenset({"L40S"})),), accs, 5000.0, batch_sizes=(16, 64),
                          power_levels=(0.6, 1.0))
        s = solve(problem, get_solver(solver)).services[0]
        assert s.assignment is not None
        got[rate] = (s.assignment.accelerator, s.short_rps / rate)
    assert got[8.0][0] == "H100-SXM" and 0.1 < got[8.0][1] < 0.25
    assert got[10.0] == ("L40S", 0.0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_an_untried_type_the_prior_calls_comfortable_is_planned_for_its_own_sake(solver: str) -> None:
    """At a 100-ms ITL target the prior meets it with half to spare on the L40S, 30 times cheaper an hour: the
    cost objective moves chat there, untried or not."""
    accs = (AcceleratorType("H100-SXM", 2, 30.0, CATALOG["H100-SXM"]), AcceleratorType("L40S", 4, 1.0, CATALOG["L40S"]))
    chat = replace(_chat(6.0, frozenset({"L40S"})), targets=Targets(2000, 100))
    problem = Problem((chat,), accs, 5000.0, objective="cost", batch_sizes=(16, 64), power_levels=(0.6, 1.0))
    s = solve(problem, get_solver(solver)).services[0]
    assert s.assignment is not None and s.assignment.accelerator == "L40S" and s.short_rps == 0.0


@pytest.mark.parametrize("solver", SOLVERS[:2])
def test_a_learnt_margin_that_leaves_no_shape_does_not_open_the_untried_type_for_nothing(solver: str) -> None:
    """Chat's windows taught it a 0.4 margin, under which no shape meets its 30-ms mean ITL: it is planned against
    its own targets on the H100 it runs on, not moved to the untried L40S for its lower cost."""
    accs = (AcceleratorType("H100-SXM", 2, 2.99, CATALOG["H100-SXM"]), AcceleratorType("L40S", 4, 1.1, CATALOG["L40S"]))
    chat = replace(_chat(4.0, frozenset({"L40S"})), targets=Targets(300, 30, "mean", 0.4))
    problem = Problem((chat,), accs, 5000.0, objective="cost", batch_sizes=(16, 64), power_levels=(0.6, 1.0))
    s = solve(problem, get_solver(solver)).services[0]
    assert s.assignment is not None and s.assignment.accelerator == "H100-SXM" and s.short_rps == 0.0
    s = solve(replace(problem, services=(replace(chat, untried=frozenset()),)), get_solver(solver)).services[0]
    assert s.assignment is not None and s.assignment.accelerator == "L40S"  # trusted, it would have moved


def test_the_plan_at_risk_is_kept_only_where_it_leaves_less_unserved() -> None:
    """Under 600 W, 30 rps of chat: the two untried L40S that meet the margin serve more than the one H100. At
    risk they are charged too, and the plan made so had taken the H100 (21.3 rps short against 12.8)."""
    accs = (AcceleratorType("H100-SXM", 1, 3.0, CATALOG["H100-SXM"]), AcceleratorType("L40S", 4, 1.0, CATALOG["L40S"]))
    chat = replace(_chat(30.0, frozenset({"L40S"})), targets=Targets(2000, 100), max_replicas=8)
    problem = Problem((chat,), accs, 600.0, objective="cost", batch_sizes=(16, 64), power_levels=(0.6, 1.0))
    s = solve(problem, get_solver("milp")).services[0]
    assert s.assignment is not None and s.assignment.accelerator == "L40S" and s.short_rps < 15.0


def test_a_type_is_untried_until_a_window_of_its_pair_is_fitted() -> None:
    """On the mixed host every service may run on either type. The type a service runs on is never untried (its
    windows are that pair's); the other is, until a steady window of the pair teaches the tuner."""
    s = load_settings(ROOT / "config" / "scenarios" / "hosts" / "h100-l40s.toml")
    chat = next(svc for svc in s.services if svc.name == "chat")
    tuner = Tuner(None)
    tuner.ensure_all((chat.model, a, chat.prior.params(), CATALOG[a]) for a in ("H100-SXM", "L40S"))
    variants, kv = ("H100-SXM", "L40S"), {"H100-SXM": 0.0, "L40S": 0.0}

    def untried(current: Assignment) -> frozenset[str]:
        return service_demand(chat, chat.load(6.0, 400, 200), 0.0, current, variants, kv, tuner, SizingBasis(0.05),
                              {}).untried

    assert untried(ON_H100) == {"L40S"}
    on_l40s = Assignment("L40S", 2, 64, 350.0)
    assert untried(on_l40s) == {"H100-SXM"}
    est = Estimator(tuner, OwnMetrics(CollectorRegistry()), lambda kind, message: None)
    window = ServiceWindow(15.0, 3.0, 400.0, 200.0, 120.0, 34.0, 200.0, 40.0, 4.0, 0.0, 0.0, 0.0, 2)
    assert est.observe(chat, window, [], on_l40s, True, OptimizerSettings(), 0.0) == "accepted"
    assert tuner.measured(chat.model, "L40S") and not tuner.measured(chat.model, "H100-SXM")
    assert untried(ON_H100) == frozenset()
