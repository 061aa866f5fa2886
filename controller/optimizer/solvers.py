"""Solvers behind one protocol, chosen by name, and what turns a choice into a `Solution`."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np

from controller.lp import Lp
from controller.optimizer.candidates import enumerate_all, with_tails
from controller.optimizer.domains import domain_w, fit_domains, over
from controller.optimizer.greedy import Greedy
from controller.optimizer.limit_fit import fit_limits
from controller.optimizer.problem import (
    Candidate,
    Choice,
    Problem,
    ServiceResult,
    Solution,
    choice_value,
    gpus_used,
)
from controller.optimizer.reasons import short_reason
from controller.optimizer.values import collector_paused, valued


class Solver(Protocol):
    name: str

    def choose(self, problem: Problem, cands: list[list[Candidate]], shed: list[float]) -> tuple[Choice, list[str]]: ...


def _fits(problem: Problem, choice: Sequence[Candidate | None], shed_gpus: Sequence[tuple[str, int]]) -> bool:
    """Within the budget, the domains and the inventory, a shed service holding its `shed_gpus`."""
    power = sum(c.power_w for c in choice if c is not None)
    if power > problem.budget_w - problem.idle_w + 1e-6 or over(problem, choice):
        return False
    return all(n <= problem.accelerator(a).count for a, n in gpus_used(choice, shed_gpus).items())


class Exhaustive:
    """Every combination (small cases only): the oracle the other solvers are tested against. Past its limit it
    refuses, or where the caller must plan all the same (the daemon: a config's services and shapes only show how
    many combinations they make once sized) plans with `Auto` and says so to `too_big`."""

    name = "exhaustive"
    limit = 2_000_000

    def __init__(self, too_big: Callable[[str], None] | None = None, time_limit_s: float = 2.0,
                 mip_gap: float = 0.01) -> None:
        self.too_big, self.fallback = too_big, Auto(time_limit_s, mip_gap)

    def choose(self, problem: Problem, cands: list[list[Candidate]], shed: list[float]) -> tuple[Choice, list[str]]:
        options: list[list[Candidate | None]] = [[*cs, None] for cs in cands]
        if math.prod(len(o) for o in options) > self.limit:
            if self.too_big is None:
                raise ValueError(f"exhaustive: more than {self.limit} combinations; use greedy or milp")
            self.too_big(f'solver "exhaustive" (optimizer.solver): more than {self.limit:,} combinations of the '
                         f"services' candidates: planned with {self.fallback.name} instead; set auto, greedy or milp")
            return self.fallback.choose(problem, cands, shed)
        best: Choice = [None] * len(cands)
        best_v = choice_value(best, shed)
        held = problem.shed_gpus(cands)
        for combo in itertools.product(*options):
            v = choice_value(combo, shed)
            if v > best_v + 1e-9 and _fits(problem, combo, held):
                best, best_v = list(combo), v
        return best, []


MAX_COST = 1e20
"""Largest objective coefficient the MILP is given: HiGHS counts a cost past it as infinite (some six priority
levels of `shed_weights`; beyond, it answered "status code not recognized", or scipy refused an inf)."""


class Milp:
    """Assignment MILP on HiGHS: one candidate (or shed) per service, inventory and budget rows."""

    name = "milp"

    def __init__(self, time_limit_s: float = 2.0, mip_gap: float = 0.01) -> None:
        self.time_limit_s = time_limit_s
        self.mip_gap = mip_gap

    def choose(self, problem: Problem, cands: list[list[Candidate]], shed: list[float]) -> tuple[Choice, list[str]]:
        """The MILP's choice; greedy's where it found none, or stopped short of the optimum at a worse plan than
        greedy's (a trial's 500 services at its time limit: 53 % of priority 1's load served, greedy's 66 %)."""
        picked, notes = self.exact(problem, cands, shed)
        if picked is not None and not notes:
            return picked, notes
        choice, _ = Greedy().choose(problem, cands, shed)
        if picked is None:
            return choice, notes
        if problem.domains:  # greedy knows no domain: compared once brought within them, as Auto compares
            choice, _ = fit_domains(problem, cands, choice)
        held = problem.shed_gpus(cands)
        if _fits(problem, choice, held) and choice_value(choice, shed) > choice_value(picked, shed) + 1e-9:
            return choice, [*notes, "milp: greedy's plan used, better than that incumbent"]
        return picked, notes

    def exact(self, problem: Problem, cands: list[list[Candidate]],
              shed: list[float]) -> tuple[Choice | None, list[str]]:
        """The MILP's choice (None where it found no incumbent: the note says so)."""
        if not cands:
            return [], []  # no service: a MILP without variables is not one HiGHS takes
        if max(map(abs, shed)) > MAX_COST:
            return None, [f"milp: {len({s.priority for s in problem.services})} priority levels weigh a "
                          f"shortfall up to {max(map(abs, shed)):.3g}, past what its tolerances order; greedy "
                          "result used"]
        lp = Lp()
        picks = [[(lp.var(("c", i, k), ub=1.0, integer=True, cost=-c.value), c) for k, c in enumerate(cs)]
                 for i, cs in enumerate(cands)]
        sheds = [lp.var(("shed", i), ub=1.0, integer=True, cost=-shed[i]) for i in range(len(picks))]
        for row, x_shed in zip(picks, sheds, strict=True):  # each service takes one candidate or is shed
            lp.row([*((x, 1.0) for x, _ in row), (x_shed, 1.0)], 1.0, 1.0, "one")
        flat = [xc for row in picks for xc in row]
        held = list(zip(sheds, problem.shed_gpus(cands), strict=True))
        for a in problem.accelerators:  # a shed service holds its GPUs too
            lp.row([*((x, float(c.gpus)) for x, c in flat if c.assignment.accelerator == a.name),
                    *((x, float(n)) for x, (acc, n) in held if acc == a.name and n > 0)], -np.inf, a.count, "inventory")
        lp.row(((x, c.power_w) for x, c in flat), -np.inf, problem.budget_w - problem.idle_w, "budget")
        for d in problem.domains:
            lp.row(((x, domain_w(problem, c, d)) for x, c in flat), -np.inf, max(0.0, d.room_w), f"domain {d.name}")
        # the gap is the plan's score's (its objective's, less the shed penalties): relative to an objective they
        # dominate, 1 % let HiGHS stop at a plan a quarter worse than the optimum, or one a few % of a higher
        # priority short for all of a lower one
        bests = (max(c.score for c in cs) for cs in cands if cs)  # each service's best (under cost, the least -cost)
        scale = sum(abs(b) for b in bests if math.isfinite(b)) or 1.0
        res = lp.solve(time_limit_s=self.time_limit_s, mip_gap=0.0, abs_gap=self.mip_gap * scale)
        if not res.ok:
            return None, [f"milp: {res.message.strip()} without an incumbent; greedy result used"]
        notes = [] if res.optimal else [f"milp: {res.message.strip()}; best incumbent used"]
        picked: Choice = [None] * len(cands)
        for x, c in flat:
            if res.x[x] > 0.5:
                picked[c.service] = c
        return picked, notes


