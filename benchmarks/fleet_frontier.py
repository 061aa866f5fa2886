"""The emulator's own speed-energy frontier for a scenario's fleet: no model, no optimizer, no controller.

    python benchmarks/fleet_frontier.py [--scenario config/scenarios/diurnal.toml] [--requests 1500] [--seed 1]

The simulate targets ask wattscale for tokens per joule >= 1.3 x `static`'s with sum T/C >= 1.15 x `uniform-cap`'s.
Whether any plan reaches both is a fact of the engines, so this measures it on them, as clock_frontier.py does
for one service: each service at its mean rate (the cycle's mean; bursts left out) on 1..max_replicas replicas
(the load split evenly), each replica at the config's max batch with its SM clock free or locked at 0.7, 0.5 or
0.3 of the maximum, load-tested on the scenario's hidden engine (simulator/probe.py). A replica's figures: its
draw above idle (idle GPUs draw as much under any plan) and its T/C, mean output tokens over the request's
mean time in the system (mean TTFT + mean output x mean ITL). Every combination of one option per service is a
fleet plan (within the host's GPUs); the script prints, as JSON, the static fleet's (full clock) figures, the
most T/C any plan reaches at 1.3 x the static fleet's tokens per joule (the site's draw the idle GPUs' plus the
plan's), and the most tokens per joule any plan reaches at the T/C the target needs (1.15 x the uniform-cap
fleet's, measured with every GPU capped at the budget's even share).
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from controller.simulate.plant import token_mix
from controller.simulate.report import T_OVER_C_GAIN, TOKENS_PER_JOULE_GAIN
from controller.simulate.scenario import load_scenario
from controller.simulate.sizing import replica_for, static_fleet
from simulator.hardware import SPECS
from simulator.probe import Replica, measure
from simulator.workload import TokenSampler

CLOCKS = (None, 0.7, 0.5, 0.3)
"""SM clock locks tried, shares of the maximum (None: free)."""


@dataclass(frozen=True)
class Probe:
    """One service's load test: its whole mean rate split evenly over `n` replicas."""

    replica: Replica
    rate_rps: float
    prompts: TokenSampler
    outputs: TokenSampler
    max_batch: int
    requests: int
    seed: int

    def run(self, n: int, clock: float | None, cap_w: float | None = None) -> dict[str, float | int | None]:
        spec = SPECS[self.replica.gpu_type]
        mhz = None if clock is None else int(round(clock * spec.max_clock_mhz / 15) * 15)
        m = measure(self.replica, self.rate_rps / n, self.prompts, self.outputs, self.max_batch, power_limit_w=cap_w,
                    requests=self.requests, seed=self.seed, locked_clock_mhz=mhz)
        t_over_c = m.out_tokens / (m.ttft_ms / 1e3 + m.out_tokens * m.itl_ms / 1e3)
        return {"replicas": n, "clock": clock, "dynamic_w": round(n * (m.power_w - spec.idle_w), 1),
                "t_over_c": round(t_over_c, 2), "ttft_ms": round(m.ttft_ms, 1), "itl_ms": round(m.itl_ms, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="config/scenarios/diurnal.toml")
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    scn = load_scenario(Path(args.scenario))
    seed = scn.settings.seed
    if len(set(scn.gpu_types)) > 1:
        raise SystemExit(f"{args.scenario}: a host of several GPU types ({sorted(set(scn.gpu_types))}); "
                         "the frontier load-tests one")
    gpu_type = scn.gpu_types[0]
    spec = SPECS[gpu_type]
    fleet = static_fleet(scn, seed)
    budget_w = scn.settings.budget_w or scn.config.power.budget_w
    even_cap_w = budget_w / len(scn.gpu_types)

    options: dict[str, list[dict[str, float | int | None]]] = {}
    static: dict[str, dict[str, float]] = {}
    uniform: dict[str, dict[str, float]] = {}
    for svc in scn.config.services:
        w = scn.workload(svc.name)
        prompts, outputs = token_mix(w, svc.in_tokens, svc.out_tokens)
        replica = replica_for(scn, svc, gpu_type, seed)

        probe = Probe(replica, w.rate_rps, prompts, outputs, svc.initial_max_batch, args.requests, args.seed)
        options[svc.name] = [probe.run(n, c) for n in range(1, min(svc.max_replicas, len(scn.gpu_types)) + 1)
                             for c in CLOCKS]
        n_static = sum(fleet.get(svc.name, {}).values())
        static[svc.name] = next(o for o in options[svc.name] if o["replicas"] == n_static and o["clock"] is None)
        uniform[svc.name] = probe.run(n_static, None, even_cap_w)

    idle_w = spec.idle_w * len(scn.gpu_types)

    def totals(plan: dict[str, dict[str, float]]) -> tuple[float, float]:
        return (idle_w + sum(float(o["dynamic_w"]) for o in plan.values()),
                sum(float(o["t_over_c"]) for o in plan.values()))

    static_w, static_tc = totals(static)
    _, uniform_tc = totals(uniform)
    draw_bound_w = static_w / TOKENS_PER_JOULE_GAIN  # same tokens served: tokens per joule scale as 1 / draw
    speed_need = T_OVER_C_GAIN * uniform_tc
    names = list(options)
    plans = []
    for combo in itertools.product(*(options[n] for n in names)):
        if sum(int(o["replicas"]) for o in combo) <= len(scn.gpu_types):  # type: ignore[arg-type]
            draw_w, tc = totals(dict(zip(names, combo, strict=True)))  # type: ignore[arg-type]
            plans.append((draw_w, tc, combo))
    at_energy = [p for p in plans if p[0] <= draw_bound_w]
    at_speed = [p for p in plans if p[1] >= speed_need]

    def line(p: tuple[float, float, tuple[dict[str, float | int | None], ...]] | None) -> dict[str, object] | None:
        if p is None:
            return None
        return {"draw_w": round(p[0], 1), "t_over_c": round(p[1], 2),
                "tokens_per_joule_vs_static": round(static_w / p[0], 3),
                "t_over_c_vs_uniform_cap": round(p[1] / uniform_tc, 3), "plan": dict(zip(names, p[2], strict=True))}

    print(json.dumps({
        "scenario": scn.settings.name, "gpus": len(scn.gpu_types), "idle_w": idle_w, "seed": seed,
        "static": {"draw_w": round(static_w, 1), "t_over_c": round(static_tc, 2), "plan": static},
        "uniform_cap": {"t_over_c": round(uniform_tc, 2), "cap_w": round(even_cap_w, 1)},
        "most_t_over_c_at_1.3x_tokens_per_joule": line(max(at_energy, key=lambda p: p[1], default=None)),
        "most_tokens_per_joule_at_1.15x_t_over_c": line(min(at_speed, key=lambda p: p[0], default=None)),
        "options": options,
    }, allow_nan=False))


if __name__ == "__main__":
    main()
