"""Why the allocation optimum drops demand, and which parameter would change that; JSON of a solution.

For each query type with unmet demand the model is solved again with that type forced to be served. If that
is feasible, the penalty was simply cheaper than serving: the report gives the unmet penalty above which
serving pays. If not, each limit on the type is dropped in turn until it is: that limit is the reason. All the
explanations together take at most the spec's time_limit_s more (a type left when it runs out says so).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from controller.planner.allocation import Allocation, AllocationModel

# constraint group -> the spec parameters that relax it ({i}: the query type; gpus.*: any GPU type's)
_LIMITS = (
    ("delay:{i}", "queries.{i}.delay_threshold_s"),
    ("error:{i}", "queries.{i}.error_threshold"),
    ("budget", "budget"),
    ("inventory", "gpus.*.available"),
    ("storage", "storage_capacity_gb"),
    ("memory", "mem_util or gpus.*.memory_gb"),
    ("compute", "compute_efficiency or gpus.*.compute_tflops"),
)


SNAP = 1e-6
"""Share within which a solver's rounding reads as none or all (0.9999999999999972 of a route read "over 99.99%")."""


def dropped(share: float) -> str:
    """A share of demand as a percentage that reads 100 % or 0 % only when it is, to the solver's rounding: 99.96 %
    dropped is not all of it (the JSON's shares showed 0.04 % served where the text said 100 %)."""
    share = 1.0 if share >= 1.0 - SNAP else 0.0 if share <= SNAP else share
    if share in (0.0, 1.0) or 0.01 <= share <= 0.99:
        return f"{share:.0%}"
    if share < 0.0001:
        return "under 0.01%"
    return "over 99.99%" if share > 0.9999 else f"{share:.2%}"


def explain_unmet(model: AllocationModel, best: Allocation,
                  clock: Callable[[], float] = time.monotonic) -> list[dict[str, Any]]:
    """Why each query type's dropped demand is dropped, by solving again with one limit relaxed. Withheld
    (empty) unless `best` is a proven optimum: a plan stopped at the time limit is no fair baseline."""
    if not (best.ok and best.optimal):
        return []
    out = []
    spec = model.spec
    deadline = clock() + spec.time_limit_s  # up to 9 solves a type, each of up to the spec's limit

    def left_s() -> float:
        return max(0.0, deadline - clock())

    # a model whose weights fit no GPU at any TP degree is not in the MILP at all: no relaxed row would serve it
    deployable = any(model.replicas(j, k) for j in spec.models for k in model.tiers)

    for i, share in best.unmet.items():
        qt = spec.queries[i]
        queries = qt.arrival_rate_qph * spec.rental_period_h
        if share <= 1e-6:
            continue
        if not deployable:
            out.append({"query": i, "unmet_share": share, "reason": "memory", "parameter": "gpus.*.memory_gb",
                        "text": f"{i}: {dropped(share)} of its demand is dropped because no model's weights fit any "
                                "GPU's memory (memory_gb x mem_util) at its tp_degrees; relax a GPU type's memory_gb "
                                "(gpus.*.memory_gb), mem_util or tp_degrees."})
            continue
        if left_s() <= 0.0:
            out.append(_unexplained(i, share, spec.time_limit_s))
            continue
        served = model.solve(force_served=i, time_limit_s=left_s())
        if not served.ok and not served.infeasible:  # stopped before it knew
            out.append(_unexplained(i, share, spec.time_limit_s, served.message if left_s() > 0.0 else None))
            continue
        if served.ok:
            extra = served.costs["total"] - best.costs["total"]
            lost = share * queries  # under 1e-308 queries a period (rates of 1e-200 both) it reads 0
            above = qt.unmet_penalty + extra / lost if lost > 0.0 else math.inf
            priced = math.isfinite(above)  # not where it overflows (5e-324 queries) or none are lost
            found, above, why = _threshold(model, i, served, above, queries, left_s) if priced and served.optimal \
                else (False, above, "")
            above = _up(above)  # printed at 4 digits: rounded down, the price printed would still drop some
            # a serving plan stopped at the limit costs at most what it says: the figures are upper bounds
            most = "" if served.optimal else "at most "
            shown = _printed(above)
            raise_it = (f"No penalty per query serves it: {lost:.3g} queries a period are dropped, which no number "
                        "prices." if not priced else
                        f"Raise queries.{i}.unmet_penalty above {shown} $/query." if found else
                        f"Raise queries.{i}.unmet_penalty above at least {shown} $/query (a plan serving part "
                        f"of it may still cost less there: the search for the price stopped {why})."
                        if served.optimal else
                        f"A queries.{i}.unmet_penalty above {shown} $/query is enough (its solve stopped at the "
                        "time limit: the true threshold may be lower).")
            out.append({
                "query": i, "unmet_share": share, "reason": "penalty", "parameter": f"queries.{i}.unmet_penalty",
                "value": qt.unmet_penalty, "serve_above": above if priced else None,
                "serve_above_proven": found,
                "text": (f"{i}: {dropped(share)} of its demand is dropped because paying its unmet penalty "
                         f"({qt.unmet_penalty:g} $/query) is cheaper than serving it; serving all of it would cost "
                         f"{most}{extra:.2f} $ more per period. " + raise_it),
            })
            continue
        for group, parameter in _LIMITS:
            g = group.format(i=i)
            relaxed = model.solve(force_served=i, without=frozenset({g}), time_limit_s=left_s())
            if not relaxed.ok and not relaxed.infeasible:
                out.append(_unexplained(i, share, spec.time_limit_s, relaxed.message if left_s() > 0.0 else None))
                break
            if relaxed.ok:
                param = parameter.format(i=i)
                extra_text = ""
                if g == "budget":
                    least = model.least_budget(i, left_s())
                    known = relaxed.costs["rental"] + relaxed.costs["storage"]  # a budget that serves it, too
                    need = min(least.objective, known) if least.ok else known
                    extra_text = (f" Serving it needs a budget of at least {math.floor(need * 100) / 100:.2f} $ "
                                  f"(now {spec.budget:g})." if least.optimal else
                                  f" A budget of {math.ceil(need * 100) / 100:.2f} $ serves it (now {spec.budget:g}; "
                                  "the least was not proven within the time limit).")
                elif g.split(":")[0] in ("delay", "error") and best.budgets.get(i, 0.0) > 0:
                    extra_text = (f" The limit is held at its worst case ({best.budgets[i]:g} routes deviating): "
                                  "lower robust.protection or robust.gamma, or the tiers' deviations, relax it too.")
                out.append({
                    "query": i, "unmet_share": share, "reason": g.split(":")[0], "parameter": param,
                    "text": (f"{i}: {dropped(share)} of its demand is dropped because no plan serves it within the "
                             f"{g.split(':')[0]} limit; relax {param}.{extra_text}"),
                })
                break
        else:
            out.append({"query": i, "unmet_share": share, "reason": "several", "parameter": None,
                        "text": f"{i}: {dropped(share)} of its demand is dropped; no single limit, relaxed alone, "
                                "lets it be served (several bind together)."})
    return out