class Auto:
    """The MILP where the problem is small (a host's few services: up to about a second), greedy beyond it, where the
    MILP's time grows and greedy's gap is measured small (benchmarks/optimizer_scale.py). Greedy's exchanges
    are pairwise, so on small GPU-tight problems a trade of three services escapes it; there the MILP finds
    it. Both run on a small problem and the better plan is taken, so a MILP stopped at its time limit never
    costs more than greedy."""

    name = "auto"
    milp_candidates = 3000
    """Candidates in all up to which the MILP runs beside greedy."""

    def __init__(self, time_limit_s: float = 2.0, mip_gap: float = 0.01) -> None:
        self.milp = Milp(time_limit_s, mip_gap)

    def choose(self, problem: Problem, cands: list[list[Candidate]], shed: list[float]) -> tuple[Choice, list[str]]:
        choice, notes = Greedy().choose(problem, cands, shed)
        if problem.domains:  # greedy knows no domain: compared once brought within them, as solve() would
            choice, repaired = fit_domains(problem, cands, choice)
            notes = [*notes, *repaired]
        if sum(len(cs) for cs in cands) > self.milp_candidates:
            return choice, notes
        exact, milp_notes = self.milp.exact(problem, cands, shed)
        held = problem.shed_gpus(cands)
        if exact is not None and _fits(problem, exact, held) and (
                choice_value(exact, shed) > choice_value(choice, shed) + 1e-9 or not _fits(problem, choice, held)):
            return exact, milp_notes
        return choice, [*notes, *milp_notes]


