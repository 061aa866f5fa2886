"""Solvers against the exhaustive oracle; budgets, priorities and infeasible SLOs."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from controller.optimizer import AcceleratorType, Assignment, Candidate, Problem, ServiceDemand, get_solver, solve
from controller.optimizer.candidates import enumerate_all
from controller.optimizer.reasons import slo_notes
from controller.optimizer.solvers import Milp
from controller.optimizer.values import shed_weights, valued
from queuemodels import DEFAULT_MAX_QUEUE, DEFAULT_MODEL, Load, ServerShape, ServiceParams, Targets, get_model
from queuemodels.accelerators import CATALOG

P8 = ServiceParams("gen1", 12, 0.09, 10, 0.035)
P14 = ServiceParams("gen1", 16, 0.12, 14, 0.05)
H100 = AcceleratorType("H100-SXM", 6, 2.99, CATALOG["H100-SXM"])
A100 = AcceleratorType("A100-SXM4", 4, 1.75, CATALOG["A100-SXM4"])
A100_P = {"A100-SXM4": ServiceParams("gen1", 20, 0.15, 18, 0.07)}


def services(rates: tuple[float, float, float]) -> tuple[ServiceDemand, ...]:
    return (
        ServiceDemand("chat", 1, Targets(300, 40), Load(rates[0], 512, 200), {"H100-SXM": P8, **A100_P},
                      max_replicas=4),
        ServiceDemand("code", 2, Targets(900, 60, "p95"), Load(rates[1], 1500, 300), {"H100-SXM": P14, **A100_P},
                      max_replicas=4),
        ServiceDemand("bulk", 3, Targets(5000, 150), Load(rates[2], 2000, 500), {"H100-SXM": P14}, max_replicas=4),
    )


CASES = [
    Problem(services(r), accs, budget, objective, batch_sizes=(16, 64), power_levels=(0.6, 1.0))
    for r, budget, accs, objective in itertools.product(
        [(4.0, 2.0, 3.0), (12.0, 5.0, 6.0)],
        [1500.0, 2600.0, 5000.0],
        [(H100,), (H100, A100)],
        ["token_speed", "cost", "energy"],
    )
]


@pytest.mark.parametrize("problem", CASES, ids=lambda p: f"{p.objective}-{p.budget_w:.0f}-{len(p.accelerators)}acc")
def test_milp_and_greedy_match_exhaustive(problem: Problem) -> None:
    oracle = solve(problem, get_solver("exhaustive"))
    # the formulation's exactness, at no gap: the default 1 % is relative to an objective the shed services'
    # penalties dominate, so where one must be shed HiGHS may stop 2 % of the rest short of the optimum
    # (token_speed-1500-1acc1 since the inter-token tail counts steps stalled behind prompts: 113.27 / 115.58)
    milp = solve(problem, get_solver("milp", mip_gap=0.0))
    assert milp.power_w <= problem.budget_w + 1e-6
    assert [s.short_rps for s in milp.services] == pytest.approx([s.short_rps for s in oracle.services], abs=1e-6)
    assert milp.objective == pytest.approx(oracle.objective, rel=1e-6, abs=1e-9)
    greedy = solve(problem, get_solver("greedy"))
    assert greedy.power_w <= problem.budget_w + 1e-6
    assert [s.short_rps for s in greedy.services] == pytest.approx([s.short_rps for s in oracle.services], abs=1e-6)
    # Greedy is a heuristic: where token speed is offered spare replicas and GPUs are tight it may miss an exchange
    # of one GPU between two services (0.03 % of the objective in these cases); elsewhere it is exact.
    assert greedy.objective == pytest.approx(oracle.objective, rel=1e-3 if problem.objective == "token_speed" else 1e-6,
                                             abs=1e-9)
    assert greedy.objective <= oracle.objective + 1e-6


def test_budget_never_exceeded_and_lowest_priority_sheds_first() -> None:
    previous_short = None
    for budget in (5000.0, 3000.0, 2000.0, 1400.0, 1000.0, 600.0):  # idle floor: 6 x 95 W
        problem = Problem(services((10.0, 5.0, 6.0)), (H100,), budget, batch_sizes=(16, 64, 128),
                          power_levels=(0.6, 0.8, 1.0))
        sol = solve(problem, get_solver("milp"))
        assert sol.power_w <= budget + 1e-6
        short = [s.short_rps > 1e-9 for s in sol.services]
        # Shortfalls grow from the lowest priority up: once a service is short, every lower one is too.
        assert short == sorted(short), short
        if previous_short is not None:
            assert sum(short) >= sum(previous_short)
        previous_short = short
    assert all(previous_short or [])
    reasons = {s.reason for s in sol.shortfalls}
    assert reasons <= {"budget", "inventory", "replicas"}


@pytest.mark.parametrize("last", [False, True], ids=["first", "last"])
def test_infeasible_slo_is_reported_not_crashed(last: bool) -> None:
    """A service no shape can serve has no candidates at all, wherever it sits among the others."""
    impossible = ServiceDemand("strict", 1, Targets(ttft_ms=1.0, itl_ms=1.0), Load(2, 512, 100), {"H100-SXM": P8})
    others = services((2.0, 1.0, 1.0))[1:]
    problem = Problem((*others, impossible) if last else (impossible, *others), (H100,), 5000.0, batch_sizes=(16, 64))
    for name in ("auto", "greedy", "milp", "exhaustive"):
        sol = solve(problem, get_solver(name))
        strict = next(s for s in sol.services if s.name == "strict")
        assert strict.assignment is None and strict.reason == "slo" and strict.short_rps == 2
        assert all(s.reason is None for s in sol.services if s.name != "strict")


def test_transition_penalty_keeps_a_good_enough_plan() -> None:
    base = Problem(services((4.0, 2.0, 3.0)), (H100,), 5000.0, batch_sizes=(16, 64), power_levels=(0.6, 1.0))
    first = solve(base, get_solver("milp"))
    current = [s.assignment for s in first.services]
    nudged = tuple(
        ServiceDemand(s.name, s.priority, s.targets, Load(s.load.rate_rps * 1.02, s.load.in_tokens, s.load.out_tokens),
                      s.params, s.min_replicas, s.max_replicas, s.max_queue, a)
        for s, a in zip(base.services, current, strict=True)
    )
    again = solve(Problem(nudged, base.accelerators, base.budget_w, transition_penalty=0.2, batch_sizes=(16, 64),
                          power_levels=(0.6, 1.0)), get_solver("milp"))
    assert [s.assignment for s in again.services] == current


def test_unknown_solver() -> None:
    with pytest.raises(ValueError, match="solver: unknown"):
        get_solver("simplex")


def test_sizing_reads_the_services_token_length_spread() -> None:
    # p95 TTFT 200 ms: met with steady prompt lengths (p95 ~130 ms), missed with exponential ones (~245 ms).
    def planned(cv: float) -> int | None:
        svc = ServiceDemand("code", 1, Targets(200, 60, "p95"), Load(8.0, 1500, 300, cv, cv), {"H100-SXM": P14},
                            max_replicas=6)
        sol = solve(Problem((svc,), (H100,), 5000.0, objective="cost", batch_sizes=(16, 64), power_levels=(1.0,)),
                    get_solver("greedy"))
        a = sol.services[0].assignment
        return None if a is None else a.replicas

    assert planned(0.2) == 4
    assert planned(1.0) is None


def test_half_a_percent_of_a_priority_outweighs_all_below_it_and_every_score() -> None:
    """Priorities 1, 2, 2, 5 (gaps allowed): more than 0.5 % of a service's load unserved costs more than
    every service's score together and every lower-priority service shed entirely; less costs less."""
    demands = tuple(ServiceDemand(f"s{i}", p, Targets(300, 40), Load(1.0, 512, 200), {"H100-SXM": P8})
                    for i, p in enumerate((1, 2, 2, 5)))
    problem = Problem(demands, (H100,), 5000.0)
    scale = 7.0
    weights = shed_weights(problem, scale)
    assert sorted(weights) == [1, 2, 5]
    for level, w in weights.items():
        below = sum(weights[s.priority] for s in demands if s.priority > level)
        assert 0.0051 * w > below + len(demands) * scale > 0.0049 * w


