"""`wattscale` command line: run, check-config, status, analyze, tune, optimize, plan, simulate, gpus; schema,
operator and agent (the cluster mode's)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from controller import log_writer, strict_json
from controller.cli_analyze import analyze
from controller.cli_args import Parser, add_analyze_args, add_plan_args, add_tune_args, file, number, seconds
from controller.cli_cluster import add_cluster_commands
from controller.cli_output import drop_output, native_output_to_stderr
from controller.cli_tune import tune
from controller.config_loader import ConfigError
from controller.config_warnings import file_warnings
from controller.planner.command import plan_command
from controller.preflight import STATE_DIR_WARNING, preflight
from controller.settings import load_settings
from controller.signal_paths import check_signal_paths
from controller.simulate.args import add_simulate_args
from controller.state_lock import held
from controller.toml_file import file_kind, read_toml
from controller.vllm_exec import add_vllm_exec_command
from queuemodels import ModelInputError, Performance
from tuner.observation_file import ObservationFileError


def _run(args: argparse.Namespace) -> int:
    from controller.daemon import Daemon

    settings = load_settings(Path(args.config))
    warnings, kube = preflight(settings, Path(args.config))
    log_writer.install(settings.daemon.log_level, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    for library in ("urllib3", "kubernetes"):  # DEBUG is for wattscale's own reasoning
        logging.getLogger(library).setLevel(logging.WARNING)
    log = logging.getLogger("wattscale.daemon")
    for warning in warnings:
        log.warning("%s", warning)
    if not any(w.startswith(STATE_DIR_WARNING) for w in warnings):  # else it says the state will not be saved
        log.info("tuner state: %s", settings.state_path.resolve())
    with held(settings.state_path.parent):
        return Daemon(Path(args.config), settings, kube=kube).run(args.duration)


def _status(args: argparse.Namespace) -> int:
    from controller.status import status, view

    config = view(Path(args.config))
    if config.log is None:
        raise ConfigError("daemon.decision_log", "is empty: the daemon writes no decision log to read")
    print(status(config, config.log, args.json, Path(args.config)))
    return 0


def _check(args: argparse.Namespace) -> int:
    """The file's checks and the host probes `run` makes before it starts (the same functions); a scenario's, as
    `simulate` loads it (it runs on no host: nothing is probed)."""
    from controller.wiring import probe_nvml

    if Path(args.file).suffix in (".yaml", ".yml"):  # custom resources, as the operator reads them
        return _check_resources(Path(args.file))
    doc = read_toml(Path(args.file))  # read once: a daemon config's checks take the tables read here
    if file_kind(doc) == "scenario":
        from controller.simulate.scenario import load_scenario

        scn = load_scenario(Path(args.file))
        for warning in scn.warnings():  # its config's at each budget it states (as `simulate` warns)
            print(f"wattscale: warning: {warning}", file=sys.stderr)
        n = len(scn.config.services)
        print(f"{args.file}: ok (a scenario: {n} service{'s' * (n != 1)} for {scn.settings.duration_s:g} s, budget "
              f"{scn.start_budget_w:.0f} W at the start; `wattscale simulate` runs it)")
        return 0
    s = load_settings(Path(args.file), doc)
    if args.file_only:
        check_signal_paths(s, Path(args.file), host=False)  # which files are whose: the file's, not the host's
    for warning in file_warnings(s) if args.file_only else preflight(s, Path(args.file)).warnings:
        print(f"wattscale: warning: {warning}", file=sys.stderr)
    if not args.file_only:
        probe_nvml(s)  # the driver, as `run` starts it (build_parts)
    print(f"{args.file}: ok ({len(s.services)} service{'s' * (len(s.services) != 1)}, budget {s.power.budget_w:.0f} W"
          + ("; the file alone: this host was not probed)" if args.file_only else ")"))
    return 0


def _check_resources(path: Path) -> int:
    """A PowerPolicy and LLMServices in YAML (controller/cluster/offline_check.py): each refusal on a line."""
    try:
        from controller.cluster.offline_check import check_resources
    except ImportError:
        raise ConfigError("check-config", "custom resources need: pip install 'wattscale[cluster]'") from None
    refusals, read = check_resources(path)
    for line in refusals:
        print(f"wattscale: {line}", file=sys.stderr)
    if refusals:
        return 2
    print(f"{path}: ok ({read}, as the operator reads them; the Deployments they name, the budget's secrets and the "
          "nodes' GPUs are read in the cluster)")
    return 0


def _gpus(args: argparse.Namespace) -> int:
    """A read-only listing of what the `nvml` source sees (nothing is set)."""
    from dataclasses import asdict

    from actuators import ActuatorError
    from actuators.nvml import NvmlDevices
    from actuators.nvml_clocks import clock_listing, clock_text

    try:
        devices = NvmlDevices()
        readings = [asdict(devices.read(i)) for i in range(devices.count())]
        for r in readings:
            r["clocks"] = clock_listing(devices, r["index"], r["clock_event_reasons"], r["sm_clock_mhz"])
        devices.close()
    except ActuatorError as exc:
        print(f"wattscale: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(strict_json.dumps(readings, indent=2))
        return 0
    for r in readings:
        power = "-" if r["power_w"] is None else f"{r['power_w']:.0f} W"
        print(f"{r['index']}: {r['name']} {r['uuid']}  power {power} of limit {r['power_limit_w']:.0f} W "
              f"({r['min_limit_w']:.0f}-{r['max_limit_w']:.0f} W), capped {r['power_capped']}; "
              f"{clock_text(r['clocks'])}")
    return 0


def _latencies(perf: Performance | None, statistic: str, per_step: float) -> str:
    """TTFT and ITL as the service's targets read them (its mean, p95 or p99); dashes where nothing runs. Where a
    step gives several tokens (speculative decoding) the ITL is a step's, as vLLM's histogram reads it: said so."""
    step = f" a step of {per_step:.3g} tokens" if per_step > 1.0 else ""
    if perf is None:
        return f"  ttft {statistic} {'-':>7} ms  itl {statistic} {'-':>6} ms{step}"
    ttft, itl = perf.latency_at(statistic)
    return f"  ttft {statistic} {ttft:>7.1f} ms  itl {statistic} {itl:>6.1f} ms{step}"


def _optimize(args: argparse.Namespace) -> int:
    from controller.optimize_spec import load_spec, solution_json
    from controller.optimizer import get_solver, solve
    from controller.optimizer.reasons import slo_notes

    problem = load_spec(Path(args.spec))
    try:
        solution = solve(problem, get_solver(args.solver, args.time_limit_s, args.mip_gap))
    except ValueError as exc:
        if args.solver != "exhaustive":
            raise
        raise ConfigError("--solver", f"{exc} ({len(problem.services)} services)") from None
    solution = replace(solution, notes=[*solution.notes, *slo_notes(problem, solution)])
    doc = solution_json(solution)
    if args.json:
        print(strict_json.dumps(doc, indent=2))
    else:
        statistic = {svc.name: svc.targets.statistic for svc in problem.services}
        per_step = {svc.name: svc.load.tokens_per_step for svc in problem.services}
        for s, r in zip(doc["services"], solution.services, strict=True):
            print(f"{s['name']:<16} {s['accelerator'] or '-':<10} x{s['replicas']:<3} batch {s['max_batch'] or '-':<4} "
                  + (f"cap {s['power_cap_w']:>5.0f} W" if s["power_cap_w"] else f"cap {'-':>5} W")
                  + (f" clock {s['sm_clock_share']:.0%}" if s["sm_clock_share"] else "")
                  + _latencies(r.performance, statistic[r.name], per_step[r.name])
                  + (f"  SHORT {s['short_rps']:.2f} rps ({s['reason']})" if s["reason"] else ""))
        t = doc["totals"]
        print(f"power {t['power_w']:.0f} W, cost {t['cost']:.2f}/h, objective {t['objective']:.3f}, "
              f"solve {t['solve_s'] * 1000:.1f} ms")
        for note in doc["notes"]:
            print(f"note: {note}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from controller.simulate.command import simulate_command

    return simulate_command(args)


def _version() -> str:
    """The installed distribution's version. A source tree run as `python -m controller.cli` without
    `pip install` has no metadata to read, and --help must not fail for that."""
    try:
        return version("wattscale")
    except PackageNotFoundError:
        return "(not installed: run from a source tree)"


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="wattscale", description="Plans and holds vLLM services' replicas, max batch, GPU power caps and "
               "clocks so that each meets its SLO under a site power budget. `wattscale COMMAND --help` for each.")
    p.add_argument("--version", action="version", version=f"wattscale {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the daemon")
    r.add_argument("--config", required=True, type=file, metavar="FILE", help="TOML config (see config/sim.toml)")
    r.add_argument("--duration", type=seconds, default=None, metavar="S",
                   help="stop after this many wall-clock seconds (default: run until SIGTERM)")
    r.set_defaults(func=_run, daemon=True)
    c = sub.add_parser("check-config", help="validate a config file and probe what run needs of the host (or a "
                       "scenario, as simulate loads it; or custom resources, .yaml, as the operator reads them)")
    c.add_argument("file", type=file, metavar="FILE", help="TOML config, a scenario, or a PowerPolicy and LLMServices "
                   "in YAML")
    c.add_argument("--file-only", action="store_true",
                   help="check the file alone, off the host it is for (CI, a laptop): the metrics port, NVML, the "
                        "backends' programs, budget sources and directories are not probed")
    c.set_defaults(func=_check)
    a = sub.add_parser("analyze", help="one queue-model evaluation (JSON)")
    add_analyze_args(a)
    a.set_defaults(func=analyze)
    t = sub.add_parser("tune", help="run the tuner offline over recorded observations (CSV)")
    add_tune_args(t)
    t.set_defaults(func=tune)
    o = sub.add_parser("optimize", help="one optimization of a system spec")
    o.add_argument("spec", type=file, metavar="SPEC", help="TOML system spec (see docs/optimize-spec.md)")
    o.add_argument("--solver", default="auto", choices=["auto", "greedy", "milp", "exhaustive"],
                   help="auto (milp beside greedy on small problems, greedy alone beyond), greedy (fast), milp "
                        "(optimal within --mip-gap) or exhaustive (a few services only)")
    o.add_argument("--time-limit-s", type=number(0.0, 600.0, low_open=True), default=2.0, metavar="S",
                   help="milp: time limit in seconds, in (0, 600] (default 2)")
    o.add_argument("--mip-gap", type=number(0.0, 0.999), default=0.01, metavar="SHARE",
                   help="milp: optimality gap as a share of the plan's score, in [0, 1) (default 0.01)")
    o.add_argument("--json", action="store_true", help="print the solution as JSON")
    o.set_defaults(func=_optimize)
    pl = sub.add_parser("plan", help="offline capacity planning (config packing or workload allocation)")
    add_plan_args(pl)
    pl.set_defaults(func=plan_command)
    st = sub.add_parser("status", help="what runs against what is planned, per service, SLO met or not and why "
                        "(from the daemon's decision log)")
    st.add_argument("--config", required=True, type=file, metavar="FILE", help="the TOML config the daemon runs with")
    st.add_argument("--json", action="store_true", help="print the report as JSON")
    st.set_defaults(func=_status)
    sim = sub.add_parser("simulate", help="the closed loop against today's policies on a scenario, in simulated time "
                         "(report: summary.json, summary.md, PNGs)")
    add_simulate_args(sim)
    sim.set_defaults(func=_simulate)
    g = sub.add_parser("gpus", help="list the GPUs NVML sees and every field the nvml source reads (read-only)")
    g.add_argument("--json", action="store_true", help="print the readings as JSON")
    g.set_defaults(func=_gpus)
    add_cluster_commands(sub)  # schema, operator, agent
    add_vllm_exec_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    if sys.stderr is None:  # closed at start: print(file=None) would write its errors into standard output
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115  (the process's, as the one it replaces)
    args = parser().parse_args(argv)
    try:
        if getattr(args, "daemon", False):  # daemons log; commands print JSON (set where each is defined)
            return int(args.func(args))
        with native_output_to_stderr():
            return int(args.func(args))
    except (ConfigError, ModelInputError, ObservationFileError) as exc:
        log_writer.flush(1.0)  # what `run` logged before it comes first
        print(f"wattscale: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a stop before the command's own handlers: controller/launch.py's line after the log's
        log_writer.flush(1.0)
        raise
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, what is left unwritten to /dev/null
        drop_output()
        return 1
    except OSError as exc:  # the output cannot be written (a full disk, /dev/full), or a file the command names
        drop_output()
        where = (f" ({exc.filename})" if exc.filename else
                 " (writing its output)" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO) else "")
        print(f"wattscale: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
