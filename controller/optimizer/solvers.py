"""Solvers behind one protocol, chosen by name, and what turns a choice into a `Solution`."""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from controller.lp import Lp
from controller.optimizer.candidates import enumerate_all, valued, with_tails
from controller.optimizer.domains import domain_w, fit_domains, over
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
    if power > problem.budget_w - problem.idle_w + 1e-6 or over(problem, choice):
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
    """Priority and regret order; each service takes its best candidate under a power price, then upgrades.
    Replicas beyond a shape's need (token speed's spares) are left out of those passes, where the first in
    order would take them all, and handed out after, best gain first, while GPUs and watts remain.

    Each service's candidates are held as arrays ranked by value, so a pass and an upgrade sweep cost a
    few vector operations per service."""

    name = "greedy"
    prices = 10

    def choose(self, problem: Problem, cands: list[list[Candidate]], shed: list[float]) -> tuple[Choice, list[str]]:
        acc_index = {a.name: k for k, a in enumerate(problem.accelerators)}

        def as_arrays(cs: list[Candidate]) -> _Ranked:
            return _Ranked(np.array([c.value for c in cs]), np.array([c.power_w for c in cs]),
                           np.array([c.gpus for c in cs], dtype=float),
                           np.array([acc_index[c.assignment.accelerator] for c in cs], dtype=int))

        ranked = [sorted(cs, key=lambda c: -c.value) for cs in cands]
        lean = [[k for k, c in enumerate(cs) if c.spare == 0] for cs in ranked]  # the passes' candidates
        arrays = [as_arrays([cs[k] for k in ks]) for cs, ks in zip(ranked, lean, strict=True)]

        def regret(i: int) -> float:
            v = arrays[i].value
            return float(v[0] - (v[1] if len(v) > 1 else shed[i])) if len(v) else 0.0

        order = sorted(range(len(cands)), key=lambda i: (problem.services[i].priority, -regret(i)))
        # The highest power price a choice can turn on: a trade between two candidates of a service, or
        # serving it at all against shedding it (what starves a lower priority when a higher one overspends).
        spread = [float(np.ptp(a.value) / max(np.ptp(a.power), 1e-9)) for a in arrays if a.value.size > 1]
        serve = [float(np.max((a.value - shed[i]) / np.maximum(a.power, 1.0))) for i, a in enumerate(arrays)
                 if a.value.size]
        top = max([*spread, *serve], default=1.0) or 1.0
        count = np.array([a.count for a in problem.accelerators], dtype=float)
        budget = problem.budget_w - problem.idle_w
        best: list[int] = [-1] * len(cands)
        best_v = _value([None] * len(cands), shed)
        for price in [0.0, *np.geomspace(top * 1e-4, top, self.prices)]:
            picks = self._pass(order, arrays, count.copy(), budget, float(price))
            self._upgrade(order, arrays, picks, count, budget, shed)
            v = sum(arrays[i].value[j] if j >= 0 else shed[i] for i, j in enumerate(picks))
            if v > best_v + 1e-12:
                best, best_v = picks, v
        best = [lean[i][j] if j >= 0 else -1 for i, j in enumerate(best)]
        arrays = [as_arrays(cs) for cs in ranked]
        self._fill_spares(ranked, arrays, best, count, budget)
        # A spare took its first pick's shape; another of as many GPUs and watts may be worth more.
        self._upgrade(order, arrays, best, count, budget, shed)
        self._trade_power(arrays, best, shed, count, problem.budget_w - problem.idle_w)
        return [ranked[i][j] if j >= 0 else None for i, j in enumerate(best)], []

    @staticmethod
    def _trade_power(arrays: list[_Ranked], picks: list[int], shed: list[float], count: np.ndarray,
                     budget: float) -> None:
        """Pairwise exchange on the power row: one service (the donor) moves to a candidate drawing less, on
        the same accelerator with no more GPUs, and another (the taker, or a shed service) to one worth more
        that fits the GPUs free now, when the gain beats the loss. A donor only frees GPUs and a taker only
        takes free ones (neither counts what the other frees), so the inventory rows hold and only the budget
        needs checking. Each round finds the best move in O(m log m) over all m candidates at once (donors
        sorted by watts freed, with suffix minima of the value lost)."""
        if not any(a.value.size for a in arrays):
            return
        who = np.concatenate([np.full(a.value.size, i) for i, a in enumerate(arrays)])
        first = np.cumsum([0] + [a.value.size for a in arrays])[:-1]
        power, value, gpus, acc = (np.concatenate([getattr(a, f) for a in arrays])
                                   for f in ("power", "value", "gpus", "acc"))
        shed_value = np.asarray(shed, dtype=float)
        for _ in range(8):
            chosen = np.array(picks) >= 0
            # Flat index of each service's pick; clamped, and masked by `chosen`, for a service without one.
            at_pick = np.minimum(first + np.maximum(picks, 0), who.size - 1)
            spare = budget + 1e-6 - float(power[at_pick[chosen]].sum())
            left = count - np.bincount(acc[at_pick[chosen]], weights=gpus[at_pick[chosen]], minlength=count.size)
            has = chosen[who]
            same = has & (acc == acc[at_pick][who])
            own_gpus = np.where(same, gpus[at_pick][who], 0.0)
            dp = power - np.where(has, power[at_pick][who], 0.0)
            dv = value - np.where(has, value[at_pick][who], shed_value[who])
            give = np.flatnonzero(same & (gpus <= own_gpus) & (dp < 0))
            take = np.flatnonzero((gpus <= left[acc] + own_gpus) & (dp > 0) & (dv > 1e-12))
            if give.size == 0 or take.size == 0:
                return
            give = give[np.argsort(-dp[give], kind="stable")]  # by watts freed, ascending
            freed, loss = -dp[give], -dv[give]
            least = np.minimum.accumulate(loss[::-1])[::-1]
            at = np.searchsorted(freed, dp[take] - spare - 1e-9, side="left")
            ok = at < give.size
            take, at = take[ok], at[ok]
            net = dv[take] - least[at]
            move = None
            for r in np.argsort(-net)[:8]:  # best few takers; a donor must be another service
                t, n = take[r], int(at[r])
                others = n + np.flatnonzero(who[give[n:]] != who[t])
                if others.size:
                    m = int(others[np.argmin(loss[others])])
                    gain = float(dv[t] - loss[m])
                    if gain > 1e-9 and (move is None or gain > move[0]):
                        move = (gain, int(t), int(give[m]))
            if move is None:
                return
            _, t, g = move
            picks[int(who[t])] = int(t - first[who[t]])
            picks[int(who[g])] = int(g - first[who[g]])

    @staticmethod
    def _fill_spares(ranked: list[list[Candidate]], arrays: list[_Ranked], picks: list[int], count: np.ndarray,
                     budget: float) -> None:
        """Hand out spare replicas one at a time, the best gain first, while GPUs and watts allow: each step moves
        a service to its pick's shape with one replica more. Room only shrinks, so a step that does not fit now
        never will, and each service's next step joins the heap once its last is taken."""
        where = [{(replace(c.assignment, replicas=0), c.assignment.replicas): k for k, c in enumerate(cs)}
                 for cs in ranked]
        spare_w = budget + 1e-6 - sum(arrays[i].power[j] for i, j in enumerate(picks) if j >= 0)
        left = count.copy()
        for i, j in enumerate(picks):
            if j >= 0:
                left[arrays[i].acc[j]] -= arrays[i].gpus[j]

        def step(i: int) -> tuple[float, int, int] | None:
            j = picks[i]
            a = ranked[i][j].assignment
            k = where[i].get((replace(a, replicas=0), a.replicas + 1))
            if k is None or arrays[i].value[k] <= arrays[i].value[j] + 1e-12:
                return None
            return (-(arrays[i].value[k] - arrays[i].value[j]), i, k)

        heap = [s for i, j in enumerate(picks) if j >= 0 and (s := step(i)) is not None]
        heapq.heapify(heap)
        while heap:
            _, i, k = heapq.heappop(heap)
            a, j = arrays[i], picks[i]
            dp, dg = a.power[k] - a.power[j], a.gpus[k] - a.gpus[j]
            if dp > spare_w or dg > left[a.acc[k]]:
                continue
            spare_w -= dp
            left[a.acc[k]] -= dg
            picks[i] = k
            if (nxt := step(i)) is not None:
                heapq.heappush(heap, nxt)

    @staticmethod
    def _pass(order: list[int], arrays: list[_Ranked], left: np.ndarray, budget: float, price: float) -> list[int]:
        picks = [-1] * len(arrays)
        for i in order:
            a = arrays[i]
            if a.value.size == 0:
                continue
            ok = (a.power <= budget + 1e-9) & (a.gpus <= left[a.acc])
            if not ok.any():
                continue
            j = int(np.argmax(np.where(ok, a.value - price * a.power, -np.inf)))
            picks[i] = j
            budget -= a.power[j]
            left[a.acc[j]] -= a.gpus[j]
        return picks

    @staticmethod
    def _upgrade(order: list[int], arrays: list[_Ranked], picks: list[int], count: np.ndarray, budget: float,
                 shed: list[float]) -> None:
        """One sweep: move each service to its most valuable candidate that still fits (`picks` fits on entry,
        so a move only has to check the power row and the accelerator rows it touches)."""
        spare_w = budget + 1e-6 - sum(arrays[i].power[j] for i, j in enumerate(picks) if j >= 0)
        left = count.copy()
        for i, j in enumerate(picks):
            if j >= 0:
                left[arrays[i].acc[j]] -= arrays[i].gpus[j]
        for i in order:
            a, j = arrays[i], picks[i]
            # Ranked: only candidates before the current one can be worth more.
            upto = int(np.count_nonzero(a.value > (a.value[j] if j >= 0 else shed[i])))
            if upto == 0:
                continue
            room = left[a.acc[:upto]].copy()
            freed_w = a.power[j] if j >= 0 else 0.0
            if j >= 0:
                room[a.acc[:upto] == a.acc[j]] += a.gpus[j]
            fits = np.flatnonzero((a.power[:upto] - freed_w <= spare_w) & (a.gpus[:upto] <= room))
            if fits.size == 0:
                continue
            k = int(fits[0])
            spare_w -= a.power[k] - freed_w
            if j >= 0:
                left[a.acc[j]] += a.gpus[j]
            left[a.acc[k]] -= a.gpus[k]
            picks[i] = k


