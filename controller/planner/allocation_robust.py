"""The robust counterpart of one uncertain row: its worst case over a decision-dependent budget, dualised.

A query type's routes r carry nominal figures a_r (delay or error rate) and deviations dev_r a_r; at most
Gamma(z) = gamma + protection x sum_r z_r of them run at their deviation at once (z_r: route r is chosen), so
the budget grows with the routes the plan actually uses. The worst case of sum_r dev_r a_r x_r xi_r over
{xi in [0, 1]^R : sum xi <= Gamma(z)} is an LP; its dual, min Gamma(z) pi + sum p_r over pi + p_r >= dev_r a_r x_r,
pi, p >= 0, has the bilinear products z_r pi, replaced by t_r under McCormick's envelope for a binary z_r and
pi in [0, M]. Only its lower side (t_r >= 0, t_r >= pi - M (1 - z_r)) is written: t_r enters with a positive
coefficient wherever it is bounded from above, so the upper side never binds and t_r = z_r pi at any optimum.
M = max_r dev_r a_r bounds pi without loss: a larger pi buys nothing, since p_r >= dev_r a_r x_r - pi is
already 0 at pi = M.

A type uses at most one tier per model, so its routes are gathered into one slot per model, whose x and z are
the sums over its tiers (at most one of them non-zero): one p and one t per model instead of per route, with
the same values.

The envelope is weak where z is fractional (t_r >= pi - M (1 - z_r) is 0 for z_r < 1 - pi / M), so the LP
relaxation barely sees the worst case and HiGHS has to branch it back. One valid row closes most of that: with
n of at most S slots chosen, spreading the budget evenly (xi_r = min(1, Gamma(z) / n) on each chosen slot) is
a point of the set, so the worst case is at least share x sum_r dev_r a_r x_r, share = min(1, protection +
gamma / S); and the dual bound is at least the worst case. Every integer-feasible point keeps it; the shipped
robust spec's root bound rises from 162.1 to 167.5 (docs/plan.md, "Speed").
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.lp import Lp


@dataclass(frozen=True)
class Slot:
    shares: list[tuple[int, float]]
    """(column of x_r, dev_r a_r) of the routes at most one of which is used (one model's tiers)."""
    chosen: list[int]
    """Columns of those routes' binaries z_r (their sum is 0 or 1)."""


def worst_case_terms(lp: Lp, key: str, slots: list[Slot], gamma: float,
                     protection: float) -> list[tuple[int, float]]:
    """Columns and coefficients whose sum, added to a <= row (or the objective), is the dual bound on the
    routes' worst-case deviation; the dual's rows go in group `key`:dual. Empty when nothing can deviate."""
    big_m = max((dev for slot in slots for _, dev in slot.shares), default=0.0)
    if big_m <= 0.0 or (gamma <= 0.0 and protection <= 0.0):
        return []
    pi = lp.var(("pi", key), ub=big_m)
    terms = [(pi, gamma)] if gamma > 0.0 else []
    for n, slot in enumerate(slots):
        most = max((dev for _, dev in slot.shares), default=0.0)
        if most > 0.0:
            p = lp.var(("p", key, n), ub=most)
            terms.append((p, 1.0))
            lp.row([(pi, 1.0), (p, 1.0)] + [(x, -dev) for x, dev in slot.shares], 0.0, float("inf"),
                   f"{key}:dual")
        if protection > 0.0:
            t = lp.var(("t", key, n), ub=big_m)  # = z pi, z the slot's route binary
            terms.append((t, protection))
            lp.row([(t, 1.0), (pi, -1.0)] + [(z, -big_m) for z in slot.chosen], -big_m, float("inf"),
                   f"{key}:dual")
    share = min(1.0, protection + gamma / len(slots))  # the even spread's xi: a lower bound on the worst case
    lp.row(terms + [(x, -share * dev) for slot in slots for x, dev in slot.shares], 0.0, float("inf"),
           f"{key}:dual")
    return terms


def worst_deviation(deviations: list[float], budget: float) -> float:
    """max sum_r dev_r xi_r over xi in [0, 1]^R with sum xi <= budget, for a solved plan: the largest
    floor(budget) deviations and the fractional rest of the next (the set's best vertex)."""
    ranked = sorted(deviations, reverse=True)
    whole = min(int(budget), len(ranked))
    rest = ranked[whole] * (budget - whole) if whole < len(ranked) else 0.0
    return sum(ranked[:whole]) + rest


def budget(gamma: float, protection: float, chosen_routes: int) -> float:
    """Gamma(z): how many routes of a type may deviate at once, given how many it uses."""
    return gamma + protection * chosen_routes