def _chat(current: Assignment | None, rate_rps: float = 4.0) -> ServiceDemand:
    return ServiceDemand("chat", 1, Targets(300, 40), Load(rate_rps, 512, 200), {"H100-SXM": P8}, max_replicas=6,
                         current=current)


def test_a_new_max_batch_keeps_its_load_carried_through_the_rolling_restart() -> None:
    """A candidate changing the batch in force has, besides its own need, what carries the load with one replica
    down at the batch in force; one keeping the batch needs nothing more."""
    problem = Problem((_chat(None),), (H100,), 5000.0, objective="cost", batch_sizes=(16, 64), power_levels=(1.0,))
    fresh = {c.assignment.max_batch: c.assignment.replicas for c in enumerate_all(problem)[0] if c.short_rps == 0}
    current = Assignment("H100-SXM", fresh[16], 16, 700.0)
    moved = replace(problem, services=(_chat(current),))
    now = {c.assignment.max_batch: c.assignment.replicas for c in enumerate_all(moved)[0] if c.short_rps == 0}
    assert now[16] == fresh[16]
    assert now[64] == max(fresh[64], fresh[16] + 1)


def test_token_speed_is_offered_spare_replicas_cost_is_not() -> None:
    for objective, spare in (("token_speed", 2), ("cost", 0)):
        problem = Problem((_chat(None),), (H100,), 5000.0, objective=objective, batch_sizes=(64,), power_levels=(1.0,))
        full = sorted(c.assignment.replicas for c in enumerate_all(problem)[0] if c.short_rps == 0)
        assert full == list(range(full[0], full[0] + spare + 1))


