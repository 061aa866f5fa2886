"""What a candidate is worth to the solvers: its score under the objective, less the price of the watts it adds
(`energy_weight`), the priority-weighted penalty for the load it leaves unserved (or serves at risk on a type
never measured), and the transition penalty for what it changes; and what shedding a service entirely is worth."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import accumulate, chain, pairwise
from operator import attrgetter
from typing import TypeVar

import numpy as np

from controller.optimizer.problem import Assignment, Candidate, Problem, make_candidate

T = TypeVar("T")

_FIELD = {name: k for k, name in enumerate(Candidate._fields)}
"""A Candidate field's position: `valued` reads and writes them as columns."""
GRAIN = 0.005
"""Share of a service's load whose shortfall outweighs every service's score (`shed_weights`)."""
UNTRIED_RISK = 0.25
"""Share of what a service at risk (`ServiceDemand.untried_at_risk`: left short where its untried types must meet
its targets with the untried margin to spare) would serve on an untried type, planned at its own margin, that is
valued as unserved: it moves there for more than this share of its load that the types it was measured on
cannot serve, and never for a lower priority's room."""
MAX_SHED_WEIGHT = 1e100
"""Ceiling of a priority's weight: each level's is some 200 times the one below, so past some 40 levels the
highest share this one (their order among themselves is lost) and no value overflows to inf."""


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic collector held off while a fleet's plan is made (candidates built, valued and chosen, in
    `solve` the whole of it): they hold no cycles, and its passes over the heap as it grows cost a third of a
    1,000-service cycle. The pause is the whole process's, the daemon's other threads included, for as long as the
    plan takes."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()



def shed_weights(problem: Problem, scale: float) -> dict[int, float]:
    """Penalty per unit of unserved share, by priority: a shortfall of more than GRAIN (0.5 %) of a service's
    load outweighs every service's score (n x scale) and every service of lower priority shed entirely.
    Plans trade load a replica at a time, often a few % of a service, so the whole load is served wherever
    it can be, and a lower priority gives way first, at that grain and not only for whole services."""
    weights: dict[int, float] = {}
    below = 0.0
    scores = len(problem.services) * scale
    per_level = Counter(s.priority for s in problem.services)
    for level in sorted(per_level, reverse=True):
        weights[level] = min((scores + below) / GRAIN, MAX_SHED_WEIGHT)
        below += weights[level] * per_level[level]
    return weights


def _changes(current: Assignment | None, a: Assignment) -> int:
    """What moving from `current` to `a` costs, in transition penalties: a scale counts once, a rolling restart
    (new max batch) or a move to another accelerator twice. A cap costs nothing to move (the governor moves
    limits every second), so it counts for nothing: were it counted, a cap read back a few watts off every
    level would charge every candidate alike and leave no hysteresis at all. A locked clock moves as freely."""
    if current is None:
        return 0
    return ((a.replicas != current.replicas) + 2 * (a.max_batch != current.max_batch)
            + 2 * (a.accelerator != current.accelerator))


def energy_price(problem: Problem, candidates: list[list[Candidate]]) -> float:
    """Token speed a watt of draw costs: `energy_weight` x the fastest plan's speed per watt of the site's draw
    (each service's fastest candidate, idle GPUs included). At weight 1 this is one step of Dinkelbach's method
    from that plan towards the most token speed per watt: a 1 % cut in the site's draw is worth 1 % of speed."""
    if problem.objective != "token_speed" or problem.energy_weight <= 0:
        return 0.0
    fastest = [max(cs, key=attrgetter("score")) for cs in candidates if cs]
    draw_w = problem.idle_w + sum(c.power_w for c in fastest)
    return problem.energy_weight * sum(c.score for c in fastest) / max(draw_w, 1.0)


@collector_paused()
def valued(problem: Problem, candidates: list[list[Candidate]]) -> tuple[list[list[Candidate]], list[float]]:
    """Attach each candidate's value; returns them with each service's value when shed entirely. Worked out as
    columns of every service's candidates at once (a fleet's cycle values hundreds of thousands)."""
    fields = list(zip(*chain.from_iterable(candidates), strict=True)) or [()] * len(Candidate._fields)
    score, power_w, short_rps, served_rps = (np.array(fields[_FIELD[f]], dtype=float)
                                             for f in ("score", "power_w", "short_rps", "served_rps"))
    scale = float(np.max(np.abs(score), initial=0.0, where=~np.isnan(score))) or 1.0  # as max() skips a NaN
    price = energy_price(problem, candidates)
    weights = shed_weights(problem, scale)
    sizes = [len(cs) for cs in candidates]
    w = np.repeat([weights[s.priority] for s in problem.services], sizes)
    share = np.repeat([1.0 / s.load.rate_rps if s.load.rate_rps > 0 else 0.0 for s in problem.services], sizes)
    assignments = list(zip(problem.services, _split(list(fields[_FIELD["assignment"]]), sizes), strict=True))
    value = score - price * power_w - w * short_rps * share
    if any(s.untried_at_risk for s in problem.services):
        untried = np.fromiter(chain.from_iterable((s.untried_at_risk and a.accelerator in s.untried for a in each)
                                                  for s, each in assignments), dtype=float, count=len(score))
        value -= w * UNTRIED_RISK * untried * served_rps * share
    if any(s.current is not None for s in problem.services):
        changes = np.fromiter(chain.from_iterable((_changes(s.current, a) for a in each) for s, each in assignments),
                              dtype=float, count=len(score))
        value -= problem.transition_penalty * np.maximum(np.abs(score), 1e-3 * scale) * changes
    fields[_FIELD["value"]] = value.tolist()
    made = list(map(make_candidate, zip(*fields, strict=True)))
    shed = [-weights[s.priority] if s.load.rate_rps > 0 else -weights[s.priority] * 1e-3  # below min_replicas
            for s in problem.services]
    # shedding a running service is a transition like a scale (to none), charged at its best candidate's score:
    # uncharged, two services a budget fits one of swapped which ran every cycle where they tied
    for i, (svc, (a, b)) in enumerate(zip(problem.services, pairwise(accumulate([0, *sizes])), strict=True)):
        if svc.current is not None and b > a:
            shed[i] -= problem.transition_penalty * max(float(np.abs(score[a:b]).max()), 1e-3 * scale)
    return _split(made, sizes), shed


def _split(items: list[T], sizes: list[int]) -> list[list[T]]:
    """`items` cut into consecutive lists of `sizes`."""
    return [items[a:b] for a, b in pairwise([0, *accumulate(sizes)])]
