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
from controller.optimizer.sizing import Sizer
from queuemodels import Performance, PowerProfile, ServerShape, get_model
from queuemodels.clock import clock_share
from queuemodels.power import uncapped_peak_w

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


def _shapes(problem: Problem, acc: AcceleratorType, profile: PowerProfile) -> list[tuple[int, float, float | None]]:
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


def _score(problem: Problem, svc: ServiceDemand, cost: float, power_w: float, perf_in_system: float,
           served_rps: float) -> float:
    if problem.objective == "cost":
        return -cost
    if problem.objective == "energy":
        return -power_w
    if served_rps <= 0 or perf_in_system <= 0:
        return 0.0
    return served_rps * svc.load.out_tokens / perf_in_system  # T_i / C_i: tokens per second per request


Spec = tuple[int, float, float | None, int, float, int]
"""A candidate before it is valued: (max batch, cap, clock, replicas, served rps, spare replicas)."""


def _candidates(problem: Problem, i: int, acc: AcceleratorType, specs: list[Spec]) -> list[Candidate]:
    """The specs valued, all of a service's on one accelerator in one call of the queue model (which solves them
    together); a spec whose rate per replica the model cannot take is dropped."""
    svc = problem.services[i]
    params, profile = svc.params[acc.name], svc.profile(acc)
    points = [(params, svc.load.at_rate(served / n), ServerShape(batch, svc.max_queue, cap, clock), profile)
              for batch, cap, clock, n, served, _ in specs]
    figures = get_model(problem.queue_model).mean_figures(points)
    out = []
    for (batch, cap_w, clock, replicas, served_rps, spare), fig in zip(specs, figures, strict=True):
        if fig is None:
            continue
        in_system, draw_w = fig.mean_in_system, fig.power_w
        gpus = replicas * acc.gpus_per_replica
        per_gpu_w = cap_w if problem.budget_mode == "caps" else draw_w
        cost = gpus * acc.cost_per_hour
        score = _score(problem, svc, cost, gpus * per_gpu_w, replicas * in_system, served_rps)
        out.append(Candidate(i, Assignment(acc.name, replicas, batch, cap_w, clock), gpus,
                             gpus * (per_gpu_w - acc.profile.idle_power_w), cost, served_rps,
                             max(0.0, svc.load.rate_rps - served_rps), score, spare=spare))
    return out


def with_tails(problem: Problem, c: Candidate) -> Performance | None:
    """The chosen candidate's full figures: candidates are valued on means, percentiles are reported."""
    svc = problem.services[c.service]
    a = c.assignment
    per_replica = replace(svc.load, rate_rps=c.served_rps / a.replicas)
    return get_model(problem.queue_model).analyze(svc.params[a.accelerator], per_replica,
                                                  ServerShape(a.max_batch, svc.max_queue, a.power_cap_w,
                                                              a.sm_clock_fraction),
                                                  svc.profile(problem.accelerator(a.accelerator)))


def _restart_need(svc: ServiceDemand, acc: AcceleratorType, batch: int, cap_w: float, clock: float | None, most: int,
                  needs: Needs, sizer: Sizer) -> int:
    """Replicas a change to max batch `batch` needs so its rolling restart, one replica down at a time, leaves
    what carries the load at the batch in force (0 where nothing restarts, or where the batch in force meets
    the targets at no rate at all: the restart is the remedy). `needs` holds the shapes sized already."""
    cur = svc.current
    if cur is None or cur.accelerator != acc.name or cur.max_batch == batch or svc.load.rate_rps <= 0:
        return 0
    shape = ServerShape(cur.max_batch, svc.max_queue, cap_w, clock)
    key = (cur.max_batch, cap_w, clock)
    n = needs[key] if key in needs else sizer.need(shape, most)
    if n is not None:
        return n + 1
    return most + 1 if sizer.rate_per_replica(shape) > 0 else 0


def _spares(problem: Problem, i: int, acc: AcceleratorType, full: list[Candidate], most: int) -> list[Spec]:
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
            out.append((a.max_batch, a.power_cap_w, a.sm_clock_fraction, n, svc.load.rate_rps, n - a.replicas))
    return out


