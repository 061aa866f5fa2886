"""The greedy solver: priority and regret order under power prices, then upgrades, spares and exchanges.

Fast at fleet scale (vector operations per service), and checked against the MILP and the exhaustive oracle
(tests/test_optimizer.py, benchmarks/optimizer_scale.py, benchmarks/greedy_tight.py).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from itertools import pairwise
from operator import itemgetter

import numpy as np

from controller.optimizer.domains import fit_domains
from controller.optimizer.problem import Candidate, Choice, Problem, choice_value
from controller.optimizer.trades import Flat, Ranked, exchange, trade_power


class Greedy:
    """Priority and regret order; each service takes its best candidate under a power price, then upgrades.
    Replicas beyond a shape's need (token speed's spares) are left out of those passes, where the first in
    order would take them all, and handed out after, best gain first, while GPUs and watts remain.

    Each service's candidates are held as arrays ranked by value, so a pass and an upgrade sweep cost a
    few vector operations per service."""

    name = "greedy"
    prices = 10
    """Power prices swept besides 0 (`_prices`), each a pass and an upgrade sweep."""

    def choose(self, problem: Problem, cands: list[list[Candidate]], shed: list[float]) -> tuple[Choice, list[str]]:
        if not cands:
            return [], []  # no service: nothing to choose (every service removed by a reload)
        # A shed service holds GPUs too (`Problem.shed_gpus`): they are taken off the inventory, and a candidate on
        # the same accelerator counts only what it needs past them (none below them: a pick under min_replicas
        # that the domain repair sheds holds them again). One on another leaves them held, so a service moved off
        # its type is chosen again with them free, kept where that plan, brought within the domains as `solve`
        # will bring it, still serves every such one.
        held = problem.shed_gpus(cands)
        choice = self._choose(problem, cands, shed, held)
        moved = {i for i, (c, (acc, n)) in enumerate(zip(choice, held, strict=True))
                 if c is not None and n > 0 and c.assignment.accelerator != acc}
        if not moved:
            return choice, []
        again = self._choose(problem, cands, shed, [("", 0) if i in moved else h for i, h in enumerate(held)])
        kept = fit_domains(problem, cands, again)[0] if problem.domains else again
        if all(kept[i] is not None for i in moved) and choice_value(again, shed) > choice_value(choice, shed) + 1e-12:
            return again, []
        return choice, []

    def _choose(self, problem: Problem, cands: list[list[Candidate]], shed: list[float],
                held: list[tuple[str, int]]) -> Choice:
        columns = _Columns.of(problem, cands, held)
        every = [columns.ranked(i) for i in range(len(cands))]
        lean = [np.flatnonzero(columns.spare[columns.span(i)] == 0) for i in range(len(cands))]
        arrays = [Ranked(a.value[ks], a.power[ks], a.gpus[ks], a.acc[ks]) for a, ks in zip(every, lean, strict=True)]

        def regret(i: int) -> float:
            v = arrays[i].value
            return float(v[0] - (v[1] if len(v) > 1 else shed[i])) if len(v) else 0.0

        order = sorted(range(len(cands)), key=lambda i: (problem.services[i].priority, -regret(i)))
        count = np.array([a.count - sum(n for acc, n in held if acc == a.name) for a in problem.accelerators],
                         dtype=float)
        budget = problem.budget_w - problem.idle_w
        best: list[int] = [-1] * len(cands)
        best_v = sum(shed)
        flat = Flat.of(arrays, shed)
        last: list[int] = []
        for price in _prices(flat, self.prices):
            picks = self._pass(order, arrays, count.copy(), budget, price, _best_each(flat, price))
            if picks == last:  # the upgrades would end where the last price's did, already weighed
                continue
            last = picks.copy()
            self._upgrade(order, arrays, picks, count, budget, shed)
            v = sum(arrays[i].value[j] if j >= 0 else shed[i] for i, j in enumerate(picks))
            if v > best_v + 1e-12:
                best, best_v = picks, v
        best = [int(lean[i][j]) if j >= 0 else -1 for i, j in enumerate(best)]
        arrays = every
        self._fill_spares(columns, arrays, best, count, budget)
        # A spare took its first pick's shape; another of as many GPUs and watts may be worth more.
        self._upgrade(order, arrays, best, count, budget, shed)
        if any(a.value.size for a in arrays):
            flat = Flat.of(arrays, shed)
            trade_power(flat, best, count, problem.budget_w - problem.idle_w)
            exchange(flat, best, count, problem.budget_w - problem.idle_w)
        return [cands[i][int(columns.rank[i][j])] if j >= 0 else None for i, j in enumerate(best)]

    @staticmethod
    def _fill_spares(columns: _Columns, arrays: list[Ranked], picks: list[int], count: np.ndarray,
                     budget: float) -> None:
        """Hand out spare replicas one at a time, the best gain first, while GPUs and watts allow: each step moves
        a service to its pick's shape with one replica more. Room only shrinks, so a step that does not fit now
        never will, and each service's next step joins the heap once its last is taken."""
        spare_w, left = _room(arrays, picks, count, budget)

        def step(i: int) -> tuple[float, int, int] | None:
            j = picks[i]
            k = columns.one_more(i, j)
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
    def _pass(order: list[int], arrays: list[Ranked], left: np.ndarray, budget: float, price: float,
              best: list[int]) -> list[int]:
        """Each service in order takes its most valuable candidate under `price` that fits what the ones before
        left; `best` is each one's pick were nothing taken (-1: none), which fits most of the time and is then
        taken without a vector pass."""
        picks = [-1] * len(arrays)
        for i in order:
            a, j = arrays[i], best[i]
            if j < 0:
                continue
            if a.power[j] <= budget + 1e-9 and a.gpus[j] <= left[a.acc[j]]:  # the first of the maxima fits
                picks[i] = j
                budget -= a.power[j]
                left[a.acc[j]] -= a.gpus[j]
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
    def _upgrade(order: list[int], arrays: list[Ranked], picks: list[int], count: np.ndarray, budget: float,
                 shed: list[float]) -> None:
        """One sweep: move each service to its most valuable candidate that still fits (`picks` fits on entry,
        so a move only has to check the power row and the accelerator rows it touches)."""
        spare_w, left = _room(arrays, picks, count, budget)
        for i in order:
            a, j = arrays[i], picks[i]
            now = a.value[j] if j >= 0 else shed[i]
            if a.value.size == 0 or a.value[0] <= now:  # ranked: nothing is worth more
                continue
            freed_w = a.power[j] if j >= 0 else 0.0
            freed = a.gpus[j] if j >= 0 and a.acc[j] == a.acc[0] else 0.0
            if a.power[0] - freed_w <= spare_w and a.gpus[0] <= left[a.acc[0]] + freed:
                k = 0  # the most valuable fits: no vector pass
            else:
                # only candidates before the current one can be worth more, and none of them fits where even the
                # one of least draw among them does not
                upto = int(np.count_nonzero(a.value > now))
                if a.least_w[upto - 1] - freed_w > spare_w:
                    continue
                room = left[a.acc[:upto]].copy()
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