@dataclass(frozen=True)
class _Ranked:
    """One service's candidates, most valuable first, as arrays."""

    value: np.ndarray
    power: np.ndarray
    gpus: np.ndarray
    acc: np.ndarray


class Milp:
    """Assignment MILP on HiGHS: one candidate (or shed) per service, inventory and budget rows."""

    name = "milp"

    def __init__(self, time_limit_s: float = 2.0, mip_gap: float = 0.01) -> None:
        self.time_limit_s = time_limit_s
        self.mip_gap = mip_gap

    def choose(self, problem: Problem, cands: list[list[Candidate]], shed: list[float]) -> tuple[Choice, list[str]]:
        lp = Lp()
        picks = [[(lp.var(("c", i, k), ub=1.0, integer=True, cost=-c.value), c) for k, c in enumerate(cs)]
                 for i, cs in enumerate(cands)]
        for i, row in enumerate(picks):  # each service takes one candidate or is shed
            lp.row([*((x, 1.0) for x, _ in row), (lp.var(("shed", i), ub=1.0, integer=True, cost=-shed[i]), 1.0)],
                   1.0, 1.0, "one")
        flat = [xc for row in picks for xc in row]
        for a in problem.accelerators:
            lp.row(((x, float(c.gpus)) for x, c in flat if c.assignment.accelerator == a.name), -np.inf, a.count,
                   "inventory")
        lp.row(((x, c.power_w) for x, c in flat), -np.inf, problem.budget_w - problem.idle_w, "budget")
        for d in problem.domains:
            lp.row(((x, domain_w(problem, c, d)) for x, c in flat), -np.inf, d.room_w, f"domain {d.name}")
        res = lp.solve(time_limit_s=self.time_limit_s, mip_gap=self.mip_gap)
        if not res.ok:
            choice, _ = Greedy().choose(problem, cands, shed)
            return choice, [f"milp: {res.message.strip()} without an incumbent; greedy result used"]
        notes = [] if res.optimal else [f"milp: {res.message.strip()}; best incumbent used"]
        picked: Choice = [None] * len(cands)
        for x, c in flat:
            if res.x[x] > 0.5:
                picked[c.service] = c
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
    if problem.domains:
        choice, brought_down = fit_domains(problem, cands, choice)
        notes = [*notes, *brought_down]
    t2 = time.perf_counter()
    results = []
    for i, (svc, c) in enumerate(zip(problem.services, choice, strict=True)):
        if c is None:
            reason = _reason(problem, i, cands[i], choice) if svc.load.rate_rps > 0 else None
            results.append(ServiceResult(svc.name, None, None, 0.0, 0.0, svc.load.rate_rps, reason))
            continue
        reason = _reason(problem, i, cands[i], choice) if c.short_rps > 1e-9 else None
        results.append(ServiceResult(svc.name, c.assignment, with_tails(problem, c), c.power_w, c.cost_per_hour,
                                     c.short_rps, reason))
    power = problem.idle_w + sum(c.power_w for c in choice if c is not None)
    cost = sum(c.cost_per_hour for c in choice if c is not None)
    objective = sum(c.score for c in choice if c is not None)
    return Solution(solver.name, results, power, cost, objective, t2 - t1, t1 - t0, notes)