def _partials(svc: ServiceDemand, acc: AcceleratorType, needs: Needs, sizer: Sizer) -> list[Spec]:
    """Fewer replicas than the load needs, on the shape one replica takes most on, each full: what a short
    budget degrades a service to. That shape is among those needing the fewest replicas (the need falls as the
    rate rises); of them, the one whose known fitting rate is highest is sized by its max rate. Where no shape
    carries the load, every shape is."""
    known = [n for n in needs.values() if n is not None]
    if svc.load.rate_rps <= 0 or (known and min(known) == 1):
        return []

    def shape(s: tuple[int, float, float | None]) -> ServerShape:
        return ServerShape(s[0], svc.max_queue, s[1], s[2])

    pool = list(needs)
    if known:
        fewest = (s for s, n in needs.items() if n == min(known))
        pool = [max(fewest, key=lambda s: sizer.known_fit_rps(shape(s)))]
    rates = {s: sizer.rate_per_replica(shape(s)) for s in pool}
    (batch, cap, clock), best_rate = max(rates.items(), key=lambda kv: kv[1])
    if best_rate <= 0:
        return []
    most = min(svc.max_replicas, acc.count // acc.gpus_per_replica, math.ceil(svc.load.rate_rps / best_rate - 1e-9) - 1)
    steps = sorted({max(1, round(most * k / MAX_PARTIAL)) for k in range(1, MAX_PARTIAL + 1)}) if most >= 1 else []
    return [(batch, cap, clock, r, min(svc.load.rate_rps, r * best_rate), 0) for r in steps]


def service_candidates(problem: Problem, i: int) -> list[Candidate]:
    svc = problem.services[i]
    out: list[Candidate] = []
    for acc in problem.accelerators:
        if acc.name not in svc.params or acc.count < acc.gpus_per_replica:
            continue
        most = min(svc.max_replicas, acc.count // acc.gpus_per_replica)
        profile = svc.profile(acc)
        sizer = Sizer(problem.queue_model, svc.params[acc.name], svc.load, svc.targets, profile)
        shapes = _shapes(problem, acc, profile)
        sized = sizer.needs([ServerShape(batch, svc.max_queue, cap, clock) for batch, cap, clock in shapes], most)
        needs: Needs = dict(zip(shapes, sized, strict=True))
        specs: list[Spec] = []
        for (batch, cap, clock), n in needs.items():
            if n is None:
                continue
            need = max(svc.min_replicas, n, _restart_need(svc, acc, batch, cap, clock, most, needs, sizer))
            if need <= most:
                specs.append((batch, cap, clock, need, svc.load.rate_rps, 0))
        full = _candidates(problem, i, acc, specs)
        more = _spares(problem, i, acc, full, most) if problem.objective == "token_speed" else []
        out += full + _candidates(problem, i, acc, more + _partials(svc, acc, needs, sizer))
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


def energy_price(problem: Problem, candidates: list[list[Candidate]]) -> float:
    """Token speed a watt of draw costs: `energy_weight` x the fastest plan's speed per watt of the site's draw
    (each service's fastest candidate, idle GPUs included). At weight 1 this is one step of Dinkelbach's method
    from that plan towards the most token speed per watt: a 1 % cut in the site's draw is worth 1 % of speed."""
    if problem.objective != "token_speed" or problem.energy_weight <= 0:
        return 0.0
    fastest = [max(cs, key=lambda c: c.score) for cs in candidates if cs]
    draw_w = problem.idle_w + sum(c.power_w for c in fastest)
    return problem.energy_weight * sum(c.score for c in fastest) / max(draw_w, 1.0)


def valued(problem: Problem, candidates: list[list[Candidate]]) -> tuple[list[list[Candidate]], list[float]]:
    """Attach each candidate's value; returns them with each service's value when shed entirely."""
    scale = max((abs(c.score) for cs in candidates for c in cs), default=1.0) or 1.0
    price = energy_price(problem, candidates)
    weights = shed_weights(problem, scale)
    out, shed = [], []
    for svc, cs in zip(problem.services, candidates, strict=True):
        w = weights[svc.priority]
        share = 1.0 / svc.load.rate_rps if svc.load.rate_rps > 0 else 0.0
        row = []
        for c in cs:
            v = c.score - price * c.power_w - w * c.short_rps * share
            v -= problem.transition_penalty * max(abs(c.score), 1e-3 * scale) * _changes(svc.current, c.assignment)
            row.append(c.valued(v))
        out.append(row)
        shed.append(-w if svc.load.rate_rps > 0 else -w * 1e-3)  # dropping below min_replicas always costs
    return out, shed


def enumerate_all(problem: Problem) -> list[list[Candidate]]:
    return [service_candidates(problem, i) for i in range(len(problem.services))]