def _prices(flat: Flat, n: int) -> list[float]:
    """The power prices the passes run at: 0, and `n` spaced evenly in log from the lowest a choice turns on (a
    service leaving its most valuable candidate for one of less draw) to the highest (a trade between two
    candidates of a service, or serving it at all against shedding it: what starves a lower priority when a
    higher one overspends). Shed penalties put the highest many decades above the lowest, where token speed
    trades against watts: a range that stopped 4 decades below the highest never priced a higher priority's
    speed low enough to leave the watts to a lower one's service."""
    if not flat.who.size:
        return [0.0]  # no candidate: every price picks nothing
    starts = flat.first[np.bincount(flat.who, minlength=flat.first.size) > 0]  # services with candidates

    def ptp(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.maximum.reduceat(x, starts) - np.minimum.reduceat(x, starts)
        return out

    several = np.diff(np.append(starts, flat.who.size)) > 1
    spread = (ptp(flat.value) / np.maximum(ptp(flat.power), 1e-9))[several]
    serve = (flat.value - flat.shed[flat.who]) / np.maximum(flat.power, 1.0)
    top = max(float(spread.max(initial=-np.inf)), float(serve.max())) or 1.0
    head = flat.first[flat.who]  # ranked: each service's first candidate is its most valuable
    leaner = flat.power < flat.power[head]
    gains = (flat.value[head] - flat.value)[leaner] / (flat.power[head] - flat.power)[leaner]
    low = float(np.min(gains, initial=top * 1e-4, where=gains > 0.0))
    return [0.0, *np.geomspace(low, top, n).tolist()]


def _best_each(flat: Flat, price: float) -> list[int]:
    """Each service's most valuable candidate under `price` (the first of equals, as argmax takes it), by its
    index in the service's own ranking; -1 for a service without candidates."""
    score = flat.value - price * flat.power
    sizes = np.diff(np.append(flat.first, flat.who.size))
    top = np.full(sizes.size, -np.inf)
    top[sizes > 0] = np.maximum.reduceat(score, flat.first[sizes > 0]) if flat.who.size else []
    hit = np.flatnonzero(score == top[flat.who])
    service, at = np.unique(flat.who[hit], return_index=True)
    out = np.full(sizes.size, -1)
    out[service] = hit[at] - flat.first[service]
    return list(out.tolist())


def _room(arrays: list[Ranked], picks: list[int], count: np.ndarray, budget: float) -> tuple[float, np.ndarray]:
    """Watts and GPUs per accelerator that `picks` leave free."""
    spare_w = budget + 1e-6 - sum(arrays[i].power[j] for i, j in enumerate(picks) if j >= 0)
    left = count.copy()
    for i, j in enumerate(picks):
        if j >= 0:
            left[arrays[i].acc[j]] -= arrays[i].gpus[j]
    return spare_w, left


@dataclass(frozen=True)
class _Columns:
    """Every service's candidates as columns end to end, in the order given, and each service's ranking (most
    valuable first, ties in order): read once, where a fleet holds a hundred thousand candidates."""

    first: np.ndarray
    """Each service's first row, and past the last one its end."""
    rank: list[np.ndarray]
    value: np.ndarray
    power: np.ndarray
    gpus: np.ndarray
    acc: np.ndarray
    spare: np.ndarray
    shape: np.ndarray
    """(replicas, max batch, cap, clock or 0 where free) per row, ranked within each service."""

    @classmethod
    def of(cls, problem: Problem, cands: list[list[Candidate]], held: list[tuple[str, int]]) -> _Columns:
        """`gpus` is each candidate's GPUs past those its service holds shed on the same accelerator (`held`), 0
        where it needs no more."""
        acc_index = {a.name: k for k, a in enumerate(problem.accelerators)}
        rows = [c for cs in cands for c in cs]
        first = np.cumsum([0] + [len(cs) for cs in cands])
        if not rows:
            none = np.zeros(0)
            return cls(first, [none.astype(np.intp)] * len(cands), none, none, none, none.astype(int), none,
                       np.zeros((0, 4)))
        n = len(rows)

        def column(name: str) -> np.ndarray:
            """One field of every row: no tuple per row, so the collector stays idle."""
            return np.fromiter(map(itemgetter(Candidate._fields.index(name)), rows), float, n)

        value = column("value")
        # each service's own, stable (ties keep their order): one short sort each costs less than a lexsort of all
        rank = [np.argsort(-value[a:b], kind="stable") for a, b in pairwise(first.tolist())]
        order = np.concatenate([r + a for r, a in zip(rank, first[:-1].tolist(), strict=True)])
        # assignments are shared between candidates (candidates.py builds them once each): read each one once
        each = np.fromiter(map(id, map(itemgetter(Candidate._fields.index("assignment")), rows)), np.int64, n)
        ids, at, inverse = np.unique(each, return_index=True, return_inverse=True)
        one = np.array([(a.replicas, a.max_batch, a.power_cap_w, a.sm_clock_fraction or 0.0,
                         acc_index[a.accelerator]) for a in (rows[k].assignment for k in at.tolist())], dtype=float)
        shape = one.reshape(ids.size, 5)[inverse][order]
        sizes = np.diff(first)
        mine = one.reshape(ids.size, 5)[inverse][:, 4] == np.repeat([acc_index.get(a, -1) for a, _ in held], sizes)
        gpus = np.maximum(column("gpus") - np.where(mine, np.repeat([n for _, n in held], sizes), 0), 0)[order]
        power, spare = (column(f)[order] for f in ("power_w", "spare"))
        return cls(first, rank, value[order], power, gpus, shape[:, 4].astype(int), spare, shape[:, :4])

    def span(self, i: int) -> slice:
        return slice(int(self.first[i]), int(self.first[i + 1]))

    def ranked(self, i: int) -> Ranked:
        s = self.span(i)
        return Ranked(self.value[s], self.power[s], self.gpus[s], self.acc[s])

    def one_more(self, i: int, j: int) -> int | None:
        """Service i's candidate (by its rank) on the same accelerator and shape as its j-th with one replica more
        (the last of equals), or None."""
        s = self.span(i)
        shape, acc = self.shape[s], self.acc[s]
        want = shape[j] + (1.0, 0.0, 0.0, 0.0)
        hit = np.flatnonzero((shape == want).all(axis=1) & (acc == acc[j]))
        return int(hit[-1]) if hit.size else None
