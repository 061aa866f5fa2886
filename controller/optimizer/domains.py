"""The plan within every power domain: a replica's predicted watts land in the domain its GPUs are in.

On a host, a service's replicas take its listed GPUs in order (`ServiceDemand.gpus`), so a candidate of r
replicas puts its draw above idle, GPU by GPU, on the first r x gpus_per_replica of them, and each domain's
share of a choice is known. A choice whose domains do not all fit is brought down, lowest priority first
within the domain over: the service's best candidate (same accelerator, no more GPUs) that puts less in that
domain, or shed when none does. The exact rows are the MILP's (`domain_rows`); the repair serves every solver.
A service whose placement is unknown (no GPU list) counts in no domain: the governor holds those alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.optimizer.problem import Candidate, DomainRoom, Problem


def domain_w(problem: Problem, c: Candidate, d: DomainRoom) -> float:
    """What candidate `c` predicts in domain `d`, above idle."""
    placed = problem.services[c.service].gpus.get(c.assignment.accelerator, ())
    if not placed or c.gpus <= 0:
        return 0.0
    inside = sum(1 for g in placed[:c.gpus] if g in d.gpus)
    return c.power_w / c.gpus * inside


def over(problem: Problem, choice: Sequence[Candidate | None]) -> list[tuple[DomainRoom, float]]:
    """The domains a choice overfills, with by how much (W). A room below 0 (a line under its GPUs' idle draw,
    which check-config refuses) holds nothing: over as soon as anything of the plan is in it, never when empty."""
    out = []
    for d in problem.domains:
        used = sum(domain_w(problem, c, d) for c in choice if c is not None)
        if used > max(d.room_w, 0.0) + 1e-6:
            out.append((d, used - max(d.room_w, 0.0)))
    return out


def fit_domains(problem: Problem, cands: list[list[Candidate]],
                choice: list[Candidate | None]) -> tuple[list[Candidate | None], list[str]]:
    """`choice` brought within every domain (a copy), and a note per service it brought down."""
    choice, notes = list(choice), []
    while found := over(problem, choice):
        d, _ = found[0]
        inside = [i for i, c in enumerate(choice) if c is not None and domain_w(problem, c, d) > 0]
        i = max(inside, key=lambda k: (problem.services[k].priority, k))  # lowest priority, last listed
        now = choice[i]
        assert now is not None
        here = domain_w(problem, now, d)
        per_gpu_w = now.power_w / max(now.gpus, 1)
        # No more GPUs and no more watts a GPU: no domain gets more, this one less, so the loop ends.
        lower = [c for c in cands[i] if c.assignment.accelerator == now.assignment.accelerator
                 and 0 < c.gpus <= now.gpus and c.power_w / c.gpus <= per_gpu_w + 1e-9
                 and domain_w(problem, c, d) < here - 1e-9]
        pick = max(lower, key=lambda c: (c.value, -c.power_w), default=None)
        choice[i] = pick
        a = now.assignment
        to = "shed" if pick is None else (f"{pick.assignment.replicas} x cap {pick.assignment.power_cap_w:.0f} W "
                                          f"batch {pick.assignment.max_batch}")
        notes.append(f"domain {d.name}: {problem.services[i].name} {a.replicas} x cap {a.power_cap_w:.0f} W "
                     f"batch {a.max_batch} -> {to}")
    return choice, notes
