"""Candidate enumeration: per service, each (accelerator, max batch, cap) sized by the queue model.

A full candidate serves the whole load with ceil(load / max rate) replicas; partial ones serve what
fewer replicas can, so a short budget degrades a service before it drops it. Values fold the objective,
the priority-weighted shortfall (so lower priorities give way first, a replica's worth at a time) and the
transition penalty.

A new max batch is a rolling restart: one replica at a time is down while it reloads. A candidate that
changes the max batch of what runs therefore keeps, besides its own replicas, enough for its load minus one
at the batch in force (a surge replica where the plan had none to spare), so the restart never leaves the
service short of capacity; where the batch in force meets the targets at no rate at all, the restart is
the remedy and nothing is added.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

from controller.optimizer.clocks import shape_choices
from controller.optimizer.problem import AcceleratorType, Assignment, Candidate, Problem, ServiceDemand
from controller.optimizer.sizing import known_fit_rps, rate_per_replica, replicas_needed
from queuemodels import ModelInputError, Performance, ServerShape, get_model

MAX_PARTIAL = 6
EXTRA_REPLICAS = 2
"""Replicas beyond a shape's need offered to the token-speed objective: without them a plan could reach more
replicas only through a shape that needs more (a smaller max batch), and changed its batch to scale."""
SPARE_SHAPES = 4
"""Shapes per service and accelerator offered spare replicas besides those of the max batch in force: the
ones scoring best at their need (a spare for every shape tripled the candidates and the slow loop's cost)."""
GRAIN = 0.005
Needs = dict[tuple[int, float, float | None], int | None]
"""Replicas each (max batch, cap, clock) shape needs for a service's load (None: more than it may run)."""


def _score(problem: Problem, svc: ServiceDemand, cost: float, power_w: float, perf_in_system: float,
           served_rps: float) -> float:
    if problem.objective == "cost":
        return -cost
    if problem.objective == "energy":
        return -power_w
    if served_rps <= 0 or perf_in_system <= 0:
        return 0.0
    return served_rps * svc.load.out_tokens / perf_in_system  # T_i / C_i: tokens per second per request


def _candidate(problem: Problem, i: int, svc: ServiceDemand, acc: AcceleratorType, batch: int, cap_w: float,
               replicas: int, served_rps: float, clock: float | None = None) -> Candidate | None:
    params = svc.params[acc.name]
    shape = ServerShape(batch, svc.max_queue, cap_w, clock)
    per_replica = replace(svc.load, rate_rps=served_rps / replicas)
    try:
        perf = get_model(problem.queue_model).analyze(params, per_replica, shape, svc.profile(acc), tails=False)
    except ModelInputError:
        return None
    gpus = replicas * acc.gpus_per_replica
    per_gpu_w = cap_w if problem.budget_mode == "caps" else perf.power_w
    power = gpus * (per_gpu_w - acc.profile.idle_power_w)
    cost = gpus * acc.cost_per_hour
    score = _score(problem, svc, cost, gpus * per_gpu_w, replicas * perf.mean_in_system, served_rps)
    return Candidate(i, Assignment(acc.name, replicas, batch, cap_w, clock), gpus, power, cost, served_rps,
                     max(0.0, svc.load.rate_rps - served_rps), score, perf)


def with_tails(problem: Problem, c: Candidate) -> Performance | None:
    """The chosen candidate's full figures: candidates are valued on means, percentiles are reported."""
    svc = problem.services[c.service]
    a = c.assignment
    per_replica = replace(svc.load, rate_rps=c.served_rps / a.replicas)
    return get_model(problem.queue_model).analyze(svc.params[a.accelerator], per_replica,
                                                  ServerShape(a.max_batch, svc.max_queue, a.power_cap_w,
                                                              a.sm_clock_fraction),
                                                  svc.profile(problem.accelerator(a.accelerator)))


def _restart_need(problem: Problem, svc: ServiceDemand, acc: AcceleratorType, batch: int, cap_w: float,
                  clock: float | None, most: int, needs: Needs) -> int:
    """Replicas a change to max batch `batch` needs so its rolling restart, one replica down at a time, leaves
    what carries the load at the batch in force (0 where nothing restarts, or where the batch in force meets
    the targets at no rate at all: the restart is the remedy). `needs` holds the shapes sized already."""
    cur = svc.current
    if cur is None or cur.accelerator != acc.name or cur.max_batch == batch or svc.load.rate_rps <= 0:
        return 0
    shape = ServerShape(cur.max_batch, svc.max_queue, cap_w, clock)
    params, profile = svc.params[acc.name], svc.profile(acc)
    key = (cur.max_batch, cap_w, clock)
    n = needs[key] if key in needs else replicas_needed(problem.queue_model, params, svc.load, shape, svc.targets,
                                                         profile, most)
    if n is not None:
        return n + 1
    in_force = rate_per_replica(problem.queue_model, params, replace(svc.load, rate_rps=1.0), shape, svc.targets,
                                profile)
    return most + 1 if in_force > 0 else 0


def _spares(problem: Problem, i: int, acc: AcceleratorType, full: list[Candidate], most: int) -> list[Candidate]:
    """Token speed gains from replicas beyond the need (shorter queues), cost and energy never do. They are offered
    on the max batch in force (so more replicas never have to come through a restart) and on the shapes scoring
    best at their need, where a plan with watts and GPUs to spare would look."""
    svc = problem.services[i]
    batch_now = svc.current.max_batch if svc.current is not None and svc.current.accelerator == acc.name else None
    best = set(map(id, sorted(full, key=lambda c: -c.score)[:SPARE_SHAPES]))
    out = []
    for c in full:
        a = c.assignment
        if a.max_batch != batch_now and id(c) not in best:
            continue
        for n in range(a.replicas + 1, min(most, a.replicas + EXTRA_REPLICAS) + 1):
            extra = _candidate(problem, i, svc, acc, a.max_batch, a.power_cap_w, n, svc.load.rate_rps,
                               a.sm_clock_fraction)
            if extra is not None:
                out.append(replace(extra, spare=n - a.replicas))
    return out


def _partials(problem: Problem, i: int, acc: AcceleratorType, needs: Needs) -> list[Candidate]:
    """Fewer replicas than the load needs, on the shape one replica takes most on, each full: what a short
    budget degrades a service to. That shape is among those needing the fewest replicas (the need falls as the
    rate rises); of them, the one whose known fitting rate is highest is sized by its max rate. Where no shape
    carries the load, every shape is."""
    svc = problem.services[i]
    known = [n for n in needs.values() if n is not None]
    if svc.load.rate_rps <= 0 or (known and min(known) == 1):
        return []
    per_unit, params, profile = replace(svc.load, rate_rps=1.0), svc.params[acc.name], svc.profile(acc)

    def shape(s: tuple[int, float, float | None]) -> ServerShape:
        return ServerShape(s[0], svc.max_queue, s[1], s[2])

    pool = list(needs)
    if known:
        fewest = (s for s, n in needs.items() if n == min(known))
        pool = [max(fewest, key=lambda s: known_fit_rps(problem.queue_model, params, svc.load, shape(s), svc.targets,
                                                        profile))]
    rates = {s: rate_per_replica(problem.queue_model, params, per_unit, shape(s), svc.targets, profile) for s in pool}
    (batch, cap, clock), best_rate = max(rates.items(), key=lambda kv: kv[1])
    if best_rate <= 0:
        return []
    most = min(svc.max_replicas, acc.count // acc.gpus_per_replica, math.ceil(svc.load.rate_rps / best_rate - 1e-9) - 1)
    steps = sorted({max(1, round(most * k / MAX_PARTIAL)) for k in range(1, MAX_PARTIAL + 1)}) if most >= 1 else []
    out = []
    for r in steps:
        c = _candidate(problem, i, svc, acc, batch, cap, r, min(svc.load.rate_rps, r * best_rate), clock)
        if c is not None:
            out.append(c)
    return out


def service_candidates(problem: Problem, i: int) -> list[Candidate]:
    svc = problem.services[i]
    out: list[Candidate] = []
    for acc in problem.accelerators:
        if acc.name not in svc.params or acc.count < acc.gpus_per_replica:
            continue
        most = min(svc.max_replicas, acc.count // acc.gpus_per_replica)
        params, profile = svc.params[acc.name], svc.profile(acc)
        needs: Needs = {(batch, cap, clock): replicas_needed(problem.queue_model, params, svc.load,
                                                             ServerShape(batch, svc.max_queue, cap, clock),
                                                             svc.targets, profile, most)
                        for batch in problem.batch_sizes for cap, clock in shape_choices(problem, acc)}
        full: list[Candidate] = []
        for (batch, cap, clock), n in needs.items():
            if n is None:
                continue
            need = max(svc.min_replicas, n, _restart_need(problem, svc, acc, batch, cap, clock, most, needs))
            if need <= most:
                c = _candidate(problem, i, svc, acc, batch, cap, need, svc.load.rate_rps, clock)
                if c is not None:
                    full.append(c)
        out += full
        if problem.objective == "token_speed":
            out += _spares(problem, i, acc, full, most)
        out += _partials(problem, i, acc, needs)
    return out


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
        weights[level] = (scores + below) / GRAIN
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


def valued(problem: Problem, candidates: list[list[Candidate]]) -> tuple[list[list[Candidate]], list[float]]:
    """Attach each candidate's value; returns them with each service's value when shed entirely."""
    scale = max((abs(c.score) for cs in candidates for c in cs), default=1.0) or 1.0
    weights = shed_weights(problem, scale)
    out, shed = [], []
    for svc, cs in zip(problem.services, candidates, strict=True):
        w = weights[svc.priority]
        share = 1.0 / svc.load.rate_rps if svc.load.rate_rps > 0 else 0.0
        row = []
        for c in cs:
            v = c.score - w * c.short_rps * share
            v -= problem.transition_penalty * max(abs(c.score), 1e-3 * scale) * _changes(svc.current, c.assignment)
            row.append(replace(c, value=v))
        out.append(row)
        shed.append(-w if svc.load.rate_rps > 0 else -w * 1e-3)  # dropping below min_replicas always costs
    return out, shed


def enumerate_all(problem: Problem) -> list[list[Candidate]]:
    return [service_candidates(problem, i) for i in range(len(problem.services))]
