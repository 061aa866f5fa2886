"""Workload allocation (seed 001): route query types to (model, tier) deployments at least total cost.

The deployment size is bilinear: GPUs y = TP degree x replicas r. With TP picked by binaries w_n
(sum_n w_n = q), the products v_n = w_n r are exact under v_n <= R w_n and sum_n v_n = r (only the chosen
degree's v_n can be non-zero), so y = sum_n n v_n is linear. docs/plan.md has the formulation and where it
departs from the seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

from controller.lp import Lp, LpResult
from controller.planner.allocation_robust import Slot, budget, worst_case_terms, worst_deviation
from controller.planner.allocation_spec import AllocationSpec, QueryType

Tier = tuple[str, str]  # (gpu, precision)
Route = tuple[str, str, Tier]  # query, model, tier
DeviationName = Literal["delay_deviation", "error_deviation"]


@dataclass(frozen=True)
class Allocation:
    ok: bool
    """A plan was found (with everything dropped, at worst)."""
    shares: dict[Route, float]
    """Share of each query type's demand routed to (model, tier)."""
    deployments: dict[tuple[str, tuple[str, str]], tuple[int, int]]
    """(model, tier) -> (TP degree, replicas)."""
    unmet: dict[str, float]
    """Share of each query type's demand dropped."""
    costs: dict[str, float]
    """Cost per period by term: rental, storage, delay_penalty, unmet_penalty, total."""
    solve_s: float
    """Solver wall time."""
    message: str
    """HiGHS's status."""
    optimal: bool = False
    """Proven optimal within the gap (not stopped at the time limit with an incumbent)."""
    mip_gap: float = float("nan")
    """HiGHS's relative gap between this plan and the best bound."""
    budgets: dict[str, float] = field(default_factory=dict)
    """Per query type, how many of its routes may deviate at once under the routes chosen (Gamma(z))."""
    worst_case: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per served query type, its mean delay and error rate, nominal and at the worst case of its budget:
    delay_s, worst_delay_s, error, worst_error."""
    infeasible: bool = False
    """No plan exists (not merely none found within the time limit)."""


class AllocationModel:
    """The MILP of one spec; `solve(force_served=...)` and `solve(without=...)` back the explanations."""

    def __init__(self, spec: AllocationSpec) -> None:
        self.spec = s = spec
        self.lp = lp = Lp()
        self.tiers = s.tiers()
        R, period = s.max_replicas, s.rental_period_h
        self.terms: dict[str, list[tuple[int, float]]] = {
            t: [] for t in ("rental", "storage", "delay_penalty", "unmet_penalty")}
        """Cost term -> (column, cost per unit): the objective, and its breakdown in the output."""
        for i, qt in s.queries.items():
            u = lp.var(("u", i), ub=1.0)
            self.terms["unmet_penalty"].append((u, qt.unmet_penalty * qt.arrival_rate_qph * period))
        for j in s.models:
            for k in self.tiers:
                g = s.gpus[k[0]]
                weights = self.weights_gb(j, k)
                q = lp.var(("q", j, k), ub=1.0, integer=True)
                r = lp.var(("r", j, k), ub=R, integer=True)
                y = lp.var(("y", j, k), ub=R * 8, integer=True)
                replicas = self.replicas(j, k)
                tps = list(replicas)
                for n, most in replicas.items():
                    w = lp.var(("w", n, j, k), ub=1.0, integer=True)
                    v = lp.var(("v", n, j, k), ub=most, integer=True)
                    lp.row([(v, 1.0), (w, -most)], -float("inf"), 0.0, "link")
                lp.row([(lp.index[("w", n, j, k)], 1.0) for n in tps] + [(q, -1.0)], 0.0, 0.0, "link")
                lp.row([(lp.index[("v", n, j, k)], 1.0) for n in tps] + [(r, -1.0)], 0.0, 0.0, "link")
                lp.row([(lp.index[("v", n, j, k)], float(n)) for n in tps] + [(y, -1.0)], 0.0, 0.0, "link")
                lp.row([(r, 1.0), (q, -1.0)], 0.0, float("inf"), "link")
                lp.row([(r, 1.0), (q, -R)], -float("inf"), 0.0, "link")
                self.terms["rental"].append((y, period * g.rental_per_h))
                self.terms["storage"].append((q, period * s.storage_rate * weights))
                for i in s.queries:
                    x = lp.var(("x", i, j, k), ub=1.0)
                    z = lp.var(("z", i, j, k), ub=1.0, integer=True)
                    lp.row([(x, 1.0), (z, -1.0)], -float("inf"), 0.0, "link")
                    lp.row([(z, 1.0), (q, -1.0)], -float("inf"), 0.0, "link")
        for i, qt in s.queries.items():
            routes = [(j, k) for j in s.models for k in self.tiers]
            xs = [lp.index[("x", i, j, k)] for j, k in routes]
            lp.row([(x, 1.0) for x in xs] + [(lp.index[("u", i)], 1.0)], 1.0, 1.0, "demand")
            queries = qt.arrival_rate_qph * period
            for (j, k), x in zip(routes, xs, strict=True):
                self.terms["storage"].append((x, self.token_storage_cost(i)))
                self.terms["delay_penalty"].append((x, qt.delay_penalty * queries * self.delay_s(i, j, k)))
            delay = self._robust_row(i, routes, self.delay_s, "delay_deviation", qt.delay_threshold_s, "delay")
            self.terms["delay_penalty"] += [(col, qt.delay_penalty * queries * c) for col, c in delay]
            self._robust_row(i, routes, self.error, "error_deviation", qt.error_threshold, "error")
            for j in s.models:
                lp.row([(lp.index[("z", i, j, k)], 1.0) for k in self.tiers], 0.0, 1.0, "single")
            for k in self.tiers:
                lp.row([(lp.index[("z", i, j, k)], 1.0) for j in s.models], 0.0, 1.0, "single")
        self._capacity_rows()
        lp.row(self.terms["rental"] + self.terms["storage"], -float("inf"), s.budget, "budget")
        for term in self.terms.values():
            for col, c in term:
                lp.add_cost(col, c)

    @cached_property
    def _total_work(self) -> float:
        """The whole demand's work, what every (model, tier)'s replica bound starts from."""
        return sum(self._work(qt) for qt in self.spec.queries.values())

    def replicas(self, j: str, k: tuple[str, str]) -> dict[int, int]:
        """TP degrees worth offering (j, k), each with the most replicas an optimal plan runs at it.

        One replica more than the whole demand's compute and KV cache need only adds rental, so no optimum runs
        more. A degree n is dropped where n / m replicas of a smaller degree m do the same on the same cards:
        at least its throughput (speedup_m / m >= speedup_n / n), the KV cache of all that may be routed here beside
        the extra weights (n (mem - W / m) >= all of it), within max_replicas. Both keep every optimal cost."""
        s, g = self.spec, self.spec.gpus[k[0]]
        usable, weights = s.mem_util * g.memory_gb, self.weights_gb(j, k)
        per_card = 1000 * g.compute_tflops * s.compute_efficiency * s.precisions[k[1]].compute_factor
        work = self._total_work
        kv = sum(self.kv_gb(i, j, k) for i in s.queries)
        most = {}
        for n in (n for n in sorted(g.tp_degrees) if weights <= usable * n):
            free = n * usable - weights
            most_n = s.max_replicas + 1.0  # a ratio past it overflowed ceil (compute figures of 1e-308)
            rate = per_card * s.tp_speedup[str(n)]  # two tiny figures multiply to 0
            need = max(1, math.ceil(min(work / rate, most_n)) if rate > 0 else s.max_replicas + 1,
                       math.ceil(min(kv / free, most_n)) if free > 0 else s.max_replicas)
            most[n] = min(s.max_replicas, need)
        speed = {n: s.tp_speedup[str(n)] / n for n in most}
        return {n: r for n, r in most.items() if not any(
            speed[m] >= speed[n] and r * n // m <= s.max_replicas and kv <= n * (usable - weights / m)
            for m in most if m < n)}

    def weights_gb(self, j: str, k: tuple[str, str]) -> float:
        """Model j's weights at tier k's precision."""
        return self.spec.models[j].weights_gb * self.spec.precisions[k[1]].weight_factor

    @staticmethod
    def _work(qt: QueryType) -> float:
        """GFLOP/s a query type's whole demand needs."""
        return qt.compute_gflop_per_token * qt.tokens * qt.arrival_rate_qph / 3600

    def kv_gb(self, i: str, j: str, k: tuple[str, str]) -> float:
        """KV cache (GB) a query type's whole demand holds on (j, k): concurrency (Little) x tokens x GB/token."""
        qt, s = self.spec.queries[i], self.spec
        return (s.models[j].kv_gb_per_token * s.precisions[k[1]].weight_factor * qt.tokens
                * qt.arrival_rate_qph / 3600 * self.delay_s(i, j, k))

    def delay_s(self, i: str, j: str, k: tuple[str, str]) -> float:
        s, qt = self.spec, self.spec.queries[i]
        return (qt.delay_s_per_token * qt.tokens * s.models[j].delay_factor
                * s.gpus[k[0]].delay_factor * s.precisions[k[1]].delay_factor)

    def error(self, i: str, j: str, k: tuple[str, str]) -> float:
        s = self.spec
        return s.queries[i].error_rate * s.models[j].error_factor * s.precisions[k[1]].error_factor

    def token_storage_cost(self, i: str) -> float:
        """$ per period for the tokens of query type i's whole demand, served (x = 1): billed for the whole
        period (the seed's reading) or for their retention (docs/plan.md, "Token storage")."""
        s, qt = self.spec, self.spec.queries[i]
        hours = s.rental_period_h if s.token_storage == "whole_period" else s.retention_h
        return s.storage_rate * hours * qt.token_size_gb * qt.tokens * qt.arrival_rate_qph * s.rental_period_h

    def token_storage_gb(self, i: str) -> float:
        """GB query type i's tokens hold on storage_capacity_gb at once, served whole (0 when stored apart)."""
        s, qt = self.spec, self.spec.queries[i]
        if s.token_storage == "whole_period":
            return 0.0
        return qt.token_size_gb * qt.tokens * qt.arrival_rate_qph * s.retention_h

    def _robust_row(self, i: str, routes: list[tuple[str, tuple[str, str]]], figure: Callable[[str, str, Tier],
                    float], deviation: DeviationName, limit: float, name: str) -> list[tuple[int, float]]:
        """sum_r (a_r - limit) x_r + worst case <= 0 (mean over served queries, at its worst); returns the worst
        case's terms (allocation_robust), which the delay penalty charges too."""
        lp, robust = self.lp, self.spec.robust
        slots = [Slot([(lp.index[("x", i, j, k)], getattr(self.spec.deviation(k), deviation) * figure(i, j, k))
                       for k in self.tiers], [lp.index[("z", i, j, k)] for k in self.tiers]) for j in self.spec.models]
        worst = worst_case_terms(lp, f"{name}:{i}", slots, robust.gamma, robust.protection)
        lp.row([(lp.index[("x", i, j, k)], figure(i, j, k) - limit) for j, k in routes] + worst,
               -float("inf"), 0.0, f"{name}:{i}")
        return worst

    def _capacity_rows(self) -> None:
        s, lp = self.spec, self.lp
        for j in s.models:
            for k in self.tiers:
                g, p = s.gpus[k[0]], s.precisions[k[1]]
                kv = [(lp.index[("x", i, j, k)], self.kv_gb(i, j, k)) for i in s.queries]
                kv += [(lp.index[("r", j, k)], self.weights_gb(j, k)),
                       (lp.index[("y", j, k)], -s.mem_util * g.memory_gb)]
                lp.row(kv, -float("inf"), 0.0, "memory")
                work = [(lp.index[("x", i, j, k)], self._work(qt)) for i, qt in s.queries.items()]
                per_card = 1000 * g.compute_tflops * s.compute_efficiency * p.compute_factor
                lp.row(work + [(lp.index[("v", n, j, k)], -per_card * s.tp_speedup[str(n)])
                               for n in g.tp_degrees if ("v", n, j, k) in lp.index], -float("inf"), 0.0, "compute")
        tokens = [(lp.index[("x", i, j, k)], self.token_storage_gb(i)) for i in s.queries for j in s.models
                  for k in self.tiers]
        lp.row([(lp.index[("q", j, k)], self.weights_gb(j, k)) for j in s.models for k in self.tiers] + tokens,
               -float("inf"), s.storage_capacity_gb, "storage")
        for gname, g in s.gpus.items():
            lp.row([(lp.index[("y", j, k)], 1.0) for j in s.models for k in self.tiers if k[0] == gname],
                   -float("inf"), float(g.available), "inventory")

    def solve(self, force_served: str | None = None, without: frozenset[str] = frozenset(),
              time_limit_s: float | None = None) -> Allocation:
        """The optimum (`force_served`: that query type's unmet share held at 0; `without`: constraint groups left
        out), within `time_limit_s` (None: the spec's)."""
        t0 = time.perf_counter()
        fix = {self.lp.index[("u", force_served)]: 0.0} if force_served else None
        res = self.lp.solve(without=without, fix=fix, presolve=False,
                            time_limit_s=self.spec.time_limit_s if time_limit_s is None else time_limit_s)
        return self._read(res, time.perf_counter() - t0)

    def solve_priced(self, query: str, penalty: float, time_limit_s: float) -> Allocation:
        """The optimum with `query`'s unmet penalty at `penalty` $/query (its costs' total at that price): where
        the explanation's threshold is searched."""
        cost = np.array(self.lp.cost)
        qt = self.spec.queries[query]
        cost[self.lp.index[("u", query)]] = penalty * qt.arrival_rate_qph * self.spec.rental_period_h
        t0 = time.perf_counter()
        res = self.lp.solve(presolve=False, time_limit_s=time_limit_s, cost=cost)
        return self._read(res, time.perf_counter() - t0)

    def least_budget(self, query: str, time_limit_s: float) -> LpResult:
        """The least the budget row (rental and storage) can be with `query` served whole, the other types served or
        not as that takes: the budget it needs (the optimum without the budget serves the others too, and cost more)."""
        cost = np.zeros(len(self.lp.cost))
        for col, c in self.terms["rental"] + self.terms["storage"]:
            cost[col] += c
        return self.lp.solve(without=frozenset({"budget"}), fix={self.lp.index[("u", query)]: 0.0}, presolve=False,
                             time_limit_s=time_limit_s, cost=cost)

    def _read(self, res: LpResult, solve_s: float) -> Allocation:
        if not res.ok:
            return Allocation(False, {}, {}, {}, {}, solve_s, res.message, infeasible=res.infeasible)
        s, lp, x = self.spec, self.lp, res.x
        shares = {(i, j, k): lp.value(x, ("x", i, j, k)) for i in s.queries for j in s.models for k in self.tiers}
        deployments = {}
        for j in s.models:
            for k in self.tiers:
                for n in s.gpus[k[0]].tp_degrees:
                    if lp.value(x, ("w", n, j, k)) > 0.5:
                        deployments[(j, k)] = (n, round(lp.value(x, ("r", j, k))))
        # every term is a non-negative price times a non-negative column: a solver's -1e-12 read "-0.00 $"
        costs = {name: max(0.0, float(sum(c * x[col] for col, c in entries))) for name, entries in self.terms.items()}
        costs["total"] = res.objective
        chosen = {i: sum(lp.value(x, ("z", i, j, k)) > 0.5 for j in s.models for k in self.tiers) for i in s.queries}
        budgets = {i: budget(s.robust.gamma, s.robust.protection, n) for i, n in chosen.items()}
        used = {r: v for r, v in shares.items() if v > 1e-6}
        # a type without demand drops nothing whatever its free column says, and a solver's -0.0 is 0
        unmet = {i: 0.0 if q.arrival_rate_qph <= 0 else max(0.0, lp.value(x, ("u", i))) for i, q in s.queries.items()}
        return Allocation(True, used, deployments, unmet, costs, solve_s,
                          res.message, res.optimal, res.gap, budgets, self._worst_case(used, budgets))

    def _worst_case(self, shares: dict[Route, float], budgets: dict[str, float]) -> dict[str, dict[str, float]]:
        """Each served type's mean delay and error, nominal and at the worst deviations its budget allows."""
        out = {}
        for i in self.spec.queries:
            routes = [(j, k, v) for (qi, j, k), v in shares.items() if qi == i]
            served = sum(v for _, _, v in routes)
            if served <= 1e-6:
                continue
            figures = {}
            for name, figure, dev in (("delay_s", self.delay_s, "delay_deviation"), ("error", self.error,
                                                                                    "error_deviation")):
                nominal = sum(figure(i, j, k) * v for j, k, v in routes)
                extra = worst_deviation([getattr(self.spec.deviation(k), dev) * figure(i, j, k) * v
                                         for j, k, v in routes], budgets[i])
                figures[name], figures[f"worst_{name}"] = nominal / served, (nominal + extra) / served
            out[i] = figures
        return out
