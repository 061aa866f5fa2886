"""The emulator's own speed-energy frontier for a scenario's fleet: what the best plan of a grid reaches, with no
model, no optimizer and no controller, so that a missed energy target can be told apart from a missed plan.

The simulate targets ask `wattscale` for tokens per joule >= 1.3 x `static`'s together with sum T/C >= 1.15 x
`uniform-cap`'s. Whether any plan reaches both is a fact of the engines, so this measures it on them: each service
at its mean rate (bursts and cycles left out) on 1..max_replicas replicas (the load split evenly), each replica at
the config's max batch with its SM clock free or locked at 0.7, 0.5 or 0.3 of the maximum, load-tested on the
scenario's hidden engine (simulator/probe.py). A replica's figures: its draw above its GPU's with no process (a GPU
with no replica draws that under any plan) and its T/C, mean output tokens over the request's mean time in the
system (mean TTFT + mean output x mean ITL). A plan is one option per service within the host's GPUs; a small MILP
picks the fastest plan at 1.3 x the static fleet's tokens per joule (same tokens served: the site's draw at most
static's / 1.3) and the least-drawing plan at 1.15 x the uniform-cap fleet's T/C (every serving GPU capped at the
budget's split, as `uniform-cap` splits it: GPUs with no replica at their floor).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from controller.lp import Lp
from controller.simulate.baselines import level_limits
from controller.simulate.plant import token_mix
from controller.simulate.scenario import Scenario
from controller.simulate.sizing import replica_for
from controller.strict_json import rounded
from simulator.hardware import SPECS
from simulator.probe import Replica, measure
from simulator.workload import TokenSampler

CLOCKS = (None, 0.7, 0.5, 0.3)
"""SM clock locks tried, shares of the maximum (None: free)."""
REQUESTS = 1500
"""Requests of one load test (the first 15 % are warm-up)."""
MIN_SERVED = 0.97
"""An option must complete this share of its offered rate: the plans are compared at the same tokens served, and
an overloaded replica's low draw serves less (its TTFT, of the requests that started, reads short too)."""
MAX_LOAD_TESTS = 256
"""Most load tests a frontier runs (about 0.3 s each on one core); a larger host is not measured."""
TOKENS_PER_JOULE_GAIN = 1.3
"""The tokens-per-joule target, x `static`'s."""
T_OVER_C_GAIN = 1.15
"""The sum T/C target, x `uniform-cap`'s."""


class FrontierUnavailable(Exception):
    """The frontier cannot be measured for this scenario; the message says why."""


@dataclass(frozen=True)
class Option:
    """One service's replicas at one clock, load-tested."""

    replicas: int
    clock: float | None
    """SM clock lock, share of the maximum (None: free)."""
    dynamic_w: float
    """The replicas' draw above their GPUs' with no process."""
    t_over_c: float
    ttft_ms: float | None
    """Mean TTFT of the requests that started (None: none did)."""
    itl_ms: float | None
    served_share: float
    """Completions over the offered rate: under MIN_SERVED the option is overloaded and left out of the plans."""


@dataclass(frozen=True)
class _Probe:
    """One service's load test: its whole mean rate split evenly over `n` replicas."""

    counts: range
    """The replica counts the grid tries: max(1, min_replicas) to max_replicas, within the host's GPUs."""
    static_n: int
    """The static fleet's replicas of it."""
    replica: Replica
    rate_rps: float
    prompts: TokenSampler
    outputs: TokenSampler
    max_batch: int
    seed: int

    def run(self, n: int, clock: float | None, cap_w: float | None = None) -> Option:
        spec = SPECS[self.replica.gpu_type]
        mhz = None if clock is None else int(round(clock * spec.max_clock_mhz / 15) * 15)
        m = measure(self.replica, self.rate_rps / n, self.prompts, self.outputs, self.max_batch, power_limit_w=cap_w,
                    requests=REQUESTS, seed=self.seed, locked_clock_mhz=mhz)
        t_over_c = m.out_tokens / (m.ttft_ms / 1e3 + m.out_tokens / m.tokens_per_step * m.itl_ms / 1e3)  # ITL a step
        if not math.isfinite(t_over_c):  # no request reached its first token in the window: none served
            t_over_c = 0.0
        served = m.throughput_rps / m.rate_rps if m.rate_rps > 0 else 0.0
        return Option(n, clock, round(n * (m.power_w - spec.empty_w), 1), round(t_over_c, 2), rounded(m.ttft_ms, 1),
                      rounded(m.itl_ms, 2), round(served, 3))