def _wide_chat(current: Assignment | None, rate_rps: float) -> Problem:
    """chat on 16 H100s, batch 16 or 64: at 24 rps batch 16 needs 6 replicas and batch 64 two."""
    svc = ServiceDemand("chat", 1, Targets(300, 40), Load(rate_rps, 512, 200), {"H100-SXM": P8}, max_replicas=16,
                        current=current)
    return Problem((svc,), (replace(H100, count=16),), 20000.0, batch_sizes=(16, 64), power_levels=(1.0,))


def test_staying_is_offered_as_many_replicas_as_another_batch_is() -> None:
    """Token speed offers spares up to EXTRA_REPLICAS past each shape's need. Batch 16 needs 6 replicas at 24 rps, so
    it was offered 8; batch 64, in force with 8, needs 2 and was offered 4: staying was no candidate, and the plan
    restarted into batch 16 to keep its replicas, then back (a mixture of experts' engine did, every 105 s)."""
    problem = _wide_chat(Assignment("H100-SXM", 8, 64, 700.0), 24.0)
    offered = {c.assignment.replicas for c in enumerate_all(problem)[0] if c.assignment.max_batch == 64}
    assert max(offered) == 8
    assert solve(problem, get_solver("milp")).services[0].assignment == problem.services[0].current


def test_the_replicas_of_a_past_peak_are_not_kept() -> None:
    """Past every shape's spares the replicas in force are not offered: a token speed plan with GPUs to spare scales
    down to what its load may use, however many a peak left running."""
    problem = _wide_chat(Assignment("H100-SXM", 12, 64, 700.0), 2.0)
    offered = {c.assignment.replicas for c in enumerate_all(problem)[0] if c.assignment.max_batch == 64}
    assert max(offered) == 4  # batch 16's need, 1, one more through its rolling restart, and two spares
    assert solve(problem, get_solver("milp")).services[0].assignment.replicas <= 4


