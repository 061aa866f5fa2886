"""Workload allocation (seed 001): route query types to (model, tier) deployments at least total cost.

The deployment size is bilinear: GPUs y = TP degree x replicas r. With TP picked by binaries w_n
(sum_n w_n = q), the products v_n = w_n r are exact under v_n <= R w_n and sum_n v_n = r (only the chosen
degree's v_n can be non-zero), so y = sum_n n v_n is linear. docs/plan.md has the formulation and where it
departs from the seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from controller.lp import Lp, LpResult
from controller.planner.allocation_spec import AllocationSpec, QueryType

Route = tuple[str, str, tuple[str, str]]  # query, model, (gpu, precision)


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
                tps = [n for n in g.tp_degrees if weights <= s.mem_util * g.memory_gb * n]
                for n in tps:
                    w = lp.var(("w", n, j, k), ub=1.0, integer=True)
                    v = lp.var(("v", n, j, k), ub=R, integer=True)
                    lp.row([(v, 1.0), (w, -R)], -float("inf"), 0.0, "link")
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
                self.terms["storage"].append((x, period * s.storage_rate * qt.token_size_gb * qt.tokens * queries))
                self.terms["delay_penalty"].append((x, qt.delay_penalty * queries * self.delay_s(i, j, k)))
            self._robust_row([(x, self.delay_s(i, j, k), qt.delay_threshold_s) for (j, k), x in zip(routes, xs,
                             strict=True)], s.robust.delay_deviation, f"delay:{i}")
            self._robust_row([(x, self.error(i, j, k), qt.error_threshold) for (j, k), x in zip(routes, xs,
                             strict=True)], s.robust.error_deviation, f"error:{i}")
            for j in s.models:
                lp.row([(lp.index[("z", i, j, k)], 1.0) for k in self.tiers], 0.0, 1.0, "single")
            for k in self.tiers:
                lp.row([(lp.index[("z", i, j, k)], 1.0) for j in s.models], 0.0, 1.0, "single")
        self._capacity_rows()
        lp.row(self.terms["rental"] + self.terms["storage"], -float("inf"), s.budget, "budget")
        for term in self.terms.values():
            for col, c in term:
                lp.add_cost(col, c)

    def weights_gb(self, j: str, k: tuple[str, str]) -> float:
        """Model j's weights at tier k's precision."""
        return self.spec.models[j].weights_gb * self.spec.precisions[k[1]].weight_factor

    @staticmethod
    def _work(qt: QueryType) -> float:
        """GFLOP/s a query type's whole demand needs."""
        return qt.compute_gflop_per_token * qt.tokens * qt.arrival_rate_qph / 3600

    def _kv(self, i: str, j: str, k: tuple[str, str]) -> float:
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

    def _robust_row(self, routes: list[tuple[int, float, float]], deviation: float, group: str) -> None:
        """sum (a - limit) x <= 0, and with gamma > 0 its Bertsimas-Sim counterpart: + gamma pi + sum p <= 0,
        pi + p_r >= deviation a_r x_r."""
        lp, gamma = self.lp, self.spec.robust.gamma
        entries = [(x, a - limit) for x, a, limit in routes]
        if gamma > 0:
            pi = lp.var(("pi", group))
            entries.append((pi, gamma))
            for n, (x, a, _) in enumerate(routes):
                p = lp.var(("p", group, n))
                entries.append((p, 1.0))
                lp.row([(pi, 1.0), (p, 1.0), (x, -deviation * a)], 0.0, float("inf"), group)
        lp.row(entries, -float("inf"), 0.0, group)

    def _capacity_rows(self) -> None:
        s, lp = self.spec, self.lp
        for j in s.models:
            for k in self.tiers:
                g, p = s.gpus[k[0]], s.precisions[k[1]]
                kv = [(lp.index[("x", i, j, k)], self._kv(i, j, k)) for i in s.queries]
                kv += [(lp.index[("r", j, k)], self.weights_gb(j, k)),
                       (lp.index[("y", j, k)], -s.mem_util * g.memory_gb)]
                lp.row(kv, -float("inf"), 0.0, "memory")
                work = [(lp.index[("x", i, j, k)], self._work(qt)) for i, qt in s.queries.items()]
                per_card = 1000 * g.compute_tflops * s.compute_efficiency * p.compute_factor
                lp.row(work + [(lp.index[("v", n, j, k)], -per_card * s.tp_speedup[str(n)])
                               for n in g.tp_degrees if ("v", n, j, k) in lp.index], -float("inf"), 0.0, "compute")
        lp.row([(lp.index[("q", j, k)], self.weights_gb(j, k)) for j in s.models for k in self.tiers],
               -float("inf"), s.storage_capacity_gb, "storage")
        for gname, g in s.gpus.items():
            lp.row([(lp.index[("y", j, k)], 1.0) for j in s.models for k in self.tiers if k[0] == gname],
                   -float("inf"), float(g.available), "inventory")

    def solve(self, force_served: str | None = None, without: frozenset[str] = frozenset()) -> Allocation:
        t0 = time.perf_counter()
        fix = {self.lp.index[("u", force_served)]: 0.0} if force_served else None
        res = self.lp.solve(without=without, fix=fix, time_limit_s=self.spec.time_limit_s)
        return self._read(res, time.perf_counter() - t0)

    def _read(self, res: LpResult, solve_s: float) -> Allocation:
        if not res.ok:
            return Allocation(False, {}, {}, {}, {}, solve_s, res.message)
        s, lp, x = self.spec, self.lp, res.x
        shares = {(i, j, k): lp.value(x, ("x", i, j, k)) for i in s.queries for j in s.models for k in self.tiers}
        deployments = {}
        for j in s.models:
            for k in self.tiers:
                for n in s.gpus[k[0]].tp_degrees:
                    if lp.value(x, ("w", n, j, k)) > 0.5:
                        deployments[(j, k)] = (n, round(lp.value(x, ("r", j, k))))
        costs = {name: float(sum(c * x[col] for col, c in entries)) for name, entries in self.terms.items()}
        costs["total"] = res.objective
        return Allocation(True, {r: v for r, v in shares.items() if v > 1e-6}, deployments,
                          {i: lp.value(x, ("u", i)) for i in s.queries}, costs, solve_s, res.message, res.optimal,
                          res.gap)