def _unexplained(i: str, share: float, time_limit_s: float, stopped: str | None = None) -> dict[str, Any]:
    """A type whose explanation ran out of time, or (`stopped`: HiGHS's message) whose solve ended before it knew
    for another reason, with time left."""
    why = (f"not explained: the solver stopped ({stopped})" if stopped else
           f"not explained within time_limit_s ({time_limit_s:g} s, the explanations' own)")
    return {"query": i, "unmet_share": share, "reason": "unexplained", "parameter": None,
            "text": f"{i}: {dropped(share)} of its demand is dropped; {why}."}


def allocation_json(model: AllocationModel, a: Allocation, explanations: list[dict[str, Any]]) -> dict[str, Any]:
    spec = model.spec
    return {
        "kind": "allocation",
        "ok": a.ok,
        "optimal": a.optimal,
        "mip_gap": a.mip_gap if a.ok else None,
        "message": a.message,
        "robust": {"gamma": spec.robust.gamma, "protection": spec.robust.protection, "budgets": a.budgets,
                   "worst_case": a.worst_case,
                   "deviations": {f"{g}:{p}": asdict(spec.deviation((g, p))) for g, p in spec.tiers()}},
        "token_storage": spec.token_storage,
        "token_retention_h": spec.retention_h if spec.token_storage == "retained" else None,
        "allocation": [{"query": i, "model": j, "gpu": k[0], "precision": k[1], "share": v}
                       for (i, j, k), v in sorted(a.shares.items())],
        "deployments": [{"model": j, "gpu": k[0], "precision": k[1], "tp": tp, "replicas": r, "gpus": tp * r}
                        for (j, k), (tp, r) in sorted(a.deployments.items())],
        "unmet": dict(a.unmet),
        "cost": a.costs,
        "dropped": explanations,
        "solve_s": a.solve_s,
    }


def routes(doc: dict[str, Any], query: str) -> int:
    """The routes a query type's served share takes in a plan's JSON."""
    return sum(r["query"] == query for r in doc["allocation"])


def deviating(budget: float, used: int) -> str:
    """How many of a type's routes its worst case lets deviate: its budget, but no more than the routes it uses
    (gamma 1e6 read "1e+06 routes may deviate" of a type on one route)."""
    if budget >= used:
        return f"every route it uses ({used}) may deviate" if used != 1 else "its one route may deviate"
    return f"{budget:g} of its {used} route{'' if used == 1 else 's'} may deviate at once"


