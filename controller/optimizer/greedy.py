"""The greedy solver: priority and regret order under power prices, then upgrades, spares and exchanges.

Fast at fleet scale (vector operations per service), and checked against the MILP and the exhaustive oracle
(tests/test_optimizer.py, benchmarks/optimizer_scale.py).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace

import numpy as np

from controller.optimizer.problem import Candidate, Choice, Problem

EXCHANGE_ROUNDS = 16
"""Exchanges made at most, each the best found: enough for the few trades a plan needs."""
EXCHANGE_TAKERS = 16
"""Takers tried per round, the most valuable moves first."""


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
        best_v = sum(shed)
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
        self._exchange(arrays, best, shed, count, problem.budget_w - problem.idle_w)
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
    def _exchange(arrays: list[_Ranked], picks: list[int], shed: list[float], count: np.ndarray,
                  budget: float) -> None:
        """After the power row's trades, any pairwise exchange: one service (the taker, or a shed one) moves to a
        candidate worth more, and another (the donor) to one that frees what that needs, watts or GPUs of any
        accelerator, when the gain beats the loss; or the donor is shed where that is worth it. The passes hand
        out GPUs in priority order, so an early service may hold one more than it needs while a later one finds
        none: this is the trade that frees it. Each round tries the best takers against every donor candidate
        at once, as vector operations over all candidates."""
        if not any(a.value.size for a in arrays):
            return
        who = np.concatenate([np.full(a.value.size, i) for i, a in enumerate(arrays)])
        first = np.cumsum([0] + [a.value.size for a in arrays])[:-1]
        power, value, gpus, acc = (np.concatenate([getattr(a, f) for a in arrays])
                                   for f in ("power", "value", "gpus", "acc"))
        shed_value = np.asarray(shed, dtype=float)
        for _ in range(EXCHANGE_ROUNDS):
            chosen = np.array(picks) >= 0
            # Flat index of each service's pick; clamped, and masked by `chosen`, for a service without one.
            at_pick = np.minimum(first + np.maximum(picks, 0), who.size - 1)
            p_pick, g_pick = np.where(chosen, power[at_pick], 0.0), np.where(chosen, gpus[at_pick], 0.0)
            a_pick = acc[at_pick]
            spare = budget + 1e-6 - float(p_pick.sum())
            left = count - np.bincount(a_pick[chosen], weights=g_pick[chosen], minlength=count.size)
            dv = value - np.where(chosen, value[at_pick], shed_value)[who]  # each move's gain alone
            dp = power - p_pick[who]
            # What a donor's own GPUs give back on each accelerator it might move to.
            back = np.where(chosen[who] & (a_pick[who] == acc), g_pick[who], 0.0)
            takers = np.flatnonzero(dv > 1e-12)
            move: tuple[float, int, int | None] | None = None
            for t in takers[np.argsort(-dv[takers], kind="stable")][:EXCHANGE_TAKERS]:
                i = int(who[t])
                room = left.copy()
                if chosen[i]:
                    room[a_pick[i]] += g_pick[i]
                room[acc[t]] -= gpus[t]
                need_w = float(dp[t]) - spare  # watts a donor must free (negative: it may take some)
                if need_w <= 0 and room[acc[t]] >= 0:
                    if move is None or dv[t] > move[0]:
                        move = (float(dv[t]), int(t), None)
                    continue
                ok = chosen[who] & (who != i) & (-dp >= need_w) & (room[acc] + back - gpus >= 0)
                if room[acc[t]] < 0:  # the donor must also give back GPUs of the taker's accelerator
                    own = np.where(a_pick[who] == acc[t], g_pick[who], 0.0)
                    ok &= room[acc[t]] + own - np.where(acc == acc[t], gpus, 0.0) >= 0
                donors = np.flatnonzero(ok)
                if donors.size:
                    d = int(donors[np.argmax(dv[donors])])
                    gain = float(dv[t] + dv[d])
                    if gain > 1e-9 and (move is None or gain > move[0]):
                        move = (gain, int(t), d)
                # Or a donor is shed: all it holds is freed, at its shed value.
                frees = chosen & (np.arange(chosen.size) != i) & (p_pick >= need_w)
                frees &= room[acc[t]] + np.where(a_pick == acc[t], g_pick, 0.0) >= 0
                if frees.any():
                    loss = np.where(frees, value[at_pick] - shed_value, np.inf)
                    j = int(np.argmin(loss))
                    gain = float(dv[t] - loss[j])
                    if gain > 1e-9 and (move is None or gain > move[0]):
                        move = (gain, int(t), -1 - j)
            if move is None:
                return
            _, taker, donor = move
            picks[int(who[taker])] = int(taker - first[who[taker]])
            if donor is not None and donor >= 0:
                picks[int(who[donor])] = int(donor - first[who[donor]])
            elif donor is not None:  # -1 - j: service j is shed
                picks[-1 - donor] = -1

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
