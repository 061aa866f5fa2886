"""The plan's caps within the sum of limits the governor may set (controller/optimizer/limit_fit.py): in predicted
mode a plan whose caps summed past the budget had them cut by the governor, priority first, whatever the cut cost."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_optimizer import H100, services

from controller.optimizer import Assignment, Candidate, Problem, ServiceDemand, get_solver, solve
from controller.optimizer.limit_fit import fit_limits, limits_w
from queuemodels import Load, ServiceParams, Targets
from queuemodels.accelerators import CATALOG

P8 = ServiceParams("gen1", 12, 0.09, 10, 0.035)


def ladders(budget_w: float, per_watt: list[float], gpus: int = 4,
            mode: str = "predicted") -> tuple[Problem, list[list[Candidate]], list[Candidate | None]]:
    """Services of one replica on one GPU each, at caps 700, 560 and 420 W, each losing `per_watt[i]` of value a
    watt of cap below 700; the choice at 700 W each. `gpus` H100s in all (the rest free, at their 200-W floor)."""
    demands = tuple(ServiceDemand(f"s{i}", 1 + i, Targets(300, 40), Load(1.0, 512, 200), {"H100-SXM": P8})
                    for i in range(len(per_watt)))
    cands = [[Candidate(i, Assignment("H100-SXM", 1, 64, cap), 1, 300.0, 0.0, 1.0, 0.0, 10.0 - k * (700 - cap),
                        value=10.0 - k * (700 - cap)) for cap in (700.0, 560.0, 420.0)]
             for i, k in enumerate(per_watt)]
    problem = Problem(demands, (replace(H100, count=gpus),), budget_w, budget_mode=mode)  # type: ignore[arg-type]
    return problem, cands, [cs[0] for cs in cands]


def test_the_caps_come_down_where_a_watt_is_worth_least_until_the_limits_fit() -> None:
    """Two GPUs of 700 W and two free at 200: 1,800 W. At 1,600 W the cheaper service steps down once (140 W)
    and, a second step being cheaper for it still, again; the dearer one keeps its cap."""
    problem, cands, choice = ladders(1600.0, [0.001, 0.01])
    assert limits_w(problem, choice) == 1800.0
    out, notes = fit_limits(problem, cands, choice)
    assert [c.assignment.power_cap_w for c in out if c is not None] == [420.0, 700.0]
    assert limits_w(problem, out) <= 1600.0
    assert notes == ["s0: cap 700 -> 420 W a GPU, for the power limits' sum (1600 W)"]
    assert [(c.assignment.replicas, c.assignment.max_batch) for c in out if c is not None] == [(1, 64), (1, 64)]


@pytest.mark.parametrize(("budget_w", "mode", "note"), [
    (1800.0, "predicted", None),  # it fits
    (1200.0, "predicted", "the caps ask 1800 W of power limits, 40 W past the budget's 1200 W even at the lowest "
                          "power levels its candidates offer each service's shape (accelerator, replicas, max batch, "
                          "clock) at, serving as much: the governor shares the budget, priority first"),  # 2x420+2x200
    (1600.0, "caps", None),  # in caps mode the caps are the budget's already
])
def test_a_choice_that_fits_or_cannot_is_left_as_it_was(budget_w: float, mode: str, note: str | None) -> None:
    """Where even the lowest caps cannot fit, `optimize` printed no note, its caps read as the limits to be set."""
    problem, cands, choice = ladders(budget_w, [0.001, 0.01], mode=mode)
    assert fit_limits(problem, cands, choice) == (choice, [] if note is None else [note])


def test_a_lower_cap_that_serves_less_is_no_step() -> None:
    """The plan's SLOs are the model's: a cap at which a service would leave load unserved is never taken."""
    problem, cands, choice = ladders(1600.0, [0.001, 0.01])
    cands[0] = [cands[0][0], *(c._replace(short_rps=0.5) for c in cands[0][1:])]
    out, _ = fit_limits(problem, cands, choice)
    assert [c.assignment.power_cap_w for c in out if c is not None] == [700.0, 420.0]


def test_the_note_says_what_no_lower_cap_of_the_same_shape_frees() -> None:
    """Where no candidate of a service's shape at a lower cap serves as much (here each serves less; in a new user's
    trial of `optimize` the shapes chosen had spare replicas, offered at the top cap only), nothing comes down: the
    note said the whole excess stood "even at their lowest power levels", where those levels would fit."""
    problem, cands, choice = ladders(1600.0, [0.001, 0.01])
    cands = [[cs[0], *(c._replace(short_rps=0.5) for c in cs[1:])] for cs in cands]
    assert fit_limits(problem, cands, choice) == (choice, [
        "the caps ask 1800 W of power limits, 200 W past the budget's 1600 W even at the lowest power levels its "
        "candidates offer each service's shape (accelerator, replicas, max batch, clock) at, serving as much: the "
        "governor shares the budget, priority first"])


def test_a_service_adding_replicas_keeps_its_cap_until_they_run() -> None:
    """Closed loop, seeds 8 and 10: code planned from one replica to three had its caps fitted to 420 W for three
    while one or two ran, and those carried the whole load under the fitted cap (a window's p95 ITL 45.4 and 48.5 ms
    against 45). The cheaper service's cap is no longer the one that comes down while it grows, in force or still
    loading its model (its last window served by fewer: a review found the scale-up's target alone counted); the
    other's is."""
    problem, cands, choice = ladders(1600.0, [0.001, 0.01])
    growing = replace(problem.services[0], current=Assignment("H100-SXM", 0, 64, 700.0))
    problem = replace(problem, services=(growing, *problem.services[1:]))
    out, notes = fit_limits(problem, cands, choice)
    assert [c.assignment.power_cap_w for c in out if c is not None] == [700.0, 420.0]
    assert notes == ["s1: cap 700 -> 420 W a GPU, for the power limits' sum (1600 W)"]
    steady = replace(problem, services=(replace(growing, current=Assignment("H100-SXM", 1, 64, 700.0)),
                                        *problem.services[1:]))
    assert [c.assignment.power_cap_w for c in fit_limits(steady, cands, choice)[0] if c is not None] == [420.0, 700.0]
    loading = replace(steady, services=(replace(steady.services[0], serving=0), *steady.services[1:]))
    assert [c.assignment.power_cap_w for c in fit_limits(loading, cands, choice)[0] if c is not None] == [700.0, 420.0]
    served = replace(steady, services=(replace(steady.services[0], serving=1), *steady.services[1:]))
    assert [c.assignment.power_cap_w for c in fit_limits(served, cands, choice)[0] if c is not None] == [420.0, 700.0]
    assert fit_limits(replace(loading, budget_w=1500.0), cands, choice)[1] == [  # s1 alone cannot free 300 W
        "the caps ask 1800 W of power limits, 20 W past the budget's 1500 W even at the lowest power levels its "
        "candidates offer each service's shape (accelerator, replicas, max batch, clock) at, serving as much (s0 at "
        "the cap chosen: fewer serve than planned): the governor shares the budget, priority first"]


def test_solve_publishes_caps_the_governor_can_hold_whole() -> None:
    """Three services on six H100s under 3,500 W: two replicas each at 700 W asked the governor for 4,200 W of
    limits; the plan's caps now sum within the budget, each service on the shape it had, serving all it did."""
    problem = Problem(services((2.0, 1.0, 1.0)), (H100,), 3500.0, batch_sizes=(16, 64), power_levels=(0.6, 0.8, 1.0))
    sol = solve(problem, get_solver("milp"))
    loose = solve(replace(problem, budget_w=1e6), get_solver("milp"))  # the same shapes, the caps left whole
    caps = [(s.assignment.replicas, s.assignment.power_cap_w) for s in sol.services if s.assignment is not None]
    assert [(s.assignment.replicas, s.assignment.max_batch) for s in sol.services if s.assignment is not None] == [
        (s.assignment.replicas, s.assignment.max_batch) for s in loose.services if s.assignment is not None]
    assert sum(n * w for n, w in caps) + (H100.count - sum(n for n, _ in caps)) * CATALOG["H100-SXM"].min_power_w \
        <= 3500.0 < sum(s.assignment.replicas * s.assignment.power_cap_w for s in loose.services if s.assignment)
    assert all(s.short_rps == 0 for s in sol.services) and len(sol.notes) == 3
    assert sol.ceilings_w == {s.name: s.assignment.power_cap_w for s in loose.services if s.assignment is not None}
    assert not loose.ceilings_w  # nothing fitted, nothing to grow back to


def test_a_service_short_for_the_budget_whose_cap_was_fitted_reads_budget_not_domain(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The domain repair is told by a choice that changed; the limits' fit changes one too, and a service short for
    the site's budget read `domain` on a host with no domain (a review)."""
    import controller.optimizer.solvers as solvers

    demands = tuple(ServiceDemand(f"s{i}", 1 + i, Targets(300, 40), Load(rate, 512, 200), {"H100-SXM": P8})
                    for i, rate in enumerate((2.0, 1.0)))

    def cand(i: int, replicas: int, cap: float, served: float, short: float) -> Candidate:
        return Candidate(i, Assignment("H100-SXM", replicas, 64, cap), replicas, 300.0 * replicas, 0.0, served,
                         short, served)

    cands = [[cand(0, 1, 700.0, 1.0, 1.0), cand(0, 1, 560.0, 1.0, 1.0), cand(0, 2, 700.0, 2.0, 0.0)],
             [cand(1, 1, 700.0, 1.0, 0.0)]]

    class OneReplicaEach:  # what a solver picks under a budget that leaves s0 one replica: s0 short for it
        name = "stub"

        def choose(self, problem: Problem, cs: list[list[Candidate]],
                   shed: list[float]) -> tuple[list[Candidate | None], list[str]]:
            return [cs[0][0], cs[1][0]], []

    monkeypatch.setattr(solvers, "enumerate_all", lambda problem: cands)
    problem = Problem(demands, (replace(H100, count=3),), 1500.0)  # type: ignore[arg-type]
    sol = solvers._solved(problem, OneReplicaEach())  # type: ignore[arg-type]
    assert sol.ceilings_w == {"s0": 700.0} and not problem.domains
    assert [(r.name, r.reason) for r in sol.services] == [("s0", "budget"), ("s1", None)]


def test_in_caps_mode_a_free_gpu_counts_at_its_lowest_limit_as_the_governor_holds_it() -> None:
    """Caps mode budgets the caps, but counted each free GPU at its draw with no replica (62 W for an H100) where the
    governor holds its limit at the floor (200 W): its plans asked 138 W of limits past the budget a free GPU, and the
    governor cut the lowest priority to fit them (tight-budget under a power law the catalogue reads low)."""
    for budget_w in (2200.0, 2600.0, 3000.0):
        problem = Problem(services((2.0, 1.0, 1.0)), (H100,), budget_w, budget_mode="caps", batch_sizes=(16, 64),
                          power_levels=(0.4, 0.6, 0.8, 1.0))
        sol = solve(problem, get_solver("milp"))
        asked = [s.assignment for s in sol.services if s.assignment is not None]
        used = sum(a.replicas for a in asked)
        assert asked and used < H100.count  # a GPU free: its floor counts
        assert sum(a.replicas * a.power_cap_w for a in asked) + (H100.count - used) * H100.profile.min_power_w \
            <= budget_w
        assert sol.power_w == pytest.approx(sum(a.replicas * a.power_cap_w for a in asked)
                                            + (H100.count - used) * H100.profile.min_power_w)