def _probes(scn: Scenario, fleet: dict[str, dict[str, int]], probe_seed: int) -> tuple[str, dict[str, _Probe]]:
    """The host's one GPU type and a probe per service; FrontierUnavailable where the grid cannot be measured."""
    types = sorted(set(scn.gpu_types))
    if len(types) > 1:
        raise FrontierUnavailable(f"the host has several GPU types ({', '.join(types)}); the frontier load-tests one")
    probes: dict[str, _Probe] = {}
    tests = 0
    for svc in scn.config.services:
        w = scn.workload(svc.name)
        if w.rate_rps <= 0:
            raise FrontierUnavailable(f"{svc.name} has no load (rate_rps 0) to load-test")
        static_n = sum(fleet.get(svc.name, {}).values())
        counts = range(max(1, svc.min_replicas), min(svc.max_replicas, len(scn.gpu_types)) + 1)
        if static_n not in counts:
            raise FrontierUnavailable(f"the static fleet runs {static_n} replicas of {svc.name}, outside the "
                                      f"{counts.start} to {counts.stop - 1} the grid tries")
        prompts, outputs = token_mix(w, svc.in_tokens, svc.out_tokens)
        probes[svc.name] = _Probe(counts, static_n, replica_for(scn, svc, types[0], scn.settings.seed), w.rate_rps,
                                  prompts, outputs, svc.initial_max_batch, probe_seed)
        tests += len(counts) * len(CLOCKS) + 1
    if tests > MAX_LOAD_TESTS:
        raise FrontierUnavailable(f"it would take {tests} load tests (at most {MAX_LOAD_TESTS} are run)")
    return types[0], probes


def pick(options: list[list[Option]], gpus: int, *, most_speed_within_w: float | None = None,
         least_draw_for_speed: float | None = None) -> list[Option] | None:
    """One option per service within `gpus`: the fastest within a draw above idle, or the least drawing at a
    speed (None where no plan of the grid fits), on the project's MILP builder (controller/lp.py)."""
    lp = Lp()
    fastest = most_speed_within_w is not None
    chosen = [[lp.var((k, j), 0.0, 1.0, integer=True, cost=-o.t_over_c if fastest else o.dynamic_w)
               for j, o in enumerate(opts)] for k, opts in enumerate(options)]
    flat = [(v, o) for vs, opts in zip(chosen, options, strict=True) for v, o in zip(vs, opts, strict=True)]
    for vs in chosen:
        lp.row(((v, 1.0) for v in vs), 1.0, 1.0)
    lp.row(((v, float(o.replicas)) for v, o in flat), 0.0, float(gpus))
    if most_speed_within_w is not None:
        lp.row(((v, o.dynamic_w) for v, o in flat), -float("inf"), most_speed_within_w)
    else:
        lp.row(((v, o.t_over_c) for v, o in flat), least_draw_for_speed or 0.0, float("inf"))
    res = lp.solve()
    if res.ok and not res.optimal:  # a plan of a few hundred options takes milliseconds: one that does not is no bound
        raise FrontierUnavailable("its MILP stopped at its time limit (10 s) before it proved a plan best")
    return [o for v, o in flat if res.x[v] > 0.5] if res.ok else None


