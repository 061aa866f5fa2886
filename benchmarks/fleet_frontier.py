"""The emulator's own speed-energy frontier for a scenario's fleet: no model, no optimizer, no controller.

    python benchmarks/fleet_frontier.py [--scenario config/scenarios/diurnal.toml]

What `wattscale simulate` measures to explain a missed energy target (controller/simulate/frontier.py: each
service at its mean rate on 1..max_replicas replicas, the SM clock free or locked at 0.7, 0.5 or 0.3, every
plan within the host's GPUs), printed whole as JSON: the static fleet's figures on that grid, the fastest plan at
1.3 x its tokens per joule, the least-drawing plan at 1.15 x the uniform-cap fleet's sum T/C, and every option.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from controller.simulate.frontier import FrontierUnavailable, frontier
from controller.simulate.scenario import load_scenario
from controller.simulate.sizing import static_fleet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="config/scenarios/diurnal.toml")
    args = ap.parse_args()
    scn = load_scenario(Path(args.scenario))
    try:
        front = frontier(scn, static_fleet(scn, scn.settings.seed))
    except FrontierUnavailable as exc:
        raise SystemExit(f"{args.scenario}: {exc}") from None
    print(json.dumps({"scenario": scn.settings.name, "seed": scn.settings.seed, **front}, allow_nan=False))


if __name__ == "__main__":
    main()
