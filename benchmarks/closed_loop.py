"""The whole control loop on the simulated host of config/sim.toml, in simulated time.

    python benchmarks/closed_loop.py [--config config/sim.toml] [--duration-s 1800] [--seeds 4]
                                     [--personality NAME] [--expert-weight-share X --expert-token-share Y]

The controller the daemon runs, stepped with explicit times (fast tick every fast_interval_s, slow
tick every slow_interval_s) against the token-level emulator: the ground truth it must learn and
steer. Prints JSON:
- per service: slo_windows (share of windows whose observed statistic met both SLOs, counted once
  traffic started), slo_windows_exact (the same windows judged on the exact statistic of every request and
  token the engines served in them, where the daemon, like Grafana, reads vLLM's histograms: a p95 inside a
  wide bucket, ITL's 25-50 ms, is read by linear interpolation), restarts (max-batch changes made), replicas_mean;
- peak_draw_w and over_budget_ticks (fast ticks whose measured draw exceeded the budget) against budget_w;
- tuner: updates by verdict over all pairs;
- controller_cpu_s_per_hour: CPU seconds of the controller's ticks (not the emulator's) per simulated hour.
One run's figures swing by 0.1 with the arrival stream, so the run is repeated over `--seeds`
simulator seeds (the config's seed, then the next ones, in parallel): `runs` holds each run, and
`slo_windows_mean` / `slo_windows_min` / `slo_windows_exact_mean` sum them up per service.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

from controller.cli_args import add_expert_args
from controller.control import Controller
from controller.own_metrics import OwnMetrics
from controller.settings import load_settings
from controller.simulate.accounting import QUANTILES
from controller.simulate.runner import slow_due
from controller.wiring import build_parts
from simulator.engine import VLLMEngine
from simulator.service import SimService
from tuner import Tuner

ROOT = Path(__file__).resolve().parents[1]


def _served_since(svc: SimService, seen: dict[str, tuple[VLLMEngine, int, int]]) -> tuple[NDArray[np.float64], ...]:
    """The TTFT and ITL samples (ms) the service's engines recorded since the last call (`seen`: each of its
    engines so far, with how many of its sample blocks were read; one scaled away since keeps its last ones)."""
    live = {r.engine.engine_id for r in svc.replicas}
    for r in svc.replicas:
        seen.setdefault(r.engine.engine_id, (r.engine, 0, 0))
    ttft, itl = [], []
    for key, (engine, n_ttft, n_itl) in list(seen.items()):
        new_ttft, new_itl = (engine.metrics.ttft.samples or [])[n_ttft:], (engine.metrics.itl.samples or [])[n_itl:]
        seen[key] = (engine, n_ttft + len(new_ttft), n_itl + len(new_itl))
        if key not in live:  # read for the last time
            del seen[key]
        ttft += new_ttft
        itl += new_itl
    return tuple(1000.0 * np.concatenate(x) if x else np.zeros(0) for x in (ttft, itl))


def run(config: str, seed: int | None, duration_s: float, budget_w: float | None = None,
        personality: str | None = None, experts: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:
    """One closed-loop run with the simulator seeded `seed` (None: the config's seed); `experts`: every service's
    prior's routing (expert weight share, expert token share), as a config of a mixture of experts writes it."""
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(config).read_text()
        cfg = Path(tmp) / "wattscale.toml"
        cfg.write_text(text.replace('state_dir = "../var/state"', f'state_dir = "{tmp}/state"'))
        s = load_settings(cfg)
        if seed is not None:
            s = replace(s, simulator=replace(s.simulator, seed=seed))
        if budget_w is not None:
            s = replace(s, power=replace(s.power, budget_w=budget_w))
        if personality is not None:
            s = replace(s, simulator=replace(s.simulator, personalities={v.model: personality for v in s.services}))
        if experts[0] > 0.0:
            s = replace(s, services=tuple(replace(v, prior=replace(v.prior, expert_weight_share=experts[0],
                                                                   expert_token_share=experts[1]))
                                          for v in s.services))
        parts = build_parts(s)
        assert parts.host is not None, "closed_loop needs a config whose parts are simulated"
        registry = CollectorRegistry()
        tuner = Tuner(s.state_path, queue_model=s.optimizer.queue_model)
        ctl = Controller(s, parts.gpus, parts.vllm, parts.power, parts.batch, parts.replicas, tuner,
                         OwnMetrics(registry), clocks=parts.clocks)
        parts.host.keep_samples_from_now()
        engines: dict[str, dict[str, tuple[VLLMEngine, int, int]]] = {}
        met: Counter[str] = Counter()
        exact: Counter[str] = Counter()
        seen: Counter[str] = Counter()
        restarts: Counter[str] = Counter()
        replica_sum: Counter[str] = Counter()
        peak, over, fast_cpu, slow_cpu, cycles, replicas = 0.0, 0, 0.0, 0.0, 0, 0
        t, next_slow = 0.0, s.daemon.slow_interval_s
        while t < duration_s:
            t += s.daemon.fast_interval_s
            parts.host.advance_to(t)
            started = time.process_time()
            early = ctl.tick_fast(t)
            fast_cpu += time.process_time() - started
            draw = registry.get_sample_value("wattscale_power_draw_watts") or 0.0
            peak, over = max(peak, draw), over + (draw > s.power.budget_w + 1e-6)
            due, next_slow = slow_due(early, t, next_slow, s.daemon.slow_interval_s)
            if due:
                batches = {name: a.max_batch for name, a in ctl.assignments.items()}
                started = time.process_time()
                ctl.tick_slow(t)
                slow_cpu += time.process_time() - started
                cycles += 1
                replicas += sum(a.replicas for a in ctl.assignments.values())
                for svc in s.services:
                    a = ctl.assignments[svc.name]
                    restarts[svc.name] += a.max_batch != batches[svc.name]
                    replica_sum[svc.name] += a.replicas
                    labels = {"service": svc.name, "stat": svc.statistic}
                    ttft = registry.get_sample_value("wattscale_service_ttft_observed_ms", labels)
                    itl = registry.get_sample_value("wattscale_service_itl_observed_ms", labels)
                    window = _served_since(parts.host.services[svc.name], engines.setdefault(svc.name, {}))
                    if ttft is not None and itl is not None:
                        seen[svc.name] += 1
                        met[svc.name] += ttft <= svc.ttft_ms and itl <= svc.itl_ms
                        stat = (np.mean if svc.statistic == "mean"
                                else partial(np.percentile, q=QUANTILES[svc.statistic]))
                        exact[svc.name] += all(len(v) and stat(v) <= target for v, target in
                                               zip(window, (svc.ttft_ms, svc.itl_ms), strict=True))
        verdicts: Counter[str] = Counter()
        for metric in registry.collect():
            if metric.name == "wattscale_tuner_updates":
                for sample in metric.samples:
                    if sample.name.endswith("_total"):
                        verdicts[sample.labels["result"]] += int(sample.value)
    return {
        "seed": seed,
        "slow_cycles": cycles,
        "services": {svc.name: {"slo_windows": round(met[svc.name] / seen[svc.name], 3) if seen[svc.name] else None,
                                "slo_windows_exact": round(exact[svc.name] / seen[svc.name], 3) if seen[svc.name]
                                else None,
                                "statistic": svc.statistic, "restarts": restarts[svc.name],
                                "replicas_mean": round(replica_sum[svc.name] / max(1, cycles), 2)}
                     for svc in s.services},
        "budget_w": s.power.budget_w,
        "peak_draw_w": round(peak, 1),
        "over_budget_ticks": over,
        "tuner": dict(sorted(verdicts.items())),
        "controller_cpu_s_per_hour": round((fast_cpu + slow_cpu) * 3600.0 / duration_s, 1),
        "fast_ms": round(1000 * fast_cpu / max(1, round(duration_s / s.daemon.fast_interval_s)), 3),
        "slow_ms": round(1000 * slow_cpu / max(1, cycles), 1),
        "cpu_percent": round(100 * (fast_cpu + slow_cpu) / duration_s, 3),
        "replicas_mean": round(replicas / max(1, cycles), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "config" / "sim.toml"))
    ap.add_argument("--duration-s", type=float, default=1800.0)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--budget-w", type=float, default=None, help="site budget in watts instead of the config's")
    ap.add_argument("--personality", default=None, help="every service's engine personality (simulator/personality.py)")
    add_expert_args(ap)  # every service's prior's
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if bool(args.expert_weight_share) != bool(args.expert_token_share):
        ap.error("--expert-weight-share and --expert-token-share go together (a mixture of experts' routing)")
    first = load_settings(Path(args.config)).simulator.seed
    seeds = [first + k for k in range(args.seeds)]
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(run, [args.config] * len(seeds), seeds, [args.duration_s] * len(seeds),
                             [args.budget_w] * len(seeds), [args.personality] * len(seeds),
                             [(args.expert_weight_share, args.expert_token_share)] * len(seeds)))
    slo: dict[str, list[float]] = {}
    for r in runs:
        for name, svc in r["services"].items():
            if svc["slo_windows"] is not None:
                slo.setdefault(name, []).append(svc["slo_windows"])
    print(json.dumps({
        "duration_s": args.duration_s,
        "seeds": seeds,
        "slo_windows_mean": {k: round(sum(v) / len(v), 3) for k, v in slo.items()},
        "slo_windows_min": {k: min(v) for k, v in slo.items()},
        "slo_windows_exact_mean": {k: round(sum(r["services"][k]["slo_windows_exact"] for r in runs
                                                if r["services"][k]["slo_windows_exact"] is not None) / len(v), 3)
                                   for k, v in slo.items()},
        "restarts_mean": {k: sum(r["services"][k]["restarts"] for r in runs) / len(runs) for k in slo},
        "over_budget_ticks": sum(r["over_budget_ticks"] for r in runs),
        "peak_draw_w": max(r["peak_draw_w"] for r in runs),
        "controller_cpu_s_per_hour": round(sum(r["controller_cpu_s_per_hour"] for r in runs) / len(runs), 1),
        "runs": runs,
    }))


if __name__ == "__main__":
    main()
