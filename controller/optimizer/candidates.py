"""Candidate enumeration: per service, each (accelerator, max batch, cap) sized by the queue model.

A full candidate serves the whole load with ceil(load / max rate) replicas; partial ones serve what
fewer replicas can, so a short budget degrades a service before it drops it (those and the spares past a
shape's need are optimizer/ladders.py's). What each is worth to the
solvers is optimizer/values.py's.

A new max batch is a rolling restart: one replica at a time is down while it reloads. A candidate that
changes the max batch of what runs therefore keeps, besides its own replicas, enough for its load minus one
at the batch in force (a surge replica where the plan had none to spare), so the restart never leaves the
service short of capacity; where the batch in force meets the targets at no rate at all, the restart is
the remedy and nothing is added.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from itertools import chain, compress, pairwise, repeat
from typing import NamedTuple

import numpy as np

from controller.optimizer.clocks import clock_of, shape_choices, sure_savings
from controller.optimizer.ladders import partial_pool, partials, spares
from controller.optimizer.problem import AcceleratorType, Assignment, Candidate, Problem, ServiceDemand, make_candidate
from controller.optimizer.sizing import Shapes, Sizer, rates_per_replica, size_together
from controller.optimizer.values import collector_paused
from queuemodels import Performance, PowerProfile, ServerShape, get_model
from queuemodels.clock import clock_share
from queuemodels.law_arrays import Bases, Points
from queuemodels.power import uncapped_peak_w
from queuemodels.step_arrays import Floats

Shape = tuple[int, float, float | None]
"""A (max batch, cap, clock) the optimizer sizes."""
Needs = dict[Shape, int | None]
"""Replicas each (max batch, cap, clock) shape needs for a service's load (None: more than it may run)."""


def _shapes(problem: Problem, acc: AcceleratorType, profile: PowerProfile) -> list[Shape]:
    """Each (max batch, cap, clock) worth sizing: of the caps at or above what a shape draws uncapped, only the
    lowest, since the others run the same steps at the same draw and would only hold more of the budget's room."""
    out = []
    for batch in problem.batch_sizes:
        unbound: set[float | None] = set()
        for cap, clock in sorted(shape_choices(problem, acc), key=lambda s: s[0]):
            if clock in unbound:
                continue
            if cap >= uncapped_peak_w(profile, batch, clock_share(clock)):
                unbound.add(clock)
            out.append((batch, cap, clock))
    return out


_kinds: dict[tuple[object, ...], tuple[dict[Shape, ServerShape], Shapes]] = {}
"""Each kind's shapes from one cycle to the next: the same objects, so the brackets kept by them are found by
identity."""


def _kind_shapes(problem: Problem, acc: AcceleratorType, profile: PowerProfile,
                 max_queue: int | None) -> tuple[dict[Shape, ServerShape], Shapes]:
    """The shapes worth sizing of one accelerator, profile and queue bound (`_shapes`), as the queue model takes
    them."""
    key = (acc.profile, profile, max_queue, problem.batch_sizes, problem.power_levels, problem.clock_levels)
    if key not in _kinds:
        if len(_kinds) > 10_000:
            _kinds.clear()
        shapes = {s: ServerShape(s[0], max_queue, s[1], s[2]) for s in _shapes(problem, acc, profile)}
        _kinds[key] = shapes, Shapes(shapes.values())
    return _kinds[key]


def _scores(problem: Problem, cost: Floats, power_w: Floats, in_system: Floats, served_rps: Floats,
            out_tokens: Floats) -> Floats:
    """Each candidate's score under the objective: token speed is T_i / C_i, tokens per second per request."""
    if problem.objective == "cost":
        return -cost
    if problem.objective == "energy":
        return -power_w
    fine = (served_rps > 0) & (in_system > 0)
    out: Floats = np.where(fine, served_rps * out_tokens / np.where(fine, in_system, 1.0), 0.0)
    return out


_assignment = lru_cache(maxsize=1 << 16)(Assignment)
"""Assignments shared by every candidate that names the same one (a frozen dataclass is slow to build)."""
Spec = tuple[int, float, float | None, int, float, int]
"""A candidate before it is valued: (max batch, cap, clock, replicas, served rps, spare replicas)."""


class Pair(NamedTuple):
    """One service on one accelerator: what its candidates there share."""

    service: int
    acc: AcceleratorType
    sizer: Sizer
    most: int
    """The most replicas it may run there."""
    shapes: dict[Shape, ServerShape]
    """Its shapes worth sizing (`_shapes`), each as the queue model takes it."""
    sized: Shapes
    """The same, in order, as its brackets are kept by."""


