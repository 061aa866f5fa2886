"""`wattscale` command line: run, check-config, analyze, tune, optimize, plan, gpus."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from importlib.metadata import version
from pathlib import Path

from controller.config_loader import ConfigError
from controller.preflight import preflight
from controller.settings import load_settings
from queuemodels import (
    DEFAULT_MODEL,
    MODELS,
    Load,
    ModelInputError,
    PowerProfile,
    ServerShape,
    ServiceParams,
    Targets,
    best_batch_for_power,
    best_batch_for_rate,
    get_model,
)
from queuemodels.accelerators import profile
from tuner.offline import ObservationFileError


def _run(args: argparse.Namespace) -> int:
    from controller.daemon import Daemon

    settings = load_settings(Path(args.config))
    warnings = preflight(settings)
    logging.basicConfig(level=settings.daemon.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    log = logging.getLogger("wattscale.daemon")
    for warning in warnings:
        log.warning("%s", warning)
    log.info("tuner state: %s", settings.state_path.resolve())
    return Daemon(Path(args.config), settings).run(args.duration)


def _check(args: argparse.Namespace) -> int:
    """The file's checks and the host probes `run` makes before it starts (the same functions)."""
    s = load_settings(Path(args.file))
    for warning in preflight(s):
        print(f"wattscale: warning: {warning}", file=sys.stderr)
    print(f"{args.file}: ok ({len(s.services)} services, budget {s.power.budget_w:.0f} W)")
    return 0


