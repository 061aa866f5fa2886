"""The candidates past a service's full ones: spare replicas beyond its need (token speed's) and partial ladders
that serve part of its load on fewer replicas, so a short budget degrades a service before it drops it."""

from __future__ import annotations

import heapq
import math
from operator import attrgetter
from typing import TYPE_CHECKING

from controller.optimizer.problem import Candidate, Problem
from controller.optimizer.sizing import Brackets

if TYPE_CHECKING:
    from controller.optimizer.candidates import Needs, Pair, Shape, Spec

MAX_PARTIAL = 6
"""Rungs of a partial ladder: replica counts spread evenly from 1 to one short of the need."""
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
    rate that costs nothing); every shape where none carries the load; none where one replica carries it."""
    known = [n for n in needs.values() if n is not None]
    if problem.services[pair.service].load.rate_rps <= 0 or (known and min(known) == 1):
        return []
    if not known:
        return list(needs)
    least = min(known)
    return [max((s for s, n in needs.items() if n == least), key=lambda s: brackets.known_fit_rps(pair.shapes[s]))]


def partials(problem: Problem, pair: Pair, rates: dict[Shape, float]) -> list[Spec]:
    """Fewer replicas than the load needs, on the shape of the pool (`partial_pool`, with each one's max rate)
    one replica takes most on, each full: what a short budget degrades a service to."""
    if not rates:
        return []
    rate_rps = problem.services[pair.service].load.rate_rps
    (batch, cap, clock), best_rate = max(rates.items(), key=lambda kv: kv[1])
    if best_rate <= 0:
        return []
    most = min(pair.most, math.ceil(rate_rps / best_rate - 1e-9) - 1)
    steps = sorted({max(1, round(most * k / MAX_PARTIAL)) for k in range(1, MAX_PARTIAL + 1)}) if most >= 1 else []
    return [(batch, cap, clock, r, min(rate_rps, r * best_rate), 0) for r in steps]
