"""The MILP builder over scipy's HiGHS (controller/lp.py): what its options reach."""

from __future__ import annotations

import numpy as np

from controller.lp import Lp


def _knapsack(n: int = 30) -> Lp:
    """A knapsack whose items are worth about their weight: many plans near the best, so HiGHS has to search."""
    rng = np.random.default_rng(1)
    weight = rng.integers(10, 100, n)
    worth = weight + rng.integers(-5, 6, n)
    lp = Lp()
    xs = [lp.var(i, ub=1.0, integer=True, cost=-float(worth[i])) for i in range(n)]
    lp.row(((x, float(weight[i])) for i, x in enumerate(xs)), -np.inf, float(weight.sum() // 2) + 0.5, "capacity")
    return lp


def test_an_absolute_gap_reaches_highs() -> None:
    """The optimizer's MILP stops within mip_gap x the plan's score, an absolute gap: scipy's milp lists no such
    option and hands it to HiGHS as it is. Were it dropped, a gap of any size would solve to the optimum."""
    exact = _knapsack().solve(mip_gap=0.0)
    loose = _knapsack().solve(mip_gap=0.0, abs_gap=1e9)
    assert exact.optimal and exact.gap == 0.0
    assert loose.optimal and loose.gap > 0.0 and loose.objective > exact.objective  # stopped short, as asked
