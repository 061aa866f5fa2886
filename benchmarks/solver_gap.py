"""Greedy and auto against the exact MILP on small random problems where GPUs are tight.

    python benchmarks/solver_gap.py [--cases 40] [--seed 0]

A host's planning problem: 2-4 services (random priorities, SLO classes, loads and token mixes) on one or
two accelerator types of 2-6 GPUs each, a budget of 30-90 % of full power, one of the three objectives,
and clock levels on half the cases. optimizer_scale.py measures greedy at fleet scale, where GPUs are
plentiful; this is where its order hands GPUs out wrongly. Prints JSON: per solver the mean and largest
relative gap of the valued objective to the MILP solved to a 1e-6 gap, the cases more than 1 % short, and
the median milliseconds per choice.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from controller.cli_output import native_output_to_stderr
from controller.optimizer import AcceleratorType, Problem, ServiceDemand, get_solver
from controller.optimizer.candidates import enumerate_all
from controller.optimizer.problem import Choice
from controller.optimizer.values import valued
from queuemodels import Load, ServiceParams, Targets
from queuemodels.accelerators import CATALOG

CLASSES = (Targets(300, 40), Targets(900, 60, "p95"), Targets(4000, 120))


def random_problem(rng: np.random.Generator) -> Problem:
    names = rng.choice(["H100-SXM", "A100-SXM4", "L40S"], int(rng.integers(1, 3)), replace=False)
    accs = tuple(AcceleratorType(str(n), int(rng.integers(2, 7)), float(rng.uniform(1, 3)), CATALOG[str(n)])
                 for n in names)
    services = []
    for i in range(int(rng.integers(2, 5))):
        s = float(rng.uniform(0.7, 2.0))
        params = {a.name: ServiceParams("gen1", 10 * s, 0.06 * s, 8 * s, 0.03 * s) for a in accs}
        load = Load(float(rng.uniform(1, 20)), int(rng.integers(200, 2000)), int(rng.integers(100, 500)))
        services.append(ServiceDemand(f"s{i}", int(rng.integers(1, 4)), CLASSES[int(rng.integers(0, 3))], load, params,
                                      max_replicas=6))
    full_w = sum(a.count * a.profile.max_power_w for a in accs)
    return Problem(tuple(services), accs, float(rng.uniform(0.3, 0.9)) * full_w,
                   ("token_speed", "cost", "energy")[int(rng.integers(0, 3))], batch_sizes=(16, 64, 128),
                   power_levels=(0.6, 0.8, 1.0), clock_levels=(1.0,) if rng.random() < 0.5 else (1.0, 0.8, 0.6))


def value(choice: Choice, shed: list[float]) -> float:
    return sum(c.value if c is not None else s for c, s in zip(choice, shed, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    exact = get_solver("milp", 30.0, 1e-6)
    solvers = {name: get_solver(name) for name in ("greedy", "auto")}
    gaps: dict[str, list[float]] = {name: [] for name in solvers}
    ms: dict[str, list[float]] = {name: [] for name in (*solvers, "milp")}
    for _ in range(args.cases):
        p = random_problem(rng)
        cands, shed = valued(p, enumerate_all(p))
        t0 = time.perf_counter()
        best = value(exact.choose(p, cands, shed)[0], shed)
        ms["milp"].append(1000 * (time.perf_counter() - t0))
        for name, solver in solvers.items():
            t0 = time.perf_counter()
            got = value(solver.choose(p, cands, shed)[0], shed)
            ms[name].append(1000 * (time.perf_counter() - t0))
            gaps[name].append((best - got) / abs(best) if best else 0.0)
    print(json.dumps({
        "cases": args.cases,
        **{name: {"mean_gap": round(float(np.mean(g)), 5), "max_gap": round(float(np.max(g)), 5),
                  "cases_over_1pct": int(np.sum(np.array(g) > 0.01)), "median_ms": round(float(np.median(ms[name])), 2)}
           for name, g in gaps.items()},
        "milp_median_ms": round(float(np.median(ms["milp"])), 2),
    }))


if __name__ == "__main__":
    with native_output_to_stderr():  # HiGHS's own prints: not into the JSON line
        main()
