"""Where a policy's SLO misses sit on a scenario, and what the power limits cost each service's engine steps.

    python benchmarks/prefill_power.py [--scenario config/scenarios/heavy-tail.toml] [--policy wattscale]
        [--duration-s 1200] [--services code,chat]

The heavy-tail scenario's misses (`wattscale`'s code 0.829 against `slo-only`'s 0.949) were suspected to be long,
compute-bound prefills slowed by caps that sum under the hard budget. This measures it on the emulator: it runs
one policy as `wattscale simulate` does (the same fleet, seed and arrivals) and prints, as JSON, the run's
figures, per named service every 60-s window's quantile TTFT and ITL (the service's statistic; `mean` services
their p95), the same TTFT quantile of its prompts under 4,000 tokens, its GPUs' mean limit and the share of the
window's requests that met the targets (`met`, as `simulate` scores them: a request not finished misses), and per
GPU (named by the service it ends the run on) the engine-step seconds the power limit
slowed and the seconds it cost: each step's length at the clock the limit allowed less its length at the clock
it would have run at without the limit. The step law is observed, not changed (simulator/hardware.py).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from controller.simulate.accounting import QUANTILES, WINDOW_S, figures, request_met, scored_end_s
from controller.simulate.runner import run
from controller.simulate.scenario import load_scenario
from controller.simulate.sizing import static_fleet
from simulator import hardware

LONG_PROMPT_TOKENS = 4000
"""Prompts at least this long are the heavy tail's (the scenario's tails start at 2,000 and 6,000 tokens)."""


@contextmanager
def throttle_meter() -> Iterator[dict[int, list[float]]]:
    """Per GPU index: [seconds of steps the limit slowed, seconds it cost], while the block runs."""
    seen: dict[int, list[float]] = {}
    step = hardware.SimGPU.run_step

    def metered(self: hardware.SimGPU, compute_ms: float, memory_ms: float, overhead_ms: float,
                serial_ms: float = 0.0) -> tuple[float, float, float]:
        clock, power_w, step_ms = step(self, compute_ms, memory_ms, overhead_ms, serial_ms)
        top = self.top_clock
        if clock < top:
            free_ms = hardware.step_length_ms(top, compute_ms, memory_ms, overhead_ms, serial_ms)
            acc = seen.setdefault(self.index, [0.0, 0.0])
            acc[0] += step_ms / 1000.0
            acc[1] += (step_ms - free_ms) / 1000.0
        return clock, power_w, step_ms

    hardware.SimGPU.run_step = metered  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        hardware.SimGPU.run_step = step  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="config/scenarios/heavy-tail.toml")
    ap.add_argument("--policy", default="wattscale")
    ap.add_argument("--duration-s", type=float, default=1200.0)
    ap.add_argument("--services", default="code,chat")
    args = ap.parse_args()
    scn = load_scenario(Path(args.scenario))
    seed = scn.settings.seed
    with throttle_meter() as throttled:
        r = run(scn, args.policy, seed, static_fleet(scn, seed), args.duration_s)
    fig = figures(scn, r)
    owner = {rep.gpu.index: name for name, svc in r.host.services.items() for rep in svc.replicas}
    out: dict[str, Any] = {
        "scenario": scn.settings.name, "policy": args.policy, "seed": seed, "duration_s": args.duration_s,
        "slo_attainment": {k: v["slo_attainment"] for k, v in fig["services"].items()},
        "tokens_per_joule": fig["tokens_per_joule"], "sum_t_over_c": fig["sum_t_over_c"],
        "budget_violation_s": fig["budget_violation_s"],
        "throttled": [{"gpu": i, "service": owner.get(i), "slowed_s": round(a[0], 1), "lost_s": round(a[1], 1)}
                      for i, a in sorted(throttled.items())],
        "windows": {},
    }
    for name in filter(None, args.services.split(",")):
        svc = next(s for s in scn.config.services if s.name == name)
        q = QUANTILES.get(svc.statistic, 95.0)
        log = r.host.services[name].requests
        fin = log.finished()
        arrived, met = request_met(svc, log.arrivals(), fin, scored_end_s(float(r.trace.t_s[-1])))  # as `simulate`
        rows = []
        for w in range(int(args.duration_s // WINDOW_S)):
            mine = (fin.arrival_s >= w * WINDOW_S) & (fin.arrival_s < (w + 1) * WINDOW_S)
            if not mine.any():
                continue
            short = mine & (fin.in_tokens < LONG_PROMPT_TOKENS)
            ttft = float(np.percentile(fin.ttft_s[mine], q) * 1000)
            itl = float(np.percentile(fin.itl_s[mine], q) * 1000)
            limits = r.trace.limit_w[name][int(w * WINDOW_S):int((w + 1) * WINDOW_S)]
            rows.append({"window": w, "requests": int(mine.sum()), "long_prompts": int((fin.in_tokens[mine] >=
                                                                                        LONG_PROMPT_TOKENS).sum()),
                         "ttft_q_ms": round(ttft, 1), "ttft_q_short_ms": round(float(
                             np.percentile(fin.ttft_s[short], q) * 1000), 1) if short.any() else None,
                         "itl_q_ms": round(itl, 2), "mean_limit_w": round(float(np.nanmean(limits)), 1),
                         "met": round(float(met[w] / arrived[w]), 4) if w < len(arrived) and arrived[w] else None})
        out["windows"][name] = {"quantile": q, "mean_ttft_q_ms": round(float(np.mean([x["ttft_q_ms"] for x in rows])),
                                                                       1), "rows": rows}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
