"""Speed of the queue model: one full analysis (means, p95/p99 tails, power) and one sizing.

    python benchmarks/queue_speed.py [--family gen1]

Prints JSON: analyze_us (median over repeats, K = 1,000, batch 64, a 400 W cap on an H100 profile),
max_rate_ms for mean and p95 targets (median), and analyze_us at K = 10,000 for scale. The step family, the
daemon's default (its roofline: a convex decode step, a prompt's cost at the load's batch, a token budget), unless
`--family gen1` times llm-inferno's affine law.
"""

from __future__ import annotations

import argparse
import json
import statistics
import timeit

from queuemodels import DEFAULT_MODEL, Load, ServerShape, ServiceParams, Targets, get_model
from queuemodels.accelerators import profile

TARGETS = {"analyze_us": 500.0, "max_rate_ms": 20.0}
"""Upper bounds, in wall time: a loaded or slower machine reads them higher."""


def median_s(fn: object, number: int, repeat: int = 7) -> float:
    times = timeit.repeat(fn, number=number, repeat=repeat)  # type: ignore[arg-type]
    return statistics.median(times) / number


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="step", choices=("gen1", "step"))
    args = ap.parse_args()
    model = get_model(DEFAULT_MODEL)
    params = ServiceParams(args.family, alpha_ms=20.0, beta_ms=0.5, gamma_ms=30.0, delta_ms=0.02).with_step_defaults()
    load = Load(rate_rps=5.0, in_tokens=512, out_tokens=128)
    h100 = profile("H100-SXM")
    shape = ServerShape(max_batch=64, max_queue=1000 - 64, power_cap_w=400.0)
    big = ServerShape(max_batch=64, max_queue=10_000 - 64, power_cap_w=400.0)
    mean_t = Targets(ttft_ms=2000.0, itl_ms=60.0, statistic="mean")
    p95_t = Targets(ttft_ms=2000.0, itl_ms=60.0, statistic="p95")
    out = {
        "analyze_us": 1e6 * median_s(lambda: model.analyze(params, load, shape, h100), 200),
        "analyze_us_k10000": 1e6 * median_s(lambda: model.analyze(params, load, big, h100), 50),
        "max_rate_ms": 1e3 * median_s(lambda: model.max_rate(params, load, shape, p95_t, h100), 10),
        "max_rate_ms_mean_targets": 1e3 * median_s(lambda: model.max_rate(params, load, shape, mean_t, h100), 20),
        "targets": TARGETS,
    }
    out["met"] = {k: out[k] <= v for k, v in TARGETS.items()}
    out["model"] = model.name
    out["family"] = args.family
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