def _value(problem: Problem, pairs: list[Pair], bases: Bases,
           specs: list[list[Spec]]) -> list[tuple[list[Candidate], list[float]]]:
    """Each pair's specs valued, all of them in one call of the queue model (which solves them together), with the
    predicted draw of the GPUs each holds; a spec whose rate per replica the model cannot take is dropped. `bases`:
    the pairs' sizers' bases, in order."""
    k = np.repeat(np.arange(len(pairs)), [len(pair_specs) for pair_specs in specs])
    # by field: batch, cap, clock, replicas, served, spare
    columns = list(zip(*chain.from_iterable(specs), strict=True)) or [()] * 6
    queues = np.array([problem.services[p.service].max_queue for p in pairs], dtype=float)  # None: NaN
    # the shapes as the queue model reads them (Points.table): each spec's batch, cap and clock, its service's queue
    table = np.array([columns[0], queues[k], columns[1], columns[2]], dtype=float).reshape(4, len(k)).T
    replicas, served = (np.array(columns[j], dtype=float) for j in (3, 4))
    points = Points(bases, k, table, served / replicas)
    figures = get_model(problem.queue_model).figures_of(points)
    per_pair = np.array([(p.acc.gpus_per_replica, p.acc.cost_per_hour, problem.floor_w(p.acc),
                          problem.services[p.service].load.rate_rps, problem.services[p.service].load.out_tokens,
                          p.service) for p in pairs], dtype=float).reshape(len(pairs), 6)[k].T
    gpus_per_replica, price, empty_w, rate_rps, out_tokens, service = per_pair
    gpus = replicas * gpus_per_replica
    per_gpu_w = np.array(columns[1], dtype=float) if problem.budget_mode == "caps" else figures.power_w
    cost = gpus * price
    score = _scores(problem, cost, gpus * per_gpu_w, replicas * figures.in_system, served, out_tokens)
    keep = figures.covered
    kept = keep.tolist()
    names = [pair.acc.name for pair in pairs]
    assignments = map(_assignment, compress((names[j] for j in k.tolist()), kept),
                      *(compress(columns[j], kept) for j in (3, 0, 1, 2)))
    made = list(map(make_candidate, zip(service[keep].astype(int).tolist(), assignments,
                                        gpus[keep].astype(int).tolist(),
                                        *(col[keep].tolist() for col in (gpus * (per_gpu_w - empty_w), cost, served,
                                                                         np.maximum(0.0, rate_rps - served), score)),
                                        repeat(0.0), compress(columns[5], kept))))
    draws = (gpus * figures.power_w)[keep].tolist()
    ends = np.cumsum(np.bincount(k[keep], minlength=len(pairs))).tolist()  # the specs run pair by pair
    return [(made[a:b], draws[a:b]) for a, b in pairwise([0, *ends])]


def with_tails(problem: Problem, c: Candidate) -> Performance | None:
    """The chosen candidate's full figures: candidates are valued on means, percentiles are reported."""
    svc = problem.services[c.service]
    a = c.assignment
    per_replica = replace(svc.load, rate_rps=c.served_rps / a.replicas)
    return get_model(problem.queue_model).analyze(svc.params[a.accelerator], per_replica,
                                                  ServerShape(a.max_batch, svc.max_queue, a.power_cap_w,
                                                              a.sm_clock_fraction),
                                                  svc.profile(problem.accelerator(a.accelerator)))


def _restart_need(svc: ServiceDemand, cur: Assignment, pair: Pair, cap_w: float, clock: float | None,
                  needs: Needs) -> int:
    """Replicas a change from `cur`'s max batch (on this pair's accelerator, under load) needs so its rolling
    restart, one replica down at a time, leaves what carries the load at the batch in force (0 where the batch in
    force meets the targets at no rate at all: the restart is the remedy). `needs` holds the shapes sized already."""
    shape = ServerShape(cur.max_batch, svc.max_queue, cap_w, clock)
    key = (cur.max_batch, cap_w, clock)
    n = needs[key] if key in needs else pair.sizer.need(shape, pair.most)
    if n is not None:
        return n + 1
    return pair.most + 1 if pair.sizer.rate_per_replica(shape) > 0 else 0