def get_solver(name: str, time_limit_s: float = 2.0, mip_gap: float = 0.01,
               too_big: Callable[[str], None] | None = None) -> Solver:
    """The solver by name; `too_big`, where given, hears why an exhaustive search past its limit planned with auto
    (without it, such a search refuses: `optimize` says so in one line)."""
    if name == "auto":
        return Auto(time_limit_s, mip_gap)
    if name == "greedy":
        return Greedy()
    if name == "milp":
        return Milp(time_limit_s, mip_gap)
    if name == "exhaustive":
        return Exhaustive(too_big, time_limit_s, mip_gap)
    raise ValueError(f"solver: unknown {name!r}, expected one of ['auto', 'exhaustive', 'greedy', 'milp']")


@collector_paused()
def solve(problem: Problem, solver: Solver) -> Solution:
    """`_solved`, and again where it left a service short that has untried types (`ServiceDemand.untried`), with
    those at risk: a prior written for another GPU is trusted only with the untried margin to spare (on a mixed
    host chat's H100 prior had it moved to L40S GPUs that missed its target at any load, to give code an H100),
    but a service its measured types cannot carry may try one at its own targets, at a price. The second plan is
    kept where it leaves less unserved, priority by priority (at risk, a type that met the margin is charged too)."""
    solution = _solved(problem, solver)
    risky = {r.name for r, s in zip(solution.services, problem.services, strict=True)
             if r.short_rps > 1e-9 and s.untried and not s.untried_at_risk}
    if not risky:
        return solution
    again = _solved(replace(problem, services=tuple(replace(s, untried_at_risk=True) if s.name in risky else s
                                                   for s in problem.services)), solver)
    best = again if _shortfalls(problem, again) < _shortfalls(problem, solution) else solution
    return replace(best, solve_s=solution.solve_s + again.solve_s,
                   candidates_s=solution.candidates_s + again.candidates_s)


def _shortfalls(problem: Problem, solution: Solution) -> list[float]:
    """The shares of load a plan leaves unserved, summed per priority level, the highest first (compared as the
    shed weights rank them), rounded past the solvers' noise."""
    levels = sorted({s.priority for s in problem.services})
    return [round(sum(r.short_rps / s.load.rate_rps for r, s in zip(solution.services, problem.services, strict=True)
                      if s.priority == level and s.load.rate_rps > 0), 6) for level in levels]


def _solved(problem: Problem, solver: Solver) -> Solution:
    """Enumerate, value, choose, and report (with the reason for every shortfall). The collector is held off
    throughout, not stage by stage: each stage's end had it scan everything the cycle had built so far, cycles of
    which there are none (at 1,000 services three scans cost 0.08 s, one 0.02 s)."""
    t0 = time.perf_counter()
    raw = enumerate_all(problem)
    t1 = time.perf_counter()
    cands, shed = valued(problem, raw)
    choice, notes = solver.choose(problem, cands, shed)
    chosen = choice
    if problem.domains:
        choice, brought_down = fit_domains(problem, cands, choice)
        notes = [*notes, *brought_down]
    domained = choice
    choice, capped = fit_limits(problem, cands, domained)
    notes = [*notes, *capped, *(f"accelerators[{a.name}]: its {a.count} GPUs hold no replica of {a.gpus_per_replica} "
                                "(gpus_per_replica)" for a in problem.accelerators if a.count < a.gpus_per_replica
                                and any(a.name in svc.params for svc in problem.services))]
    ceilings = {svc.name: c.assignment.power_cap_w for svc, c, d in zip(problem.services, domained, choice, strict=True)
                if c is not None and d is not None and d is not c}  # the caps chosen, where the fit lowered them
    t2 = time.perf_counter()
    held = problem.shed_gpus(cands)
    results = []
    for i, (svc, c) in enumerate(zip(problem.services, choice, strict=True)):
        short = svc.load.rate_rps > 0 if c is None else c.short_rps > 1e-9
        reason = short_reason(problem, i, cands[i], choice, held) if short else None
        if reason == "budget" and domained[i] is not chosen[i]:  # the domain repair brought it down: its domain
            reason = "domain"
        if c is None:
            results.append(ServiceResult(svc.name, None, None, 0.0, 0.0, svc.load.rate_rps, reason))
            continue
        results.append(ServiceResult(svc.name, c.assignment, with_tails(problem, c), c.power_w, c.cost_per_hour,
                                     c.short_rps, reason))
    power = problem.idle_w + sum(c.power_w for c in choice if c is not None)
    cost = sum(c.cost_per_hour for c in choice if c is not None)
    objective = sum(c.score for c in choice if c is not None)
    return Solution(solver.name, results, power, cost, objective, t2 - t1, t1 - t0, notes, ceilings)
