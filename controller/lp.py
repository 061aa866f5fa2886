"""A small sparse MILP builder over scipy's HiGHS: named variables, rows tagged by constraint group.

Shared by the online optimizer's assignment MILP and the offline planner. Groups let a caller drop one
family of rows and solve again, which is how the planner tells which limit (budget, delay, error, ...)
keeps demand from being served.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

import numpy as np

# scipy passes an option its milp does not list (mip_abs_gap) to HiGHS verbatim, and warns that it does: that one
# warning is filtered once here, for the process, where a catch_warnings around each solve swapped the process's
# filters while other threads ran
warnings.filterwarnings("ignore", r"Unrecognized options detected: \{'mip_abs_gap'\}")


@dataclass(frozen=True)
class LpResult:
    ok: bool
    """A feasible point was found."""
    objective: float
    """Objective value (nan without a point)."""
    x: np.ndarray
    """The point (empty without one)."""
    message: str
    """HiGHS's status message."""
    optimal: bool = False
    """Solved to optimality (within the gap), not stopped at a limit with an incumbent."""
    gap: float = float("nan")
    """HiGHS's relative gap between the point and the best bound (0 proven optimal; nan without a point)."""
    infeasible: bool = False
    """Proven to have no feasible point (not merely stopped at a limit before finding one)."""
    limited: bool = False
    """Stopped at its time (or iteration) limit: without a point, none was found in time, not none exists."""


class Lp:
    def __init__(self) -> None:
        self.index: dict[Hashable, int] = {}
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.integer: list[int] = []
        self.cost: list[float] = []
        self.rows: list[tuple[list[tuple[int, float]], float, float, str]] = []

    def var(self, key: Hashable, lb: float = 0.0, ub: float = np.inf, integer: bool = False, cost: float = 0.0) -> int:
        self.index[key] = len(self.lb)
        self.lb.append(lb)
        self.ub.append(ub)
        self.integer.append(int(integer))
        self.cost.append(cost)
        return self.index[key]

    def add_cost(self, i: int, c: float) -> None:
        self.cost[i] += c

    def row(self, entries: Iterable[tuple[int, float]], lo: float, hi: float, group: str = "") -> None:
        self.rows.append(([(i, v) for i, v in entries if v != 0.0], lo, hi, group))

    def value(self, x: np.ndarray, key: Hashable) -> float:
        return float(x[self.index[key]]) if key in self.index else 0.0

    def solve(self, *, without: frozenset[str] = frozenset(), fix: dict[int, float] | None = None,
              time_limit_s: float = 10.0, mip_gap: float = 1e-6, presolve: bool = True,
              abs_gap: float | None = None, cost: np.ndarray | None = None) -> LpResult:
        """`presolve=False` for a model whose builder has done the reductions already (HiGHS's presolve and
        the restarts it triggers then cost more than they save: docs/plan.md, "Speed"). `abs_gap`: HiGHS stops
        also once the point is within this much of the bound (an objective a large constant part dominates).
        `cost`: another objective over the same rows (None: the model's)."""
        # 0.3 s to import: not at every command's start
        from scipy.optimize import Bounds, LinearConstraint, OptimizeResult, milp
        from scipy.sparse import coo_array

        kept = [r for r in self.rows if r[3] not in without]
        r_idx = [k for k, (ents, _, _, _) in enumerate(kept) for _ in ents]
        c_idx = [i for ents, _, _, _ in kept for i, _ in ents]
        vals = [v for ents, _, _, _ in kept for _, v in ents]
        n = len(self.lb)
        a = coo_array((vals, (r_idx, c_idx)), shape=(len(kept), n)).tocsr()
        lb, ub = np.array(self.lb), np.array(self.ub)
        for i, v in (fix or {}).items():
            lb[i] = ub[i] = v
        constraints = [LinearConstraint(a, [r[1] for r in kept], [r[2] for r in kept])] if kept else []
        options: dict[str, float | bool] = {"time_limit": time_limit_s, "mip_rel_gap": mip_gap, "presolve": presolve}
        if abs_gap is not None:
            options["mip_abs_gap"] = abs_gap
        res: OptimizeResult = milp(np.array(self.cost) if cost is None else cost, constraints=constraints,
                                   bounds=Bounds(lb, ub), integrality=np.array(self.integer), options=options)
        if res.x is None:
            return LpResult(False, float("nan"), np.empty(0), str(res.message), infeasible=res.status == 2,
                            limited=res.status == 1)
        gap = getattr(res, "mip_gap", None)  # absent for a problem with no integer variable: an LP, solved exactly
        gap = 0.0 if gap is None and not any(self.integer) else float("nan") if gap is None else float(gap)
        return LpResult(True, float(res.fun), np.asarray(res.x), str(res.message), optimal=res.status == 0, gap=gap)
