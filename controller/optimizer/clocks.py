"""The SM clock as a decision beside the cap: the (cap, clock) pairs a candidate may run at.

A clock level is a share of the GPU's maximum SM clock; 1.0 leaves the clock unlocked (None in an
assignment). Each power level is paired with each clock level, so greedy and the MILP choose both through
the candidates they already take; with the default single level (1.0) the candidates are the caps-only ones.
"""

from __future__ import annotations

from collections.abc import Iterator

from controller.optimizer.problem import AcceleratorType, Problem


def clock_of(level: float) -> float | None:
    """A clock level as an assignment holds it: None for the maximum (unlocked)."""
    return None if level >= 1.0 else level


def shape_choices(problem: Problem, acc: AcceleratorType) -> Iterator[tuple[float, float | None]]:
    """(cap in W, clock share or None) for every power level and clock level, caps held at the GPU's floor."""
    for power in problem.power_levels:
        cap = max(acc.profile.min_power_w, power * acc.profile.max_power_w)
        for level in sorted(set(problem.clock_levels), reverse=True):
            yield cap, clock_of(level)
