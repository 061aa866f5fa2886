"""Solvers behind one protocol, chosen by name, and what turns a choice into a `Solution`."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

from controller.optimizer.candidates import enumerate_all, valued
from controller.optimizer.problem import Candidate, Problem, ServiceResult, Solution

Choice = list[Candidate | None]


class Solver(Protocol):
    name: str

    def choose(self, problem: Problem, cands: list[list[Candidate]], shed: list[float]) -> tuple[Choice, list[str]]: ...


def _fits(problem: Problem, choice: Sequence[Candidate | None]) -> bool:
    used: dict[str, int] = {}
    power = 0.0
    for c in choice:
        if c is not None:
            used[c.assignment.accelerator] = used.get(c.assignment.accelerator, 0) + c.gpus
            power += c.power_w
    if power > problem.budget_w - problem.idle_w + 1e-6:
        return False
    return all(n <= problem.accelerator(a).count for a, n in used.items())


def _value(choice: Sequence[Candidate | None], shed: list[float]) -> float:
    return sum(c.value if c is not None else s for c, s in zip(choice, shed, strict=True))


class Exhaustive:
    """Every combination (small cases only): the oracle the other solvers are tested against."""

    name = "exhaustive"
    limit = 2_000_000

    def choose(self, problem: Problem, cands: list[list[Candidate]], shed: list[float]) -> tuple[Choice, list[str]]:
        options: list[list[Candidate | None]] = [[*cs, None] for cs in cands]
        if math.prod(len(o) for o in options) > self.limit:
            raise ValueError(f"exhaustive: more than {self.limit} combinations; use greedy or milp")
        best: Choice = [None] * len(cands)
        best_v = _value(best, shed)
        for combo in itertools.product(*options):
            v = _value(combo, shed)
            if v > best_v + 1e-9 and _fits(problem, combo):
                best, best_v = list(combo), v
        return best, []


class Greedy:
    """Priority and regret order; each service takes its best candidate under a power price, then upgrades."""

    name = "greedy"
    prices = 14

    def _pass(self, problem: Problem, order: list[int], arrays: list[tuple[np.ndarray, ...]],
              cands: list[list[Candidate]], price: float) -> Choice:
        left = np.array([a.count for a in problem.accelerators], dtype=float)
        budget = problem.budget_w - problem.idle_w
        choice: Choice = [None] * len(cands)
        for i in order:
            value, power, gpus, acc = arrays[i]
            if value.size == 0:
                continue
            ok = (power <= budget + 1e-9) & (gpus <= left[acc])
            if not ok.any():
                continue
            j = int(np.argmax(np.where(ok, value - price * power, -np.inf)))
            choice[i] = cands[i][j]
            budget -= power[j]
            left[acc[j]] -= gpus[j]
        return choice

    def choose(self, problem: Problem, cands: list[list[Candidate]], shed: list[float]) -> tuple[Choice, list[str]]:
        acc_index = {a.name: k for k, a in enumerate(problem.accelerators)}
        arrays: list[tuple[np.ndarray, ...]] = [
            (np.array([c.value for c in cs]), np.array([c.power_w for c in cs]), np.array([c.gpus for c in cs]),
             np.array([acc_index[c.assignment.accelerator] for c in cs], dtype=int))
            for cs in cands
        ]

        def regret(i: int) -> float:
            v = np.sort(arrays[i][0])[::-1]
            second = v[1] if len(v) > 1 else shed[i]
            return float(v[0] - second) if len(v) else 0.0

        order = sorted(range(len(cands)), key=lambda i: (problem.services[i].priority, -regret(i)))
        ranked = [sorted(cs, key=lambda c: -c.value) for cs in cands]
        spread = [float(np.ptp(a[0]) / max(np.ptp(a[1]), 1e-9)) for a in arrays if a[0].size > 1]
        top = max(spread, default=1.0) or 1.0
        best: Choice = [None] * len(cands)
        best_v = _value(best, shed)
        for price in [0.0, *np.geomspace(top * 1e-4, top, self.prices)]:
            choice = self._upgrade(problem, self._pass(problem, order, arrays, cands, float(price)), ranked, order)
            v = _value(choice, shed)
            if v > best_v + 1e-12:
                best, best_v = choice, v
        return best, []

    def _upgrade(self, problem: Problem, choice: Choice, ranked: list[list[Candidate]], order: list[int]) -> Choice:
        """One sweep: move each service to its most valuable candidate that still fits (`choice` fits on entry,
        so a move only has to check the power row and its own accelerator's row)."""
        spare_w = problem.budget_w - problem.idle_w + 1e-6 - sum(c.power_w for c in choice if c is not None)
        left = {a.name: a.count for a in problem.accelerators}
        for c in choice:
            if c is not None:
                left[c.assignment.accelerator] -= c.gpus
        for i in order:
            current = choice[i]
            for c in ranked[i]:
                if current is not None and c.value <= current.value:
                    break
                freed_w = current.power_w if current is not None else 0.0
                acc = c.assignment.accelerator
                freed_gpus = current.gpus if current is not None and current.assignment.accelerator == acc else 0
                if c.power_w - freed_w <= spare_w and c.gpus - freed_gpus <= left[acc]:
                    spare_w -= c.power_w - freed_w
                    if current is not None:
                        left[current.assignment.accelerator] += current.gpus
                    left[acc] -= c.gpus
                    choice = [*choice[:i], c, *choice[i + 1:]]
                    break
        return choice


class Milp:
    """Assignment MILP on HiGHS: one candidate (or shed) per service, inventory and budget rows."""

    name = "milp"

    def __init__(self, time_limit_s: float = 2.0, mip_gap: float = 0.01) -> None:
        self.time_limit_s = time_limit_s
        self.mip_gap = mip_gap

    def choose(self, problem: Problem, cands: list[list[Candidate]], shed: list[float]) -> tuple[Choice, list[str]]:
        flat = [c for cs in cands for c in cs]
        n_c, n_s = len(flat), len(cands)
        c_obj = -np.concatenate([[c.value for c in flat], shed])
        rows, cols, vals = [], [], []
        for k, c in enumerate(flat):
            rows.append(c.service)
            cols.append(k)
            vals.append(1.0)
        for i in range(n_s):
            rows.append(i)
            cols.append(n_c + i)
            vals.append(1.0)
        acc_row = {a.name: n_s + k for k, a in enumerate(problem.accelerators)}
        power_row = n_s + len(acc_row)
        for k, c in enumerate(flat):
            rows += [acc_row[c.assignment.accelerator], power_row]
            cols += [k, k]
            vals += [float(c.gpus), c.power_w]
        a = csr_array((vals, (rows, cols)), shape=(power_row + 1, n_c + n_s))
        lb = np.concatenate([np.ones(n_s), np.full(len(acc_row), -np.inf), [-np.inf]])
        ub = np.concatenate([np.ones(n_s), [a_.count for a_ in problem.accelerators],
                             [problem.budget_w - problem.idle_w]])
        res = milp(c_obj, integrality=np.ones(n_c + n_s), bounds=Bounds(0, 1),
                   constraints=LinearConstraint(a, lb, ub),
                   options={"time_limit": self.time_limit_s, "mip_rel_gap": self.mip_gap})
        if res.x is None:
            choice, _ = Greedy().choose(problem, cands, shed)
            return choice, [f"milp: {res.message.strip()} without an incumbent; greedy result used"]
        notes = [] if res.status == 0 else [f"milp: {res.message.strip()}; best incumbent used"]
        picked: Choice = [None] * n_s
        for idx in np.flatnonzero(res.x[:n_c] > 0.5):
            picked[flat[int(idx)].service] = flat[int(idx)]
        return picked, notes


def get_solver(name: str, time_limit_s: float = 2.0, mip_gap: float = 0.01) -> Solver:
    if name == "greedy":
        return Greedy()
    if name == "milp":
        return Milp(time_limit_s, mip_gap)
    if name == "exhaustive":
        return Exhaustive()
    raise ValueError(f"solver: unknown {name!r}, expected one of ['exhaustive', 'greedy', 'milp']")


def _reason(problem: Problem, i: int, cands: list[Candidate], choice: Choice) -> str:
    if not cands:
        return "slo"
    others = [c for k, c in enumerate(choice) if k != i]
    used: dict[str, int] = {}
    for c in others:
        if c is not None:
            used[c.assignment.accelerator] = used.get(c.assignment.accelerator, 0) + c.gpus
    best_served = max(c.served_rps for c in cands)
    if best_served < problem.services[i].load.rate_rps - 1e-9:
        return "replicas"  # even max_replicas of the best shape cannot take the load
    fitting = [c for c in cands
               if c.gpus + used.get(c.assignment.accelerator, 0) <= problem.accelerator(c.assignment.accelerator).count]
    if not fitting or max(c.served_rps for c in fitting) < best_served - 1e-9:
        return "inventory"
    return "budget"


def solve(problem: Problem, solver: Solver) -> Solution:
    """Enumerate, value, choose, and report (with the reason for every shortfall)."""
    t0 = time.perf_counter()
    raw = enumerate_all(problem)
    t1 = time.perf_counter()
    cands, shed = valued(problem, raw)
    choice, notes = solver.choose(problem, cands, shed)
    t2 = time.perf_counter()
    results = []
    for i, (svc, c) in enumerate(zip(problem.services, choice, strict=True)):
        if c is None:
            reason = _reason(problem, i, cands[i], choice) if svc.load.rate_rps > 0 else None
            results.append(ServiceResult(svc.name, None, None, 0.0, 0.0, svc.load.rate_rps, reason))
            continue
        reason = _reason(problem, i, cands[i], choice) if c.short_rps > 1e-9 else None
        results.append(ServiceResult(svc.name, c.assignment, c.performance, c.power_w, c.cost_per_hour,
                                     c.short_rps, reason))
    power = problem.idle_w + sum(c.power_w for c in choice if c is not None)
    cost = sum(c.cost_per_hour for c in choice if c is not None)
    objective = sum(c.score for c in choice if c is not None)
    return Solution(solver.name, results, power, cost, objective, t2 - t1, t1 - t0, notes)