def test_two_services_a_budget_fits_one_of_do_not_take_turns() -> None:
    """Shedding a running service is a transition, charged as a scale: uncharged, two tied services a budget fits
    only one of swapped which ran every cycle (starting one and shedding the other cost nothing). The other runs what
    the rest of the budget holds, one replica of its partial ladder's bottom rung, and keeps it."""
    twins = [ServiceDemand(name, 1, Targets(300, 40), Load(48, 512, 200), {"H100-SXM": P14}, max_replicas=most)
             for name, most in (("s0", 11), ("s1", 13))]
    problem = Problem(tuple(twins), (replace(H100, count=17),), 3000.0, batch_sizes=(8, 64, 128),
                      power_levels=(1.0,), clock_levels=(0.7, 1.0))
    running = []
    for _ in range(4):
        solution = solve(problem, get_solver("auto"))
        running.append(tuple((s.assignment, s.short_rps == 0.0) for s in solution.services))
        problem = replace(problem, services=tuple(replace(d, current=s.assignment)
                                                  for d, s in zip(problem.services, solution.services, strict=True)))
    assert len(set(running)) == 1 and sum(whole for _, whole in running[0]) == 1, running


def test_the_transition_penalty_charges_scales_and_restarts_never_a_cap() -> None:
    """The governor moves limits every second, so a cap in force between the levels must not charge every
    candidate the penalty alike (that left no hysteresis on replicas and batch); a restart costs twice a scale."""
    current = Assignment("H100-SXM", 2, 64, 612.0)
    problem = Problem((_chat(current),), (H100,), 5000.0, transition_penalty=0.1, batch_sizes=(16, 64),
                      power_levels=(0.6, 1.0))
    [cands], _ = valued(problem, enumerate_all(problem))
    full = [c for c in cands if c.short_rps == 0]
    for c in full:
        changes = (c.assignment.replicas != 2) + 2 * (c.assignment.max_batch != 64)
        assert c.value == pytest.approx(c.score - 0.1 * abs(c.score) * changes)
    assert any(c.assignment.replicas == 2 and c.assignment.max_batch == 64 for c in full)


def _hand_made(gpus: int, options: list[list[tuple[int, float]]]) -> tuple[Problem, list[list[Candidate]]]:
    """Candidates given directly, (GPUs, value) each, at equal watts: what is tested is the choice alone. The
    services' priorities are their order."""
    acc = replace(H100, count=gpus)
    demands = tuple(ServiceDemand(f"s{i}", 1 + i, Targets(300, 40), Load(1.0, 512, 200), {"H100-SXM": P8})
                    for i in range(len(options)))
    cands = [[Candidate(i, Assignment("H100-SXM", n, 64, 700.0), n, 100.0, 0.0, 1.0, 0.0, v, value=v)
              for n, v in opts] for i, opts in enumerate(options)]
    return Problem(demands, (acc,), 1e6), cands


@pytest.mark.parametrize(("gpus", "options", "shed"), [
    # The first takes a fourth GPU for a little value; the second, shed for want of it, is worth far more.
    (4, [[(4, -700.0), (3, -750.0)], [(1, -240.0)]], [-1e9, -693_000.0]),
    # The first holds the only GPU; shedding it for the second is worth more.
    (1, [[(1, -1000.0)], [(1, -500.0)]], [-2000.0, -2000.0]),
], ids=["gpu-held-one-too-many", "shed-the-first"])
def test_greedy_exchanges_what_its_order_got_wrong(gpus: int, options: list[list[tuple[int, float]]],
                                                   shed: list[float]) -> None:
    problem, cands = _hand_made(gpus, options)
    best, _ = get_solver("exhaustive").choose(problem, cands, shed)
    greedy, _ = get_solver("greedy").choose(problem, cands, shed)
    assert greedy == best


