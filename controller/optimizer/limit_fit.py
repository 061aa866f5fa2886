"""The plan's caps within the sum of limits the governor may set.

In predicted mode the plan budgets its predicted draw, and the governor holds the power limits' sum under the same
line (a GPU draws at most its limit, so no load jump passes it). Caps that sum past the line were cut there tick by
tick, priority first and whatever the cut cost: on diurnal, batch-summaries' GPUs ran under 331-W limits of a 630-W
cap, their prompts held 17 % of the time, while chat's drew 314 W under 630. Here the chosen caps (and the free GPUs
at their lowest limits, where the governor holds them) are brought within the line before the plan is published: a
level at a time, where the model says a watt of cap is worth least, each service keeping its shape (accelerator,
replicas, batch, clock) and serving no less. A service with fewer replicas serving than it plans (some added,
loading their model, or restarting) keeps the cap chosen until they serve: the ones that serve carry the whole load
(code's first one, fitted to 420 W for three, missed a closed-loop window by its p95 ITL while the others started).
Where even the lowest levels do not fit (a budget below the fleet's caps at their floor), the choice stays as it was
and the governor shares the line as before.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence

from controller.optimizer.problem import Candidate, Problem


def limits_w(problem: Problem, choice: Sequence[Candidate | None]) -> float:
    """The limits' sum a choice asks of the governor: each replica's GPUs at its cap, every other GPU at its floor."""
    used: Counter[str] = Counter()
    total = 0.0
    for c in choice:
        if c is not None:
            total += c.gpus * c.assignment.power_cap_w
            used[c.assignment.accelerator] += c.gpus
    return total + sum(max(0, a.count - used[a.name]) * a.profile.min_power_w for a in problem.accelerators)


def _ladder(c: Candidate, cands: Sequence[Candidate]) -> list[Candidate]:
    """`c`'s shape at each lower cap, highest first, each step serving no less than the one above it."""
    a = c.assignment
    lower = {d.assignment.power_cap_w: d for d in cands
             if d.assignment.power_cap_w < a.power_cap_w
             and (d.assignment.accelerator, d.assignment.replicas, d.assignment.max_batch,
                  d.assignment.sm_clock_fraction) == (a.accelerator, a.replicas, a.max_batch, a.sm_clock_fraction)}
    out: list[Candidate] = []
    for w in sorted(lower, reverse=True):
        if lower[w].short_rps > (out[-1] if out else c).short_rps + 1e-9:
            break
        out.append(lower[w])
    return out


def _growing(problem: Problem, i: int, c: Candidate) -> bool:
    """Whether service `i` plans more replicas of the type it runs than serve (those in force, less any still
    loading): until they serve, the ones that do carry the load planned for all of them, and a cap fitted to the
    plan's share holds them under it."""
    svc = problem.services[i]
    now = svc.current
    if now is None or now.accelerator != c.assignment.accelerator:
        return False
    return c.assignment.replicas > (now.replicas if svc.serving is None else min(now.replicas, svc.serving))


def _freed_w(c: Candidate, d: Candidate) -> float:
    """The watts of limits a step from `c` down to `d` frees."""
    return c.gpus * (c.assignment.power_cap_w - d.assignment.power_cap_w)


def _cost(c: Candidate, d: Candidate) -> float:
    """Value given up per watt of limits a step from `c` down to `d` frees."""
    return (c.value - d.value) / max(_freed_w(c, d), 1e-9)


def fit_limits(problem: Problem, cands: list[list[Candidate]],
               choice: list[Candidate | None]) -> tuple[list[Candidate | None], list[str]]:
    """`choice` with its caps within the plan's budget as limits (a copy), and a note per service whose cap came
    down; `choice` itself in caps mode (its caps are the budget's already), where it fits, or where nothing can (a
    note says so)."""
    over_w = limits_w(problem, choice) - problem.budget_w
    if problem.budget_mode != "predicted" or over_w <= 0:
        return choice, []
    growing = [i for i, c in enumerate(choice) if c is not None and _growing(problem, i, c)]
    ladders = {i: [] if i in growing else _ladder(c, cands[i]) for i, c in enumerate(choice) if c is not None}
    most_w = sum(_freed_w(c, ladders[i][-1]) for i, c in enumerate(choice) if c is not None and ladders[i])
    if most_w < over_w:  # said: the plan's caps are not the limits the governor will set
        held = f" ({', '.join(problem.services[i].name for i in growing)} at the cap chosen: fewer serve than planned)"
        return choice, [f"the caps ask {problem.budget_w + over_w:.0f} W of power limits, {over_w - most_w:.0f} W past "
                        f"the budget's {problem.budget_w:.0f} W even at the lowest power levels its candidates "
                        "offer each service's shape (accelerator, replicas, max batch, clock) at, serving as much"
                        f"{held if growing else ''}: the governor shares the budget, priority first"]

    out = list(choice)
    steps = [(_cost(c, ladders[i][0]), i, 0) for i, c in enumerate(choice) if c is not None and ladders[i]]
    heapq.heapify(steps)
    while over_w > 1e-6 and steps:
        _, i, k = heapq.heappop(steps)
        c, d = out[i], ladders[i][k]
        assert c is not None
        over_w -= _freed_w(c, d)
        out[i] = d
        if k + 1 < len(ladders[i]):
            heapq.heappush(steps, (_cost(d, ladders[i][k + 1]), i, k + 1))
    notes = [f"{problem.services[i].name}: cap {c.assignment.power_cap_w:.0f} -> {d.assignment.power_cap_w:.0f} W a "
             f"GPU, for the power limits' sum ({problem.budget_w:.0f} W)"
             for i, (c, d) in enumerate(zip(choice, out, strict=True)) if c is not None and d not in (None, c)]
    return out, notes