def _full(problem: Problem, pair: Pair, needs: Needs) -> list[Spec]:
    """A spec per shape that carries the whole load within the replicas the service may run there."""
    svc = problem.services[pair.service]
    cur = svc.current
    if cur is None or cur.accelerator != pair.acc.name or svc.load.rate_rps <= 0:
        cur = None  # nothing restarts here
    out = []
    for (batch, cap, clock), n in needs.items():
        if n is None:
            continue
        restart = _restart_need(svc, cur, pair, cap, clock, needs) if cur and cur.max_batch != batch else 0
        need = max(svc.min_replicas, n, restart)
        if need <= pair.most:
            out.append((batch, cap, clock, need, svc.load.rate_rps, 0))
    return out


@collector_paused()
def enumerate_all(problem: Problem) -> list[list[Candidate]]:
    """Every service's candidates on every accelerator it may run on (`_enumerate`). A margin (the SLO margin learnt
    from a service's missed windows, an untried type's) never leaves it with none: where no shape meets its targets
    less the margins, it is planned against its own (a margin taken for TTFT's misses had made a long-context ITL
    unreachable, and the service, planned as short, got no replica for its queue), its untried types left out
    unless at risk (there valued at a price: their prior trusted at its own targets for nothing had been a move
    for cost to a type never measured)."""
    out = _enumerate(problem)
    bare = {i for i, cs in enumerate(out) if not cs and (problem.services[i].targets.margin > 0.0 or (
        problem.services[i].untried and problem.untried_margin > 0.0))}
    if bare:
        own = tuple(replace(s, targets=replace(s.targets, margin=0.0), params={
            a: p for a, p in s.params.items() if s.untried_at_risk or a not in s.untried}) if i in bare else s
            for i, s in enumerate(problem.services))
        again = _enumerate(replace(problem, services=own), bare)
        out = [again[i] if i in bare else cs for i, cs in enumerate(out)]
    return out


def _enumerate(problem: Problem, only: set[int] | None = None) -> list[list[Candidate]]:
    """Every pair's shapes sized together (`size_together`), then their full candidates valued together, then the
    spare and partial ones; of the services `only` names where given (the others' lists left empty)."""
    pairs = []
    for i, svc in enumerate(problem.services):
        if only is not None and i not in only:
            continue
        for acc in problem.accelerators:
            if acc.name not in svc.params or acc.count < acc.gpus_per_replica:
                continue
            profile = svc.profile(acc)
            targets = svc.targets_on(acc.name, problem.untried_margin)
            most = min(svc.max_replicas, acc.count // acc.gpus_per_replica)
            if placed := svc.gpus.get(acc.name):  # its replicas take its listed GPUs in order: no more than they hold
                most = min(most, len(placed) // acc.gpus_per_replica)
            sizer = Sizer(problem.queue_model, svc.params[acc.name], svc.load, targets, profile)
            pairs.append(Pair(i, acc, sizer, most, *_kind_shapes(problem, acc, profile, svc.max_queue)))
    bases = Bases(p.sizer.base for p in pairs)  # what the queue model reads of them, worked out once
    sized = size_together(problem.queue_model, [(p.sizer, p.sized, p.most) for p in pairs], bases)
    needs: list[Needs] = [dict(zip(p.shapes, n, strict=True)) for p, n in zip(pairs, sized, strict=True)]
    full = _value(problem, pairs, bases, [_full(problem, p, n) for p, n in zip(pairs, needs, strict=True)])
    locked = any(clock_of(level) is not None for level in problem.clock_levels)

    def sure(cs: list[Candidate], draws_w: list[float]) -> list[Candidate]:
        """A locked clock kept only where it saves against every free-clock candidate serving as much."""
        return sure_savings(cs, draws_w, problem.clock_min_saving) if locked else cs

    brackets = [p.sizer.brackets_of(p.sized) for p in pairs]
    pools = [partial_pool(problem, *args) for args in zip(pairs, needs, brackets, strict=True)]
    asks = [(p.sizer, p.shapes[s], b) for p, pool, b in zip(pairs, pools, brackets, strict=True) for s in pool]
    rates = iter(rates_per_replica(problem.queue_model, asks))
    more = [(spares(problem, p, sure(*f)) if problem.objective == "token_speed" else [])
            + partials(problem, p, {s: next(rates) for s in pool})
            for p, f, pool in zip(pairs, full, pools, strict=True)]
    out: list[list[Candidate]] = [[] for _ in problem.services]
    for pair, (cs, draws), (extra, extra_draws) in zip(pairs, full, _value(problem, pairs, bases, more), strict=True):
        out[pair.service] += sure(cs + extra, draws + extra_draws)
    return out
