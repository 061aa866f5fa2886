"""What planning power together with the rest buys, against a power-oblivious allocation.

    python benchmarks/power_aware_gain.py [--spec config/examples/optimize.toml] [--budget-w W]

Both allocations face the same services, loads, inventory and budget.
- power-aware: `wattscale optimize` (milp) with the spec's objective, caps and batch chosen with the rest.
- power-oblivious (llm-inferno's way): per service in priority order, the cheapest accelerator, replicas and
  max batch that meet the SLO at full caps; then every GPU's cap is cut by the same share until the
  predicted draw fits the budget (or the caps reach their floor).
Both are then scored by the same queue model at the caps they run at: `slo_attainment` is the share of the
offered requests served within their service's SLO, `objective` the sum over services of T_i / C_i
(tokens per second per request in the system). Prints JSON with `objective_ratio` (aware / oblivious).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

from controller.cli_output import native_output_to_stderr
from controller.optimize_spec import load_spec
from controller.optimizer import Assignment, Problem, get_solver, solve
from queuemodels import ModelInputError, ServerShape, get_model

ROOT = Path(__file__).resolve().parent.parent


def oblivious(problem: Problem) -> list[Assignment | None]:
    """Cheapest SLO-meeting accelerator, replicas and batch per service at full caps, by priority."""
    model = get_model(problem.queue_model)
    left = {a.name: a.count for a in problem.accelerators}
    out: list[Assignment | None] = [None] * len(problem.services)
    for i in sorted(range(len(problem.services)), key=lambda k: problem.services[k].priority):
        svc = problem.services[i]
        best: tuple[float, int, Assignment] | None = None
        for acc in problem.accelerators:
            if acc.name not in svc.params:
                continue
            for batch in problem.batch_sizes:
                shape = ServerShape(batch, svc.max_queue, acc.profile.max_power_w)
                rate = model.max_rate(svc.params[acc.name], svc.load, shape, svc.targets, acc.profile)
                if rate <= 0:
                    continue
                replicas = max(svc.min_replicas, math.ceil(svc.load.rate_rps / rate - 1e-9))
                gpus = replicas * acc.gpus_per_replica
                if replicas > svc.max_replicas or gpus > left[acc.name]:
                    continue
                key = (gpus * acc.cost_per_hour, -batch)  # cheapest, then the largest batch (fewest restarts later)
                if best is None or key < best[:2]:
                    best = (*key, Assignment(acc.name, replicas, batch, acc.profile.max_power_w))
        if best is not None:
            out[i] = best[2]
            left[best[2].accelerator] -= best[2].replicas * problem.accelerator(best[2].accelerator).gpus_per_replica
    return out


def score(problem: Problem, plan: list[Assignment | None], served: list[float]) -> dict[str, float]:
    """Predicted draw, SLO attainment and the sum of T_i / C_i of a plan."""
    model = get_model(problem.queue_model)
    power = problem.idle_w
    offered = sum(s.load.rate_rps for s in problem.services)
    good = objective = 0.0
    for svc, a, rate in zip(problem.services, plan, served, strict=True):
        if a is None or rate <= 0:
            continue
        acc = problem.accelerator(a.accelerator)
        load = replace(svc.load, rate_rps=rate / a.replicas)
        try:
            perf = model.analyze(svc.params[a.accelerator], load, ServerShape(a.max_batch, svc.max_queue,
                                                                             a.power_cap_w), acc.profile)
        except ModelInputError:
            continue
        power += a.replicas * acc.gpus_per_replica * (perf.power_w - acc.profile.empty_draw_w)
        if perf.meets(svc.targets) and perf.block_probability <= 1e-3:
            good += perf.throughput_rps * a.replicas
        if perf.mean_in_system > 0:
            objective += perf.throughput_rps * svc.load.out_tokens / perf.mean_in_system
    return {"power_w": round(power, 1), "slo_attainment": round(good / offered, 4) if offered else 1.0,
            "objective": round(objective, 3)}


def cut_uniformly(problem: Problem, plan: list[Assignment | None]) -> tuple[list[Assignment | None], float]:
    """Every cap at the same share of its maximum, the largest share whose predicted draw fits the budget."""
    def capped(a: Assignment, share: float) -> Assignment:
        profile = problem.accelerator(a.accelerator).profile
        return replace(a, power_cap_w=max(profile.min_power_w, share * profile.max_power_w))

    def at(share: float) -> list[Assignment | None]:
        return [None if a is None else capped(a, share) for a in plan]

    loads = [s.load.rate_rps for s in problem.services]
    if score(problem, at(1.0), loads)["power_w"] <= problem.budget_w:
        return at(1.0), 1.0
    low, high = 0.0, 1.0
    for _ in range(30):
        mid = 0.5 * (low + high)
        if score(problem, at(mid), loads)["power_w"] <= problem.budget_w:
            low = mid
        else:
            high = mid
    return at(low), low


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", type=Path, default=ROOT / "config/examples/optimize.toml")
    ap.add_argument("--budget-w", type=float, default=None, help="override the spec's budget")
    args = ap.parse_args()
    problem = load_spec(args.spec)
    if args.budget_w is not None:
        problem = replace(problem, budget_w=args.budget_w)
    aware = solve(problem, get_solver("milp", 10.0, 0.0))
    aware_plan = [r.assignment for r in aware.services]
    aware_served = [s.load.rate_rps - r.short_rps for s, r in zip(problem.services, aware.services, strict=True)]
    plan, share = cut_uniformly(problem, oblivious(problem))
    a_score = score(problem, aware_plan, aware_served)
    o_score = score(problem, plan, [s.load.rate_rps for s in problem.services])

    def show(p: list[Assignment | None]) -> dict[str, str]:
        return {s.name: (f"{a.replicas}x{a.accelerator} batch {a.max_batch} cap {a.power_cap_w:.0f} W" if a else "shed")
                for s, a in zip(problem.services, p, strict=True)}

    print(json.dumps({
        "spec": str(args.spec),
        "objective_name": problem.objective,
        "budget_w": problem.budget_w,
        "power_aware": {**a_score, "plan": show(aware_plan)},
        "power_oblivious": {**o_score, "cap_share": round(share, 4), "plan": show(plan)},
        "objective_ratio": round(a_score["objective"] / o_score["objective"], 4) if o_score["objective"] else None,
        "target": {"objective_ratio": 1.15},
    }))


if __name__ == "__main__":
    with native_output_to_stderr():  # HiGHS's own prints: not into the JSON line
        main()
