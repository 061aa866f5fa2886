"""Wall and CPU seconds per simulated hour of the 8-GPU host, per policy, of `wattscale simulate`.

    python benchmarks/simulate_speed.py [--scenario config/scenarios/tight-budget.toml] [--duration-s 900]

Each policy runs once on one core (this process), from the static fleet sized for the scenario's peak
(sizing's load tests are timed apart: they run once per seed, whatever the policies). The target
is <= 60 s of wall time per simulated hour per policy. Prints JSON: per policy wall_s,
cpu_s, and both per simulated hour; sizing_s; and the slowest policy's figure against the target.
Wall time counts what else the machine runs; cpu_s does not.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from controller.simulate.args import DEFAULT_POLICIES
from controller.simulate.runner import run
from controller.simulate.scenario import load_scenario
from controller.simulate.sizing import static_fleet

ROOT = Path(__file__).resolve().parents[1]
TARGET_S_PER_HOUR = 60.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default=str(ROOT / "config" / "scenarios" / "tight-budget.toml"))
    ap.add_argument("--duration-s", type=float, default=900.0, help="simulated seconds per policy")
    ap.add_argument("--policies", default=",".join(DEFAULT_POLICIES))
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    scn = load_scenario(Path(args.scenario))
    seed = scn.settings.seed
    wall = time.perf_counter()
    fleet = static_fleet(scn, seed)
    sizing_s = time.perf_counter() - wall
    out: dict[str, dict[str, float]] = {}
    hours = args.duration_s / 3600.0
    for policy in args.policies.split(","):
        wall, cpu = time.perf_counter(), time.process_time()
        run(scn, policy, seed, fleet, args.duration_s)
        w, c = time.perf_counter() - wall, time.process_time() - cpu
        out[policy] = {"wall_s": round(w, 2), "cpu_s": round(c, 2), "wall_s_per_sim_hour": round(w / hours, 1),
                       "cpu_s_per_sim_hour": round(c / hours, 1)}
    worst = max(out.values(), key=lambda p: p["cpu_s_per_sim_hour"])
    print(json.dumps({"scenario": scn.settings.name, "gpus": len(scn.gpu_types), "duration_s": args.duration_s,
                      "sizing_s": round(sizing_s, 2), "policies": out,
                      "slowest_cpu_s_per_sim_hour": worst["cpu_s_per_sim_hour"],
                      "target_s_per_sim_hour": TARGET_S_PER_HOUR,
                      "meets_target": worst["cpu_s_per_sim_hour"] <= TARGET_S_PER_HOUR}))


if __name__ == "__main__":
    main()