def test_auto_takes_the_milp_plan_where_greedy_misses_a_three_way_trade() -> None:
    """Pairwise exchanges cannot make a trade of three services; the auto solver's MILP does, on a small problem."""
    accs = tuple(AcceleratorType(name, 1, 1.0, CATALOG[name]) for name in ("H100-SXM", "A100-SXM4", "L40S"))
    demands = tuple(ServiceDemand(f"s{i}", p, Targets(300, 40), Load(1.0, 512, 200), {"H100-SXM": P8})
                    for i, p in enumerate((1, 1, 2)))

    def cand(i: int, acc: str, v: float) -> Candidate:
        return Candidate(i, Assignment(acc, 1, 64, 400.0), 1, 100.0, 0.0, 1.0, 0.0, v, value=v)

    # In priority order s0 takes the H100 and s1 the A100, so s2 (H100 only) is shed; it is served only where s1
    # moves to the L40S and s0 to the A100 at once.
    cands = [[cand(0, "H100-SXM", -1.0), cand(0, "A100-SXM4", -2.0)],
             [cand(1, "A100-SXM4", -1.0), cand(1, "L40S", -2.0)],
             [cand(2, "H100-SXM", -50.0)]]
    shed = [-1e6, -1e6, -1e3]
    problem = Problem(demands, accs, 1e6)
    best, _ = get_solver("exhaustive").choose(problem, cands, shed)
    greedy, _ = get_solver("greedy").choose(problem, cands, shed)
    auto, _ = get_solver("auto").choose(problem, cands, shed)
    assert greedy[2] is None and best[2] is not None and auto == best


def test_a_milp_stopped_at_a_worse_incumbent_than_greedys_plans_with_greedy() -> None:
    """A trial: 500 services, the MILP at its 2-s limit served 53 % of priority 1's load where greedy served 66 %,
    with only a note. Stopped short of the optimum (its incumbent here: every service shed), greedy's plan is taken
    where it is better, and said."""

    class Stopped(Milp):
        def exact(self, problem: Problem, cands: list[list[Candidate]],
                  shed: list[float]) -> tuple[list[Candidate | None], list[str]]:
            return [None] * len(cands), ["milp: Time limit reached; best incumbent used"]

    accs = (AcceleratorType("H100-SXM", 2, 1.0, CATALOG["H100-SXM"]),)
    demands = tuple(ServiceDemand(f"s{i}", 1, Targets(300, 40), Load(1.0, 512, 200), {"H100-SXM": P8})
                    for i in range(2))
    cands = [[Candidate(i, Assignment("H100-SXM", 1, 64, 400.0), 1, 100.0, 0.0, 1.0, 0.0, -1.0, value=-1.0)]
             for i in range(2)]
    choice, notes = Stopped().choose(Problem(demands, accs, 1e6), cands, [-1e6, -1e6])
    assert all(c is not None for c in choice)
    assert notes == ["milp: Time limit reached; best incumbent used", "milp: greedy's plan used, better than that "
                     "incumbent"]


def test_a_type_too_small_for_one_replica_is_said() -> None:
    """A trial: eight H100s at 16 GPUs a replica left a 70B model SHORT (inventory), and nothing said why."""
    accs = (AcceleratorType("H100-SXM", 8, 1.0, CATALOG["H100-SXM"], gpus_per_replica=16),
            AcceleratorType("L40S", 4, 1.0, CATALOG["L40S"]))
    demands = (ServiceDemand("big", 1, Targets(1500, 60), Load(4.0, 512, 200), {"H100-SXM": P8}, min_replicas=0),
               ServiceDemand("small", 2, Targets(1500, 60), Load(1.0, 512, 200), {"L40S": P8}))
    sol = solve(Problem(demands, accs, 5000.0), get_solver("auto"))
    assert sol.services[0].reason == "inventory"
    assert "accelerators[H100-SXM]: its 8 GPUs hold no replica of 16 (gpus_per_replica)" in sol.notes


