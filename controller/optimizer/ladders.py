"""The candidates past a service's full ones: spare replicas beyond its need (token speed's) and partial ladders
that serve part of its load on fewer replicas, so a short budget degrades a service before it drops it."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from operator import attrgetter
from typing import TYPE_CHECKING

from controller.optimizer.problem import Candidate, Problem
from controller.optimizer.sizing import Brackets

if TYPE_CHECKING:
    from controller.optimizer.candidates import Needs, Pair, Shape, Spec

MAX_PARTIAL = 6
"""Rungs of a partial ladder: replica counts spread evenly up to one short of the need, and its lowest."""
FRUGAL_RUNGS = 3
"""Rungs of each frugal ladder (`_frugal`): a fallback where the fastest shape's does not fit, not a search."""
EXTRA_REPLICAS = 2
"""Replicas beyond a shape's need offered to the token-speed objective: without them a plan could reach more
replicas only through a shape that needs more (a smaller max batch), and changed its batch to scale."""
SPARE_SHAPES = 4
"""Shapes per service and accelerator offered spare replicas besides those of the max batch in force: the
ones scoring best at their need (a spare for every shape tripled the candidates and the slow loop's cost)."""


def spares(problem: Problem, pair: Pair, full: list[Candidate]) -> list[Spec]:
    """Token speed gains from replicas beyond the need (shorter queues), cost and energy never do. They are offered
    on the shapes scoring best at their need, where a plan with watts and GPUs to spare would look, and on the max
    batch in force (so more replicas never have to come through a restart) as far as on any of those: a batch in force
    that needs fewer replicas than another offered no candidate as many as that one's, so a plan with GPUs to spare
    restarted into it to keep its replicas, and back (staying must be offered; offered however far past any need,
    the replicas of a past peak were kept)."""
    svc = problem.services[pair.service]
    now = svc.current
    batch_now = now.max_batch if now is not None and now.accelerator == pair.acc.name else None
    best = set(map(id, heapq.nlargest(SPARE_SHAPES, full, key=attrgetter("score"))))
    reach = max((c.assignment.replicas for c in full if id(c) in best), default=0) + EXTRA_REPLICAS
    out = []
    for c in full:
        a = c.assignment
        if a.max_batch != batch_now and id(c) not in best:
            continue
        most = a.replicas + EXTRA_REPLICAS
        if a.max_batch == batch_now and now is not None:
            most = max(most, min(now.replicas, reach))
        for n in range(a.replicas + 1, min(pair.most, most) + 1):
            out.append((a.max_batch, a.power_cap_w, a.sm_clock_fraction, n, svc.load.rate_rps, n - a.replicas))
    return out


def partial_pool(problem: Problem, pair: Pair, needs: Needs, brackets: Brackets) -> list[Shape]:
    """The shapes partial candidates may run on (`partials`): among those needing the fewest replicas (the need
    falls as the rate rises), the one whose known fitting rate is highest (`brackets`: those the shapes were sized
    with, their searches' checks and drift probes of this cycle and earlier ones, a lower bound of each one's max
    rate that costs nothing), with its frugal ones (`_frugal`), whose ladders are there where one replica of the
    fastest carries the load too; every shape where none carries it."""
    known = [n for n in needs.values() if n is not None]
    if problem.services[pair.service].load.rate_rps <= 0:
        return []
    if not known:
        return list(needs)
    least = min(known)
    return _frugal(max((s for s, n in needs.items() if n == least),
                       key=lambda s: brackets.known_fit_rps(pair.shapes[s])), needs)


def _frugal(fastest: Shape, shapes: Iterable[Shape]) -> list[Shape]:
    """`fastest` and the shapes of least draw at its clock: its max batch, and the smallest, at the lowest cap.
    Busy at the fastest's cap, one replica can need more than a short budget holds; with no ladder below it, the
    service was shed whole while one of lower priority ran (budget 1,000 W: chat shed, code served)."""
    same = [s for s in shapes if s[2] == fastest[2]]
    low = min(s[1] for s in same)
    smallest = min(s[0] for s in same if s[1] == low)
    return list(dict.fromkeys(s for s in (fastest, (fastest[0], low, fastest[2]), (smallest, low, fastest[2]))
                              if s in same))


def partials(problem: Problem, pair: Pair, rates: dict[Shape, float]) -> list[Spec]:
    """Fewer replicas than the load needs, each full, on the shape of the pool (`partial_pool`, with each one's max
    rate) one replica takes most on and on its frugal ones: what a short budget degrades a service to."""
    if not rates:
        return []
    svc = problem.services[pair.service]
    out = []
    # The frugal ladders start at min_replicas: offered where one replica carries the load too, they had a light
    # load's service shrunk to one replica, its whole load on it (the fastest's ladder goes down to one, but only
    # where one replica does not carry the load). Held at min_replicas such a service can still be shed while a
    # lower priority runs, as its shed floor counts at no draw (docs/optimize-spec.md).
    for k, (batch, cap, clock) in enumerate(_frugal(max(rates, key=lambda s: rates[s]), rates)):
        rungs, low = (MAX_PARTIAL, 1) if k == 0 else (FRUGAL_RUNGS, max(1, svc.min_replicas))  # the fastest first
        per_replica = rates[batch, cap, clock]
        if per_replica <= 0:
            continue
        most = min(pair.most, math.ceil(svc.load.rate_rps / per_replica - 1e-9) - 1)
        # the bottom rung always: spread from `most`, a ladder of 8 read 3, 5, 8, and a service one replica of a
        # frugal shape fitted was shed while a lower priority ran (a trial)
        steps = sorted({low, *(max(low, round(most * j / rungs)) for j in range(1, rungs + 1))}) if most >= low else []
        out += [(batch, cap, clock, r, min(svc.load.rate_rps, r * per_replica), 0) for r in steps]
    return out
