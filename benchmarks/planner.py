"""Offline planner speed and quality on the shipped seed specs.

    python benchmarks/planner.py

- seed002_milp_s: the shared-capacity MILP's solve time per instance at 5,000 requests (max over the four
  scenarios x three traces; target <= 1), with the median beside it.
- seed002_greedy_gap: greedy cost / MILP cost - 1, max over every scenario x trace x scale (target <= 0.01).
- seed001_solve_s: the allocation MILP on config/plans/seed001-allocation.toml, median of 3 (target <= 1).
- seed001_robust_solve_s: the robust allocation MILP on config/plans/seed001-robust.toml (precision-dependent
  deviations, protection 0.5), median of 3 (target <= 1); _cpu_s beside it is this process's CPU time for the
  same solves (wall time on a shared machine counts other processes' turns too); _cost and
  _deterministic_cost (the same spec at protection 0) show what the protection costs.
Prints JSON.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from controller.cli_output import native_output_to_stderr
from controller.planner import load_plan_spec
from controller.planner.allocation import AllocationModel
from controller.planner.allocation_spec import AllocationSpec
from controller.planner.packing import available_cards, draw_workload, enumerate_configs, solve_greedy, solve_milp
from controller.planner.packing_spec import PackingSpec

PLANS = Path(__file__).resolve().parent.parent / "config" / "plans"


def main() -> None:
    packing = load_plan_spec(PLANS / "seed002-packing.toml")
    allocation = load_plan_spec(PLANS / "seed001-allocation.toml")
    robust = load_plan_spec(PLANS / "seed001-robust.toml")
    assert isinstance(packing, PackingSpec) and isinstance(allocation, AllocationSpec)
    assert isinstance(robust, AllocationSpec)
    configs = enumerate_configs(packing)
    milp_s_5000, gaps, greedy_s = [], [], []
    for scenario in packing.scenarios:
        cards = available_cards(packing, scenario)
        for trace in packing.traces:
            for n in packing.scales:
                counts = draw_workload(packing, trace, n)
                milp = solve_milp(configs, counts, cards, "shared", packing.time_limit_s, packing.mip_gap)
                greedy = solve_greedy(configs, counts, cards)
                gaps.append(greedy.cost_per_h / milp.cost_per_h - 1)
                greedy_s.append(greedy.solve_s)
                if n == 5000:
                    milp_s_5000.append(milp.solve_s)
    alloc_s = []
    for _ in range(3):
        result = AllocationModel(allocation).solve()
        alloc_s.append(result.solve_s)
    robust_s, robust_cpu_s = [], []
    for _ in range(3):
        cpu0 = time.process_time()
        robust_result = AllocationModel(robust).solve()
        robust_cpu_s.append(time.process_time() - cpu0)
        robust_s.append(robust_result.solve_s)
    nominal = AllocationModel(replace(robust, robust=replace(robust.robust, protection=0.0))).solve()
    print(json.dumps({
        "seed002_milp_s": round(max(milp_s_5000), 4),
        "seed002_milp_s_median": round(statistics.median(milp_s_5000), 4),
        "seed002_greedy_gap": round(max(gaps), 5),
        "seed002_greedy_gap_median": round(statistics.median(gaps), 5),
        "seed002_greedy_s": round(max(greedy_s), 5),
        "seed002_instances": len(gaps),
        "seed001_solve_s": round(statistics.median(alloc_s), 3),
        "seed001_total_cost": round(result.costs["total"], 2),
        "seed001_robust_solve_s": round(statistics.median(robust_s), 3),
        "seed001_robust_cpu_s": round(statistics.median(robust_cpu_s), 3),
        "seed001_robust_optimal": robust_result.optimal,
        "seed001_robust_cost": round(robust_result.costs["total"], 2),
        "seed001_robust_deterministic_cost": round(nominal.costs["total"], 2),
        "targets": {"seed002_milp_s": 1.0, "seed002_greedy_gap": 0.01, "seed001_solve_s": 1.0,
                    "seed001_robust_solve_s": 1.0},
    }))


if __name__ == "__main__":
    with native_output_to_stderr():  # HiGHS's own prints: not into the JSON line
        main()
