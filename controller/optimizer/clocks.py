"""The SM clock as a decision beside the cap: the (cap, clock) pairs a candidate may run at, and which of the
locked ones are worth planning.

A clock level is a share of the GPU's maximum SM clock; 1.0 leaves the clock unlocked (None in an
assignment). Each power level is paired with each clock level, so greedy and the MILP choose both through
the candidates they already take; with the default single level (1.0) the candidates are the caps-only ones.

A locked clock is planned only where the model is sure it saves energy (`sure_savings`): a clock that saves
less than the model's own draw errors could just as well cost energy (a prompt-bound service spread over two
GPUs at a lower clock draws about what one GPU at the free clock does), and then the clock stays free.
"""

from __future__ import annotations

from collections.abc import Iterator

from controller.optimizer.problem import AcceleratorType, Candidate, Problem


def clock_of(level: float) -> float | None:
    """A clock level as an assignment holds it: None for the maximum (unlocked)."""
    return None if level >= 1.0 else level


def shape_choices(problem: Problem, acc: AcceleratorType) -> Iterator[tuple[float, float | None]]:
    """(cap in W, clock share or None) for every power level and clock level, caps held at the GPU's floor."""
    for power in problem.power_levels:
        cap = max(acc.profile.min_power_w, power * acc.profile.max_power_w)
        for level in sorted(set(problem.clock_levels), reverse=True):
            yield cap, clock_of(level)


def sure_savings(candidates: list[Candidate], draws_w: list[float], min_saving: float) -> list[Candidate]:
    """The candidates (one service's on one accelerator, with the predicted draw of the GPUs each holds, idle
    included) less those at a locked clock that the model does not predict to save at least `min_saving` of the
    energy per request of a candidate at the free clock serving as much. The whole draw counts, whatever the
    budget mode: a lower clock bought with one more replica pays that GPU's whole draw (its draw with no process
    too, which it would draw free: the rule errs against the lock). A locked candidate that no
    free one serves as much as is kept (nothing says it costs energy)."""
    per_request = [w / max(c.served_rps, 1e-9) for c, w in zip(candidates, draws_w, strict=True)]
    free = [(c.served_rps, w) for c, w in zip(candidates, per_request, strict=True)
            if c.assignment.sm_clock_fraction is None]
    out = []
    for c, w in zip(candidates, per_request, strict=True):
        if c.assignment.sm_clock_fraction is not None:
            best = min((f for served, f in free if served >= c.served_rps * (1.0 - 1e-9)), default=None)
            if best is not None and w > (1.0 - min_saving) * best:
                continue
        out.append(c)
    return out