def percent(share: float) -> str:
    """A table's share: to a tenth of a percent, where that reads 0.0 % or 100.0 % only when it is (`dropped`)."""
    return f"{share:.1%}" if 0.001 <= share <= 0.999 else dropped(share)


def allocation_text(doc: dict[str, Any]) -> str:
    if not doc["ok"]:
        return f"no plan: {doc['message']}"
    lines = ["allocation:"]
    lines += [f"  {r['query']:<16} -> {r['model']:<12} {r['gpu']}:{r['precision']:<6} {percent(r['share']):>11}"
              for r in doc["allocation"]]  # a share is 0 % or 100 % only where it is (0.0 % read for 0.04 %)
    lines.append("deployments:")
    lines += [f"  {d['model']:<12} {d['gpu']}:{d['precision']:<6} TP {d['tp']} x {d['replicas']} replicas = "
              f"{d['gpus']} GPUs" for d in doc["deployments"]]
    lines.append("unmet demand: " + ", ".join(f"{i} {percent(v)}" for i, v in doc["unmet"].items()))
    c = doc["cost"]
    lines.append(f"cost per period: rental {c['rental']:.2f} + storage {c['storage']:.2f} + delay penalty "
                 f"{c['delay_penalty']:.2f} + unmet penalty {c['unmet_penalty']:.2f} = {c['total']:.2f} $")
    lines.append(f"token storage: retained {doc['token_retention_h']:g} h, held against storage_capacity_gb"
                 if doc["token_storage"] == "retained" else
                 "token storage: whole_period, every token billed for the period, apart from storage_capacity_gb")
    lines += [e["text"] for e in doc["dropped"]]
    if not doc["optimal"]:
        lines.append(f"not proven optimal (gap {doc['mip_gap']:.2%}): the solve stopped at its time limit; why "
                     "demand is dropped is not explained")
    rb = doc["robust"]
    robust = f" (robust: gamma {rb['gamma']:g}, protection {rb['protection']:g})" if any(rb["budgets"].values()) else ""
    if robust:
        lines.append("worst case (mean over served queries, nominal -> worst):")
        lines += [f"  {i:<16} delay {w['delay_s']:.3g} -> {w['worst_delay_s']:.3g} s, error {w['error']:.3g} -> "
                  f"{w['worst_error']:.3g} ({deviating(rb['budgets'][i], routes(doc, i))})"
                  for i, w in rb["worst_case"].items()]
    lines.append(f"solved in {doc['solve_s']:.3f} s{robust}")
    return "\n".join(lines)


THRESHOLD_ROUNDS = 8
"""The most re-solves the search for a type's serving price makes (each finds a plan dropping less, or ends it)."""


def _threshold(model: AllocationModel, i: str, served: Allocation, price: float, queries: float,
               left_s: Callable[[], float]) -> tuple[bool, float, str]:
    """The unmet penalty of type `i` above which serving all of it is the optimum, from `price`, at which it
    ties the best plan found: a plan serving part of it may cost less there (a GPU fewer, the rest dropped), so
    the price rises until serving all of it ties the best plan at that price. Whether it got there, the price
    reached (a lower bound where it did not), and where it stopped if not."""
    for _ in range(THRESHOLD_ROUNDS):
        at = model.solve_priced(i, price, left_s())
        if not (at.ok and at.optimal):
            return False, price, "at the time limit"
        lost = at.unmet.get(i, 0.0) * queries
        gap = served.costs["total"] - at.costs["total"]
        if lost <= 0.0 or gap <= 1e-9 * max(1.0, abs(served.costs["total"])):
            return True, price, ""  # serving all of it is (or ties) the optimum at this price
        price += gap / lost
    return False, price, f"after {THRESHOLD_ROUNDS} solve{'' if THRESHOLD_ROUNDS == 1 else 's'}"


def _printed(price: float) -> str:
    """`price` at 4 digits where they do not read below it (`_up` rounded it there), else whole (a subnormal)."""
    short = f"{price:.4g}"
    return short if not math.isfinite(price) or float(short) >= price else repr(price)


def _up(price: float) -> float:
    """`price` rounded up at 4 significant digits, as it is printed."""
    if not (math.isfinite(price) and price > 0.0):
        return price
    step = 10.0 ** (math.floor(math.log10(price)) - 3)
    up = float(f"{math.ceil(price / step * (1 - 1e-12)) * step:.4g}") if step > 0.0 else price
    return up if math.isfinite(up) and up >= price else price  # a subnormal's digits, the largest float's overflow
