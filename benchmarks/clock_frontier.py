"""The emulator's own energy-attainment frontier for locked clocks against caps: no model, no optimizer.

    python benchmarks/clock_frontier.py [--service decode-heavy] [--requests 800] [--seed 0]

benchmarks/clock_gain.py compares what the optimizer plans; this measures what each lever can reach at best,
so a gain below expectations can be put on the plan (the model, the optimizer) or on the plant. One replica
of a clock_gain.py service (its whole load) runs on the emulator at every (max batch, clock level) with the
cap at the maximum, and at every (max batch, power level) with the clock free. For each attainment level (the
lower of the requests' TTFT and the tokens' ITL shares within the SLO's targets), the least energy per token
each lever reaches: caps at today's levels (>= 0.6 of the maximum limit), caps down to the driver's floor,
and clocks; and the savings of clocks against each. Prints JSON.
"""

from __future__ import annotations

import argparse
import json

from clock_runs import CAPS_LEVELS, CLOCK_LEVELS, FLOOR_LEVELS, GPU, SERVICES, TOLERANCE, attainment, score

from controller.optimizer import Assignment
from simulator.hardware import SPECS

BATCHES = (64, 128, 256)
LEVELS = (0.95, 0.97, 0.99, 0.995, 0.998)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--service", default="decode-heavy", choices=[s.name for s in SERVICES if s.rate_rps <= 8])
    ap.add_argument("--requests", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    svc = next(s for s in SERVICES if s.name == args.service)
    top_w = SPECS[GPU].max_limit_w
    runs: dict[str, list[dict[str, object]]] = {"clocks": [], "caps": []}
    for batch in BATCHES:
        for clock in CLOCK_LEVELS:
            runs["clocks"].append(score(svc, Assignment(GPU, 1, batch, top_w, clock), args.requests, args.seed))
        for level in FLOOR_LEVELS:
            runs["caps"].append(score(svc, Assignment(GPU, 1, batch, level * top_w), args.requests, args.seed))

    def best(arm: str, level: float, least_cap_w: float = 0.0) -> dict[str, object] | None:
        fits = [r for r in runs[arm] if attainment(r) >= level - TOLERANCE
                and float(r["assignment"]["cap_w"]) >= least_cap_w - 1.0]  # type: ignore[index]
        return min(fits, key=lambda r: float(r["energy_per_token_j"]), default=None)  # type: ignore[arg-type]

    def cut(a: dict[str, object] | None, b: dict[str, object] | None) -> float | None:
        if a is None or b is None:
            return None
        return round(1.0 - float(b["energy_per_token_j"]) / float(a["energy_per_token_j"]), 4)  # type: ignore[arg-type]

    frontier = {}
    for level in LEVELS:
        caps, floor, clocks = best("caps", level, min(CAPS_LEVELS) * top_w), best("caps", level), best("clocks", level)
        frontier[str(level)] = {
            "caps": caps and _line(caps), "floor_caps": floor and _line(floor), "clocks": clocks and _line(clocks),
            "clocks_saving_vs_caps": cut(caps, clocks), "clocks_saving_vs_floor_caps": cut(floor, clocks)}
    print(json.dumps({"service": svc.name, "rate_rps": svc.rate_rps, "seed": args.seed, "frontier": frontier},
                     indent=2, allow_nan=False))


def _line(r: dict[str, object]) -> str:
    a = r["assignment"]
    assert isinstance(a, dict)
    return (f"batch {a['max_batch']}, {a['cap_w']} W, clock {a['sm_clock_share'] or 'free'}: {r['energy_per_token_j']}"
            f" J/token at {r['power_w']} W, attainment {attainment(r):.4f}")


if __name__ == "__main__":
    main()