@pytest.mark.parametrize("statistic", ["mean", "p95", "p99"])
def test_a_target_no_shape_meets_says_the_least_latency_any_reads(statistic: str) -> None:
    """A trial: a 70B model asked a TTFT of 10 ms read SHORT (slo) and nothing more, analyze max_rate 0. The note
    says the least TTFT and ITL one replica reads at a trickle of load, at the target's own statistic (a review: a
    p99 target was quoted p95's)."""
    demands = (ServiceDemand("big", 1, Targets(10, 60, statistic), Load(4.0, 512, 200), {"H100-SXM": P8}),)
    problem = Problem(demands, (H100,), 5000.0, batch_sizes=(8, 64))
    sol = solve(problem, get_solver("auto"))
    assert sol.services[0].reason == "slo"
    (note,) = [n for n in slo_notes(problem, sol) if n.startswith("big: ")]
    assert note.startswith(f"big: no shape meets its {statistic} targets (ttft_ms 10, itl_ms 60): the least any "
                           "reads, one H100-SXM replica at a trickle of load, is TTFT ")
    ttft = float(note.split("is TTFT ")[1].split(" ms")[0])
    perf = get_model(DEFAULT_MODEL).analyze(P8, Load(1e-3, 512, 200), ServerShape(8, DEFAULT_MAX_QUEUE, 700.0),
                                            H100.profile)
    assert ttft == pytest.approx(perf.latency_at(statistic)[0], rel=1e-3)


def test_a_margin_never_leaves_a_service_without_candidates() -> None:
    """A margin of 0.9 asks bulk for a mean of 15 ms a token and 500 ms to a first token, which no shape of P14
    meets with 2,000-token prompts: it is planned against its own targets, not as short with no shape; chat's
    margin, which its shapes meet, is kept."""
    base = services((4.0, 2.0, 3.0))
    margined = tuple(replace(s, targets=replace(s.targets, margin=0.9 if s.name == "bulk" else 0.3)) for s in base)
    problem = Problem(margined, (H100,), 5000.0, batch_sizes=(16, 64), power_levels=(0.6, 1.0))
    own = Problem(tuple(replace(s, targets=replace(s.targets, margin=0.0 if s.name == "bulk" else 0.3))
                        for s in base), (H100,), 5000.0, batch_sizes=(16, 64), power_levels=(0.6, 1.0))
    got, want = enumerate_all(problem), enumerate_all(own)
    assert got[2] and [c.assignment for c in got[2]] == [c.assignment for c in want[2]]
    assert [c.assignment for c in got[0]] == [c.assignment for c in want[0]]
    assert solve(problem, get_solver("greedy")).services[2].reason != "slo"


def test_candidates_built_by_field_are_whole() -> None:
    """`_value` builds candidates with tuple.__new__ for speed, past namedtuple's count of fields: each must still
    hold every field, of its type (a field added to Candidate and not to `_value` would shift the others)."""
    for problem in CASES[:6]:
        for cs in enumerate_all(problem):
            for c in cs:
                assert len(c) == len(Candidate._fields) and c == Candidate._make(c)
                assert isinstance(c.assignment, Assignment) and isinstance(c.gpus, int) and isinstance(c.spare, int)
                assert all(isinstance(v, float) for v in (c.power_w, c.cost_per_hour, c.served_rps, c.short_rps,
                                                          c.score, c.value))


@pytest.mark.parametrize("solver", ["greedy", "milp", "auto", "exhaustive"])
def test_nothing_to_run_on_is_a_plan_not_a_traceback(solver: str) -> None:
    """The last GPU of a host's one type lost (no service has a candidate anywhere), or every service removed by a
    reload: each solver plans nothing and says why, where `_value` and the solvers once raised."""
    lost = replace(H100, count=0)
    for problem in (Problem(services((4.0, 2.0, 3.0)), (lost,), 3000.0), Problem((), (H100,), 3000.0)):
        plan = solve(problem, get_solver(solver))
        assert all(s.assignment is None and s.reason == "inventory" for s in plan.services)
        assert len(plan.services) == len(problem.services) and plan.power_w == problem.idle_w
