"""A shed service holds its min replicas' GPUs (`ServiceResult.planned`): every solver's inventory counts them."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from controller.optimizer import Assignment, DomainRoom, Problem, ServiceResult, get_solver, solve
from tests.test_optimizer import A100, H100, services


def test_a_shed_service_holds_its_gpus_in_every_solvers_inventory() -> None:
    """A shed service runs on at its min replicas (`ServiceResult.planned`). Left out of the inventory rows, they
    were given to the others too: at 1,800 W every solver planned chat 2 and code 4 H100s with bulk's two still
    held, 8 of 6, and a replica planned on them found no GPU to start on."""
    running = Assignment("H100-SXM", 2, 64, 700.0)
    problem = Problem(tuple(replace(s, current=running, min_replicas=2) for s in services((10.0, 5.0, 6.0))), (H100,),
                      0.0, batch_sizes=(16, 64), power_levels=(0.6, 1.0))
    for budget in range(1000, 2601, 200):
        at = replace(problem, budget_w=float(budget))
        oracle = solve(at, get_solver("exhaustive"))
        for name in ("exhaustive", "milp", "greedy"):
            sol = solve(at, get_solver(name))
            held = sum(r.planned(running, 2).replicas for r in sol.services)
            assert held <= H100.count, (budget, name, [r.assignment for r in sol.services])
            assert [r.short_rps for r in sol.services] == pytest.approx([r.short_rps for r in oracle.services])


@pytest.mark.parametrize("mins", [(1, 2, 3), (2, 2, 2), (3, 1, 2)])
def test_no_plan_holds_more_gpus_of_a_type_than_it_has(mins: tuple[int, int, int]) -> None:
    """Services running on both types: what each plan runs (its picks, and a shed service's min replicas where it
    runs now) fits every type, a service moved off its type freeing its GPUs there."""
    on_h100, on_a100 = Assignment("H100-SXM", 2, 64, 700.0), Assignment("A100-SXM4", 2, 64, 400.0)
    now = (on_h100, on_a100, on_h100)
    for rates, budget in itertools.product([(10.0, 5.0, 6.0), (20.0, 10.0, 12.0)], range(800, 3401, 300)):
        demands = tuple(replace(s, current=c, min_replicas=m)
                        for s, c, m in zip(services(rates), now, mins, strict=True))
        problem = Problem(demands, (H100, A100), float(budget), batch_sizes=(16, 64), power_levels=(0.6, 1.0))
        for name in ("exhaustive", "milp", "greedy", "auto"):
            sol = solve(problem, get_solver(name))
            used = {H100.name: 0, A100.name: 0}
            for r, s in zip(sol.services, problem.services, strict=True):
                assert s.current is not None
                run = r.planned(s.current, s.min_replicas)
                used[run.accelerator] += run.replicas
            assert used[H100.name] <= H100.count and used[A100.name] <= A100.count, (rates, budget, name, used)


def test_a_shed_service_is_planned_no_more_replicas_than_its_type_holds() -> None:
    """min_replicas 3, running on a type of two GPUs (another type holds three): shed there, it was planned three
    replicas on two GPUs; it keeps what the type holds, at the floor cap."""
    shed = ServiceResult("chat", None, None, 0.0, 0.0, 4.0, "budget")
    on_two = Assignment("H100-SXM", 2, 64, 700.0)
    assert shed.planned(on_two, 3, most=2) == Assignment("H100-SXM", 2, 64, 200.0)
    assert shed.planned(on_two, 3) == Assignment("H100-SXM", 3, 64, 200.0)  # the type's count not given
    assert replace(shed, reason="slo").planned(on_two, 3, most=2) == on_two  # no shape serves it: what runs stays


PLACED = {"H100-SXM": tuple(range(6)), "A100-SXM4": (6, 7, 8, 9)}
"""Each service's GPUs in order, per type, so that the power domains below see its replicas."""


def _runs(problem: Problem, name: str) -> dict[str, int]:
    """Replicas per type that a solver's plan runs: its picks, and a shed service's min replicas where it runs."""
    used = {H100.name: 0, A100.name: 0}
    for r, s in zip(solve(problem, get_solver(name, mip_gap=0.0)).services, problem.services, strict=True):
        run = r.planned(s.current, s.min_replicas) if s.current is not None else r.assignment
        if run is not None:
            used[run.accelerator] += run.replicas
    return used


def _rooms(a100_w: float, h100_w: float) -> tuple[DomainRoom, ...]:
    return DomainRoom("a100rack", a100_w, frozenset({6, 7, 8, 9})), DomainRoom("hrack", h100_w, frozenset({0, 1, 2}))


@pytest.mark.parametrize("case", ["below-min", "moved"])
def test_a_plan_the_domain_repair_sheds_from_still_fits_the_inventory(case: str) -> None:
    """Greedy handed out the GPUs a shed service holds where a pick of it left them (a partial below min_replicas;
    a move to another type), and the domain repair then shed it: bulk's 3 H100s beside chat's 4 (7 of 6), chat's 2
    A100s beside code's 3 (5 of 4). Auto took greedy's plan over the MILP's, which fits, for its value."""
    if case == "below-min":
        now = (Assignment("H100-SXM", 2, 64, 700.0), Assignment("A100-SXM4", 2, 64, 400.0),
               Assignment("H100-SXM", 2, 64, 700.0))
        demands = tuple(replace(s, current=c, min_replicas=3, gpus=PLACED)
                        for s, c in zip(services((5.0, 20.0, 10.0)), now, strict=True))
        rooms = _rooms(100.0, 500.0)
    else:
        chat, code, bulk = (replace(s, gpus=PLACED) for s in services((5.0, 5.0, 20.0)))
        demands = (replace(chat, current=Assignment("A100-SXM4", 2, 64, 400.0), min_replicas=2),
                   replace(code, min_replicas=2), replace(bulk, min_replicas=3))
        rooms = _rooms(600.0, 200.0)
    problem = Problem(demands, (H100, A100), 2800.0, batch_sizes=(16, 64), power_levels=(0.6, 1.0), domains=rooms)
    for name in ("greedy", "auto", "milp", "exhaustive"):
        used = _runs(problem, name)
        assert used[H100.name] <= H100.count and used[A100.name] <= A100.count, (case, name, used)


def test_a_service_the_domain_repair_sheds_is_short_for_its_domain() -> None:
    """chat, moved by greedy off its A100s onto H100s whose rack (200 W) holds none of it, is shed by the domain
    repair: it read as short for budget, the site's, with 2,800 W of it left."""
    chat, code, bulk = (replace(s, gpus=PLACED) for s in services((5.0, 5.0, 20.0)))
    demands = (replace(chat, current=Assignment("A100-SXM4", 2, 64, 400.0), min_replicas=2),
               replace(code, min_replicas=2), replace(bulk, min_replicas=3))
    problem = Problem(demands, (H100, A100), 2800.0, batch_sizes=(16, 64), power_levels=(0.6, 1.0),
                      domains=_rooms(600.0, 200.0))
    reasons = {r.name: r.reason for r in solve(problem, get_solver("greedy")).services}
    assert reasons == {"chat": "domain", "code": None, "bulk": "replicas"}, reasons