def frontier(scn: Scenario, fleet: dict[str, dict[str, int]], probe_seed: int = 1) -> dict[str, Any]:
    """The static and uniform-cap fleets' figures on the grid, and the two best plans (None where none fits);
    FrontierUnavailable where it cannot be measured."""
    gpu_type, probes = _probes(scn, fleet, probe_seed)
    gpus = len(scn.gpu_types)
    idle_w = SPECS[gpu_type].empty_w * gpus  # every GPU with no process; a replica's idle is in its option
    spec, serving = SPECS[gpu_type], sum(p.static_n for p in probes.values())
    room_w = scn.start_budget_w - (gpus - serving) * spec.min_limit_w  # uniform-cap's split: empty GPUs at the floor
    even_cap_w = level_limits(room_w, [(spec.min_limit_w, spec.max_limit_w)] * serving)[0]
    options = {name: [p.run(n, c) for n in p.counts for c in CLOCKS] for name, p in probes.items()}
    static = {name: next(o for o in options[name] if o.replicas == p.static_n and o.clock is None)
              for name, p in probes.items()}
    uniform = {name: p.run(static[name].replicas, None, even_cap_w) for name, p in probes.items()}
    static_w = idle_w + sum(o.dynamic_w for o in static.values())
    uniform_tc = sum(o.t_over_c for o in uniform.values())
    names = list(options)

    meets_both = False

    def plan(chosen: list[Option] | None) -> dict[str, Any] | None:
        nonlocal meets_both
        if chosen is None:
            return None
        draw_w = idle_w + sum(o.dynamic_w for o in chosen)
        tc = sum(o.t_over_c for o in chosen)
        meets_both |= static_w / draw_w >= TOKENS_PER_JOULE_GAIN and tc / uniform_tc >= T_OVER_C_GAIN
        return {"draw_w": round(draw_w, 1), "t_over_c": round(tc, 2),
                "tokens_per_joule_vs_static": round(static_w / draw_w, 3),
                "t_over_c_vs_uniform_cap": round(tc / uniform_tc, 3),
                "plan": {n: asdict(o) for n, o in zip(names, chosen, strict=True)}}

    grid = [[o for o in options[n] if o.served_share >= MIN_SERVED] for n in names]
    if not all(grid):
        raise FrontierUnavailable(f"{names[grid.index([])]} is overloaded on every option of the grid")
    at_energy = plan(pick(grid, gpus, most_speed_within_w=static_w / TOKENS_PER_JOULE_GAIN - idle_w))
    at_speed = plan(pick(grid, gpus, least_draw_for_speed=T_OVER_C_GAIN * uniform_tc))
    return {
        "gpus": gpus, "gpu_type": gpu_type, "idle_w": idle_w, "clocks": list(CLOCKS), "requests": REQUESTS,
        "static": {"draw_w": round(static_w, 1), "t_over_c": round(sum(o.t_over_c for o in static.values()), 2),
                   "plan": {n: asdict(o) for n, o in static.items()}},
        "uniform_cap": {"t_over_c": round(uniform_tc, 2), "cap_w": round(even_cap_w, 1)},
        "most_t_over_c_at_energy_target": at_energy, "most_tokens_per_joule_at_speed_target": at_speed,
        "meets_both": meets_both,
        "options": {n: [asdict(o) for o in opts] for n, opts in options.items()},
    }


def _plan_words(plan: dict[str, Any]) -> str:
    return ", ".join(f"{name} {o['replicas']} replica{'s' * (o['replicas'] != 1)} at "
                     + ("the free clock" if o["clock"] is None else f"{o['clock']:g} of the clock")
                     for name, o in plan["plan"].items())


def explain(front: dict[str, Any]) -> str:
    """Why the energy targets were missed, in the frontier's figures (a bound from load tests, not this run's)."""
    at_energy, at_speed = front["most_t_over_c_at_energy_target"], front["most_tokens_per_joule_at_speed_target"]
    words = ["a bound from load tests, not from this run: each service alone at its steady mean rate on 1 to "
             "max_replicas replicas, its SM clock free or locked at 0.7, 0.5 or 0.3, no power caps, no SLO required, "
             f"options that complete under {MIN_SERVED:.0%} of their load left out; ratios against the same tests' "
             f"static fleet and even-cap fleet (every serving GPU at {front['uniform_cap']['cap_w']:g} W, the starting "
             "budget's split as uniform-cap's, GPUs with no replica at their floor), not against the rows above. "]
    words.append(f"The fastest plan at {TOKENS_PER_JOULE_GAIN:g} x static's tokens per joule reaches "
                 f"{at_energy['t_over_c_vs_uniform_cap']:g} x the even-cap fleet's sum T/C ({_plan_words(at_energy)})"
                 if at_energy else f"No tested plan reaches {TOKENS_PER_JOULE_GAIN:g} x static's tokens per joule")
    words.append(f"; the most efficient plan at {T_OVER_C_GAIN:g} x the even-cap fleet's sum T/C reaches "
                 f"{at_speed['tokens_per_joule_vs_static']:g} x static's tokens per joule ({_plan_words(at_speed)})"
                 if at_speed else f"; no tested plan reaches {T_OVER_C_GAIN:g} x the even-cap fleet's sum T/C")
    words.append("; a tested plan meets both (at steady load, no SLO required), which wattscale's plans did not "
                 "reach" if front["meets_both"] else "; no tested plan meets both")
    return "".join(words)