def _gpus(args: argparse.Namespace) -> int:
    """A read-only listing of what the `nvml` source sees (nothing is set)."""
    from dataclasses import asdict

    from actuators import ActuatorError
    from actuators.nvml import NvmlDevices

    try:
        devices = NvmlDevices()
        readings = [asdict(devices.read(i)) for i in range(devices.count())]
        devices.close()
    except ActuatorError as exc:
        print(f"wattscale: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(readings, indent=2))
        return 0
    for r in readings:
        power = "-" if r["power_w"] is None else f"{r['power_w']:.0f} W"
        print(f"{r['index']}: {r['name']} {r['uuid']}  power {power} of limit {r['power_limit_w']:.0f} W "
              f"({r['min_limit_w']:.0f}-{r['max_limit_w']:.0f} W), capped {r['power_capped']}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    numbers = ("alpha_ms", "beta_ms", "gamma_ms", "delta_ms", "in_tokens", "out_tokens", "rate_rps", "in_cv", "out_cv")
    for name in numbers:
        value = getattr(args, name)
        if value is None or not math.isfinite(value) or value < 0:
            raise ModelInputError(f"--{name.replace('_', '-')}: must be a finite number >= 0, got {value}")
    params = ServiceParams(args.family, args.alpha_ms, args.beta_ms, args.gamma_ms, args.delta_ms)
    load = Load(args.rate_rps, args.in_tokens, args.out_tokens, args.in_cv, args.out_cv)
    shape = ServerShape(args.max_batch, None if args.max_queue < 0 else args.max_queue, args.power_cap_w)
    prof = profile(args.accelerator) if args.accelerator else None
    if args.power_cap_w is not None and prof is None:
        raise ModelInputError("--power-cap-w: needs --accelerator to know the power envelope")
    perf = get_model(args.model).analyze(params, load, shape, prof)
    out: dict[str, object] = {
        "ttft_ms": perf.ttft_ms, "itl_ms": perf.itl_ms, "ttft_p95_ms": perf.ttft_p95_ms, "itl_p95_ms": perf.itl_p95_ms,
        "ttft_p99_ms": perf.ttft_p99_ms, "itl_p99_ms": perf.itl_p99_ms, "throughput_rps": perf.throughput_rps,
        "mean_batch": perf.mean_batch, "utilization": perf.utilization, "block_probability": perf.block_probability,
        "power_w": None if math.isnan(perf.power_w) else perf.power_w,
    }
    if args.ttft_slo_ms is not None or args.itl_slo_ms is not None:
        if args.ttft_slo_ms is None or args.itl_slo_ms is None:
            raise ModelInputError("--ttft-slo-ms and --itl-slo-ms: give both for sizing")
        targets = Targets(args.ttft_slo_ms, args.itl_slo_ms, args.slo_statistic)
        out["max_rate_rps"] = get_model(args.model).max_rate(params, load, shape, targets, prof)
        if args.batch_sizes:
            out.update(_batch_choices(args, params, load, shape, targets, prof))
    elif args.batch_sizes:
        raise ModelInputError("--batch-sizes: needs --ttft-slo-ms and --itl-slo-ms to choose by")
    print(json.dumps(out, indent=2))
    return 0


def _batch_choices(args: argparse.Namespace, params: ServiceParams, load: Load, shape: ServerShape,
                   targets: Targets, prof: PowerProfile | None) -> dict[str, object]:
    """Among --batch-sizes: the max batch that takes the most load within the targets, and (with an
    accelerator) the one that serves --rate-rps within them at the lowest draw (null when none does)."""
    model = get_model(args.model)
    by_rate = best_batch_for_rate(model, params, load, args.batch_sizes, shape.max_queue, targets, prof,
                                  shape.power_cap_w)
    out: dict[str, object] = {"best_batch_for_rate": {"max_batch": by_rate.max_batch or None,
                                                      "max_rate_rps": by_rate.max_rate_rps}}
    if prof is not None:
        by_power = best_batch_for_power(model, params, load, args.batch_sizes, shape.max_queue, targets, prof,
                                        shape.power_cap_w)
        out["best_batch_for_power"] = None if by_power is None or by_power.performance is None else {
            "max_batch": by_power.max_batch, "power_w": by_power.performance.power_w}
    return out


def _batch_sizes(text: str) -> list[int]:
    """--batch-sizes: a comma-separated list of whole numbers >= 1."""
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be whole numbers separated by commas, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"every batch size must be >= 1, got {text!r}")
    return sizes


def _seconds(text: str) -> float:
    """--duration: a finite number of seconds > 0 (nan or inf would never stop)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


def _tune(args: argparse.Namespace) -> int:
    from tuner import PairFilter
    from tuner.offline import read_observations, run

    prior = ServiceParams(args.family, args.alpha_ms, args.beta_ms, args.gamma_ms, args.delta_ms)
    prof = profile(args.accelerator) if args.accelerator else None
    observations = read_observations(Path(args.observations))
    if prof is None and any(o.power_cap_w is not None for o in observations):
        raise ModelInputError("--accelerator: the observations carry power caps; name the accelerator")
    if prof is None and any(o.power_w is not None for o in observations):
        raise ModelInputError("--accelerator: the observations carry power readings; name the accelerator to fit "
                              "its draw curve")
    pair = PairFilter(prior, prof, fit_power=args.fit_power and prof is not None, queue_model=args.model)
    report = run(pair, observations)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        params = ", ".join(f"{k} {v:g}" for k, v in report["params"].items())
        ahead, fit = report["error_one_step_ahead"], report["error_in_sample"]
        print(f"{report['observations']} observations {report['verdicts']}: {params}")
        print(f"error one step ahead: ttft {ahead['median_ttft']}, itl {ahead['median_itl']} (median); "
              f"in sample: ttft {fit['median_ttft']}, itl {fit['median_itl']}")
        if "draw" in report:
            d = report["draw"]
            print(f"draw curve: busy share {d['busy_share']}, batch half {d['batch_half']} from {d['windows']} "
                  f"windows; median error {d['median_abs_err_power']}")
    return 0


def _optimize(args: argparse.Namespace) -> int:
    from controller.optimize_spec import load_spec, solution_json
    from controller.optimizer import get_solver, solve

    problem = load_spec(Path(args.spec))
    solution = solve(problem, get_solver(args.solver, args.time_limit_s, args.mip_gap))
    doc = solution_json(solution)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for s in doc["services"]:
            print(f"{s['name']:<16} {s['accelerator'] or '-':<10} x{s['replicas']:<3} batch {s['max_batch'] or '-':<4} "
                  f"cap {s['power_cap_w'] or 0:>5.0f} W  ttft {s['ttft_ms'] or 0:>7.1f} ms"
                  f"  itl {s['itl_ms'] or 0:>6.1f} ms"
                  + (f"  SHORT {s['short_rps']:.2f} rps ({s['reason']})" if s["reason"] else ""))
        t = doc["totals"]
        print(f"power {t['power_w']:.0f} W, cost {t['cost']:.2f}/h, objective {t['objective']:.3f}, "
              f"solve {t['solve_s'] * 1000:.1f} ms")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from controller.planner import load_plan_spec
    from controller.planner.allocation import AllocationModel
    from controller.planner.allocation_report import allocation_json, allocation_text, explain_unmet
    from controller.planner.allocation_spec import AllocationSpec
    from controller.planner.packing import enumerate_configs
    from controller.planner.packing_report import (
        Instance,
        compare,
        compare_table,
        plot_compare,
        result_json,
        solve_instance,
    )

    spec = load_plan_spec(Path(args.spec))
    if isinstance(spec, AllocationSpec):
        if args.compare or args.plots:
            raise ConfigError("--compare/--plots", "apply to packing specs only")
        if args.solver != "milp":
            raise ConfigError("--solver", "an allocation spec is solved by milp only")
        if args.gamma is not None:
            if args.gamma < 0:
                raise ConfigError("--gamma", f"must be >= 0, got {args.gamma}")
            spec = replace(spec, robust=replace(spec.robust, gamma=args.gamma))
        model = AllocationModel(spec)
        best = model.solve()
        doc = allocation_json(model, best, explain_unmet(model, best) if best.ok else [])
        print(json.dumps(doc, indent=2) if args.json else allocation_text(doc))
        return 0 if best.ok else 1
    if args.compare:
        rows = compare(spec)
        print(json.dumps(rows, indent=2) if args.json else compare_table(rows))
        if args.plots:
            for path in plot_compare(rows, Path(args.plots)):
                print(f"wrote {path}", file=sys.stderr)
        return 0
    inst = Instance(args.scenario or next(iter(spec.scenarios)), args.trace or next(iter(spec.traces)),
                    args.requests if args.requests is not None else max(spec.scales))
    if inst.scenario not in spec.scenarios or inst.trace not in spec.traces or inst.requests < 0:
        raise ConfigError("--scenario/--trace/--requests",
                          f"expected a scenario in {list(spec.scenarios)}, a trace in {list(spec.traces)}, "
                          "and requests >= 0")
    configs = enumerate_configs(spec)
    doc = result_json(configs, inst, solve_instance(spec, configs, inst, (args.solver,)))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for r in doc["results"]:
            cost = "fail" if r["cost_per_h"] is None else f"{r['cost_per_h']:.2f} $/h"
            print(f"{r['solver']:<22} {cost:>12}  cards {r['cards']}  {r['note']}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wattscale", description=__doc__)
    p.add_argument("--version", action="version", version=f"wattscale {version('wattscale')}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the daemon")
    r.add_argument("--config", required=True)
    r.add_argument("--duration", type=_seconds, default=None, metavar="S",
                   help="stop after this many wall-clock seconds (default: run until SIGTERM)")
    r.set_defaults(func=_run)
    c = sub.add_parser("check-config", help="validate a config file")
    c.add_argument("file")
    c.set_defaults(func=_check)
    a = sub.add_parser("analyze", help="one queue-model evaluation (JSON)")
    a.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS), help="queue model")
    a.add_argument("--family", default="gen1", choices=["gen1", "gen2"])
    for name in ("alpha-ms", "beta-ms", "gamma-ms", "in-tokens", "out-tokens", "rate-rps"):
        a.add_argument(f"--{name}", type=float, required=True)
    a.add_argument("--delta-ms", type=float, default=0.0)
    a.add_argument("--in-cv", type=float, default=1.0, help="spread of prompt lengths (std / mean)")
    a.add_argument("--out-cv", type=float, default=1.0, help="spread of output lengths (std / mean)")
    a.add_argument("--max-batch", type=int, default=64)
    a.add_argument("--max-queue", type=int, default=-1, help="-1: unbounded")
    a.add_argument("--power-cap-w", type=float, default=None)
    a.add_argument("--accelerator", default=None)
    a.add_argument("--ttft-slo-ms", type=float, default=None)
    a.add_argument("--itl-slo-ms", type=float, default=None)
    a.add_argument("--slo-statistic", default="mean", choices=["mean", "p95", "p99"])
    a.add_argument("--batch-sizes", type=_batch_sizes, default=None, metavar="N,N,...",
                   help="with SLOs: the max batch among these taking the most load, and the one serving "
                        "--rate-rps at the lowest draw (with --accelerator)")
    a.set_defaults(func=_analyze)
    t = sub.add_parser("tune", help="run the tuner offline over recorded observations (CSV)")
    t.add_argument("observations")
    t.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS), help="queue model")
    t.add_argument("--family", default="gen1", choices=["gen1", "gen2"])
    for name, default in (("alpha-ms", 15.0), ("beta-ms", 0.1), ("gamma-ms", 10.0), ("delta-ms", 0.05)):
        t.add_argument(f"--{name}", type=float, default=default, help=f"prior (default {default})")
    t.add_argument("--accelerator", default=None, help="power profile, needed when rows carry power caps")
    t.add_argument("--fit-power", action="store_true", help="also fit the prefill power sensitivity")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_tune)
    o = sub.add_parser("optimize", help="one optimization of a system spec")
    o.add_argument("spec")
    o.add_argument("--solver", default="greedy", choices=["greedy", "milp", "exhaustive"])
    o.add_argument("--time-limit-s", type=float, default=2.0)
    o.add_argument("--mip-gap", type=float, default=0.01)
    o.add_argument("--json", action="store_true")
    o.set_defaults(func=_optimize)
    pl = sub.add_parser("plan", help="offline capacity planning (config packing or workload allocation)")
    pl.add_argument("spec")
    pl.add_argument("--solver", default="milp", choices=["milp", "greedy", "homogeneous"])
    pl.add_argument("--compare", action="store_true", help="packing: every scenario x trace x scale, every solver")
    pl.add_argument("--plots", default=None, metavar="DIR", help="packing --compare: one PNG per scenario")
    pl.add_argument("--scenario", default=None, help="packing: availability scenario (default: the first)")
    pl.add_argument("--trace", default=None, help="packing: trace (default: the first)")
    pl.add_argument("--requests", type=int, default=None, help="packing: workload size (default: largest scale)")
    pl.add_argument("--gamma", type=float, default=None, help="allocation: robust budget of uncertainty")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=_plan)
    g = sub.add_parser("gpus", help="list the GPUs NVML sees and every field the nvml source reads (read-only)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=_gpus)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, ModelInputError, ObservationFileError) as exc:
        print(f"wattscale: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
