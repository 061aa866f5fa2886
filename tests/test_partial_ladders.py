"""Partial ladders: a short budget degrades a service before it drops it, the highest priority last."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from controller.optimize_spec import load_spec
from controller.optimizer import AcceleratorType, Assignment, Problem, get_solver, solve
from tests.test_optimizer import A100, H100, services


@pytest.mark.parametrize("accs", [(H100,), (H100, A100)], ids=["h100", "h100+a100"])
def test_no_service_is_dropped_while_a_lower_priority_one_runs(accs: tuple[AcceleratorType, ...]) -> None:
    """chat (priority 1) at 20 rps: its partial ladder ran only on its fastest shape, whose one replica drew more
    than 870 W leaves; it was shed while code (priority 2) ran a replica on a frugal shape of its own."""
    problem = Problem(services((20.0, 5.0, 5.0)), accs, 0.0, batch_sizes=(16, 64), power_levels=(0.6, 1.0))
    for budget in range(int(problem.idle_w) + 50, int(problem.idle_w) + 1500, 50):
        at = replace(problem, budget_w=float(budget))
        for name in ("milp", "greedy"):
            sol = solve(at, get_solver(name))
            served = [s.load.rate_rps - r.short_rps > 1e-9 for r, s in zip(sol.services, at.services, strict=True)]
            assert served == sorted(served, reverse=True), (budget, name, [r.assignment for r in sol.services])


def test_a_frugal_ladder_starts_at_min_replicas() -> None:
    """chat (min_replicas 3) at 5-20 rps: the frugal ladders, offered where one replica carries the load too, had
    it planned one replica at batch 16 (the gate then shrank it to one, its load all on that one). They start at
    its min_replicas, as its fastest shape's ladder never went below them here."""
    for rate in (5.0, 8.0, 20.0):
        svcs = tuple(replace(s, current=Assignment("H100-SXM", 3 if i == 0 else 1, 64, 700.0),
                             min_replicas=3 if i == 0 else 1) for i, s in enumerate(services((rate, 5.0, 6.0))))
        for budget in range(700, 1301, 50):
            problem = Problem(svcs, (H100,), float(budget), batch_sizes=(16, 32, 64, 128), power_levels=(0.6, 0.8, 1.0))
            chat = solve(problem, get_solver("milp")).services[0]
            assert chat.planned(Assignment("H100-SXM", 3, 64, 700.0), 3).replicas >= 3, (rate, budget, chat)


def test_a_load_one_replica_carries_is_served_in_part_where_its_draw_passes_the_budget(tmp_path: Path) -> None:
    """One A100 carries 7 rps, drawing 253 W at any cap (the load sets the draw, not the cap) on a 250-W budget: no
    full candidate fits, and with no partial one the service was shed whole. At the lowest cap it serves most."""
    (tmp_path / "one.toml").write_text(ONE_A100)
    problem = load_spec(tmp_path / "one.toml")
    for name in ("milp", "greedy", "exhaustive"):
        r = solve(problem, get_solver(name)).services[0]
        assert r.assignment is not None and r.assignment.power_cap_w == 240.0, (name, r)
        assert 0.0 < r.short_rps < 2.0, (name, r)
    assert solve(replace(problem, budget_w=260.0), get_solver("milp")).services[0].short_rps == 0.0  # it fits whole


def test_a_ladder_keeps_its_bottom_rung_however_many_replicas_it_spans(tmp_path: Path) -> None:
    """A trial: 15 rps of chat on eight L40S under 452 W was shed whole, though one replica at batch 8 and 210 W
    fitted (431 W) and served a rps: spread from eight, the frugal ladder read 3, 5, 8, and allowing one replica
    (max_replicas 1) had served it. Every ladder keeps its lowest rung."""
    (tmp_path / "l40s.toml").write_text(EIGHT_L40S)
    problem = load_spec(tmp_path / "l40s.toml")
    for name in ("milp", "greedy", "exhaustive"):
        r = solve(problem, get_solver(name)).services[0]
        assert r.assignment is not None and r.assignment.replicas == 1 and r.short_rps < 15.0, (name, r)


EIGHT_L40S = """
budget_w = 452
objective = "cost"
batch_sizes = [8, 16, 32, 64, 128]
power_levels = [0.6, 0.7, 0.8, 0.9, 1.0]
[[accelerators]]
name = "L40S"
count = 8
[[services]]
name = "chat"
rate_rps = 15
ttft_ms = 400
itl_ms = 35
statistic = "p95"
in_tokens = 400
out_tokens = 200
max_replicas = 8
params."L40S" = { alpha_ms = 20, beta_ms = 0.14, gamma_ms = 16, delta_ms = 0.05 }
"""


ONE_A100 = """
budget_w = 250
[[accelerators]]
name = "A100-SXM4"
count = 1
[[services]]
name = "chat"
rate_rps = 7
ttft_ms = 300
itl_ms = 40
params."A100-SXM4" = { alpha_ms = 20, beta_ms = 0.15, gamma_ms = 18, delta_ms = 0.07 }
"""
