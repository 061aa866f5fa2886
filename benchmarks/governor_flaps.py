"""Whether the power governor's limits settle on a steady load: random sites, stepped until they should rest.

    python benchmarks/governor_flaps.py [--sites 400] [--ticks 300]

Each site draws 2-8 GPUs (lowest limit 100 or 200 W, highest 250 or 500 W above it), services of three priorities
or none, caps of 150-700 W, a budget of 30-100 % of the highest limits, a rack over some of the GPUs on six sites
in ten, and ramp limits of 0, 20 or 200 W/s up and 0 or 20 W/s down. Each GPU's load is steady: under its lowest
limit (idle) or above it; it draws the lower of its load and its limit, plus Gaussian noise of 0, 2 or 5 W, and
reports the share of the tick its limit held its clock (NVML's power violation time) as the share of a draw
spread by that noise around its load that passes the limit (`capped_share`; `reading_only`: no such counter, the
GPU judged by its reading alone). After `--ticks` ticks, a site flaps where some limit moved by 5 W or more on more
than a tenth of the last third's ticks. Prints JSON per GPU kind and noise level: `flapping_sites` (of `--sites`)
and `moved_w_per_tick` (watts of limits moved a tick over the last third, the mean over sites, and its 90th and
99th percentiles): what the actuators are asked to do while nothing changes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics

from controller.governor import PowerGovernor
from controller.plan import Plan
from controller.settings import PowerDomainSettings, PowerSettings
from controller.telemetry.base import GpuSample

NOISE_W = (0.0, 2.0, 5.0)
MOVED_W = 5.0
"""A limit moved by this much or more in one tick counts as a move."""


def capped_share(load_w: float, limit_w: float, noise_w: float) -> float:
    """The share of a tick a draw spread by `noise_w` around `load_w` passes `limit_w`."""
    if noise_w <= 0:
        return 1.0 if load_w > limit_w else 0.0
    return 0.5 * math.erfc((limit_w - load_w) / (noise_w * math.sqrt(2.0)))


def site_moves(seed: int, noise_w: float, ticks: int, counted: bool) -> tuple[bool, float]:
    """Whether one random site flaps, and the watts of limits it moved a tick over the last third; `counted`: its
    GPUs report their capped share."""
    rnd = random.Random(seed)
    n = rnd.randint(2, 8)
    mins = [rnd.choice([100.0, 200.0]) for _ in range(n)]
    maxs = [m + rnd.choice([250.0, 500.0]) for m in mins]
    owner = [rnd.choice(["a", "b", "c", None]) for _ in range(n)]
    plan = Plan.of(1, {s: {"X": rnd.uniform(150, 700)} for s in "abc"}, {"a": 1, "b": 2, "c": 3})
    budget = rnd.uniform(0.3, 1.0) * sum(maxs)
    domains = []
    if rnd.random() < 0.6:
        order = list(range(n))
        rnd.shuffle(order)
        rack = tuple(sorted(order[:rnd.randint(1, n)]))
        rack_w = min(budget, rnd.uniform(0.3, 1.0) * sum(maxs[i] for i in rack))
        domains.append(PowerDomainSettings("rack", rack_w, rack))
    governor = PowerGovernor(PowerSettings(budget_w=budget, ramp_up_w_per_s=rnd.choice([0.0, 20.0, 200.0]),
                                           ramp_down_w_per_s=rnd.choice([0.0, 20.0]), domains=tuple(domains)))
    load = [rnd.choice([rnd.uniform(50, mins[i] - 10), rnd.uniform(mins[i] + 50, maxs[i])]) for i in range(n)]
    limit = list(maxs)
    seen = []
    for _ in range(ticks):
        samples = [GpuSample(i, f"G{i}", "X", min(load[i], limit[i]) + rnd.gauss(0.0, noise_w), None, limit[i],
                             mins[i], maxs[i], service=owner[i], variant="X",
                             capped_share=capped_share(load[i], limit[i], noise_w) if counted else None)
                   for i in range(n)]
        for i, w in governor.step(samples, plan).items():
            limit[i] = w
        seen.append(list(limit))
    tail = seen[2 * ticks // 3:]
    steps = [[abs(x - y) for x, y in zip(a, b, strict=True)] for a, b in itertools.pairwise(tail)]
    moves = sum(1 for step in steps if max(step) >= MOVED_W)
    return moves > len(steps) / 10, statistics.fmean(sum(step) for step in steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, default=400)
    parser.add_argument("--ticks", type=int, default=300)
    args = parser.parse_args()
    if args.sites < 1 or args.ticks < 30:
        parser.error("--sites must be at least 1 and --ticks at least 30")
    out: dict[str, dict[str, object]] = {}
    for kind, counted in (("capped_share", True), ("reading_only", False)):
        for noise_w in NOISE_W:
            runs = [site_moves(seed, noise_w, args.ticks, counted) for seed in range(args.sites)]
            moved = sorted(w for _, w in runs)
            out.setdefault(kind, {})[f"noise_{noise_w:g}_w"] = {
                "flapping_sites": sum(flaps for flaps, _ in runs),
                "moved_w_per_tick": {"mean": round(statistics.fmean(moved), 2),
                                     "p90": round(moved[int(0.9 * (len(moved) - 1))], 2),
                                     "p99": round(moved[int(0.99 * (len(moved) - 1))], 2)}}
    print(json.dumps({"sites": args.sites, "ticks": args.ticks, **out}))


if __name__ == "__main__":
    main()
