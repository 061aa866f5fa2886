"""The MILP builder over scipy's HiGHS (controller/lp.py): what its options reach."""

from __future__ import annotations

import subprocess
import sys

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


def test_scipys_note_on_the_passed_option_is_filtered_once_for_the_process() -> None:
    """scipy warns that it passes mip_abs_gap through; lp.py filters that one warning at its import, where a
    catch_warnings around each solve swapped the whole process's filters while the fast loop's thread ran. Run where
    every warning is an error, as a process of its own (pytest keeps its own filters per test)."""
    code = ("from controller.lp import Lp\nlp = Lp()\nx = lp.var('x', ub=1.0, integer=True, cost=-1.0)\n"
            "lp.row([(x, 1.0)], -1e9, 1.0)\nassert lp.solve(abs_gap=0.1).ok\n"
            "import warnings\nwarnings.warn('another', RuntimeWarning)\n")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.strip().endswith("RuntimeWarning: another"), done.stderr
