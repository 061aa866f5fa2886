"""Why a plan leaves a service short, as its result and notes say it."""

from __future__ import annotations

from dataclasses import replace

from controller.optimizer.domains import domain_w
from controller.optimizer.problem import Candidate, Choice, Problem, ServiceDemand, Solution, gpus_used
from queuemodels import ModelInputError, ServerShape, get_model


def short_reason(problem: Problem, i: int, cands: list[Candidate], choice: Choice, held: list[tuple[str, int]]) -> str:
    """Why service i is short: no shape or GPU serves it at all, not even max_replicas does, its domain, the
    inventory (what the others take, a shed one's held GPUs among it), or the budget."""
    if not cands:  # no shape meets the targets, or no accelerator it runs on has a replica's GPUs at all
        offered = {a.name: a for a in problem.accelerators}
        usable = [offered[name] for name in problem.services[i].params if name in offered]
        return "inventory" if all(a.count < a.gpus_per_replica for a in usable) else "slo"
    others = [c for k, c in enumerate(choice) if k != i]
    used = gpus_used(choice, held, but=i)
    best_served = max(c.served_rps for c in cands)
    if best_served < problem.services[i].load.rate_rps - 1e-9:
        return "replicas"  # even max_replicas of the best shape cannot take the load
    now = choice[i]
    more = [c for c in cands if c.served_rps > (now.served_rps if now is not None else 0.0) + 1e-9]
    if _domain_full(problem, more, []):
        return "domain"  # its rack could not hold more of it even empty
    fitting = [c for c in cands
               if c.gpus + used.get(c.assignment.accelerator, 0) <= problem.accelerator(c.assignment.accelerator).count]
    if not fitting or max(c.served_rps for c in fitting) < best_served - 1e-9:
        return "inventory"
    fits = {id(c) for c in fitting}
    more = [c for c in more if id(c) in fits]
    return "domain" if _domain_full(problem, more, [c for c in others if c is not None]) else "budget"


def slo_notes(problem: Problem, solution: Solution) -> list[str]:
    """`least_latency` of each service the solution leaves short for its targets: what `optimize` says of one (an
    impossible target said only "slo"); the daemon's slow cycle, which reads no note, spends nothing on it."""
    return [note for r, svc in zip(solution.services, problem.services, strict=True)
            if r.reason == "slo" and (note := least_latency(problem, svc))]


def least_latency(problem: Problem, svc: ServiceDemand) -> str | None:
    """For a service no shape serves within its targets: the least TTFT and ITL any type it runs on reads, on one
    replica of the smallest batch at full power and a trickle of its load (an impossible target said only "slo")."""
    model, best = get_model(problem.queue_model), None
    for a in problem.accelerators:
        if a.name not in svc.params:
            continue
        shape = ServerShape(min(problem.batch_sizes), svc.max_queue, a.profile.max_power_w)
        try:
            perf = model.analyze(svc.params[a.name], replace(svc.load, rate_rps=1e-3), shape, svc.profile(a),
                                 tails=svc.targets.statistic != "mean")
        except ModelInputError:
            continue
        read = perf.latency_at(svc.targets.statistic)
        if best is None or read < best[1]:
            best = (a.name, read)
    if best is None:
        return None
    stat, (ttft, itl) = svc.targets.statistic, best[1]
    return (f"{svc.name}: no shape meets its {stat} targets (ttft_ms {svc.targets.ttft_ms:g}, itl_ms "
            f"{svc.targets.itl_ms:g}): the least any reads, one {best[0]} replica at a trickle of load, is TTFT "
            f"{ttft:.4g} ms, ITL {itl:.4g} ms")


def _domain_full(problem: Problem, more: list[Candidate], taken: list[Candidate]) -> bool:
    """Some domain takes none of `more` (what would serve the service more) with `taken` in it."""
    for d in problem.domains:
        left = max(d.room_w, 0.0) - sum(domain_w(problem, t, d) for t in taken)
        if more and all(domain_w(problem, c, d) > left + 1e-6 for c in more):
            return True
    return False
