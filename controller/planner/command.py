"""`wattscale plan`: the command around the planner, its options checked against the spec's kind before a
long solve starts (an option that does not apply is refused, not ignored)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from controller import strict_json
from controller.config_loader import ConfigError, quoted
from controller.planner import load_plan_spec
from controller.planner.allocation_spec import AllocationSpec
from controller.planner.packing_spec import MAX_INSTANCES, PackingSpec


def plan_command(args: argparse.Namespace) -> int:
    """Exit 0 with a plan, 1 when none is feasible, 2 (ConfigError) for a bad spec or option."""
    if args.plots is not None and not args.compare:
        raise ConfigError("--plots", "applies with --compare only")
    plots = _plots_dir(args.plots)
    spec = load_plan_spec(Path(args.spec))
    solver = args.solver or "milp"
    packing_options = args.scenario is not None or args.trace is not None or args.requests is not None
    if isinstance(spec, AllocationSpec):
        if args.compare:
            raise ConfigError("--compare/--plots", "apply to packing specs only")
        if solver != "milp":
            raise ConfigError("--solver", "an allocation spec is solved by milp only")
        if packing_options:
            raise ConfigError("--scenario/--trace/--requests", "apply to packing specs only")
        return _allocation(args, spec)
    for option, value in (("--gamma", args.gamma), ("--protection", args.protection)):
        if value is not None:
            raise ConfigError(option, "applies to allocation specs only")
    if args.compare:
        if packing_options:
            raise ConfigError("--scenario/--trace/--requests", "--compare runs every one; give neither")
        if args.solver is not None:  # it was ignored unsaid
            raise ConfigError("--solver", "--compare runs every solver; give none")
        return _compare(args, spec, plots)
    return _packing(args, spec, solver)


def _allocation(args: argparse.Namespace, spec: AllocationSpec) -> int:
    from controller.planner.allocation import AllocationModel
    from controller.planner.allocation_report import allocation_json, allocation_text, explain_unmet

    if args.gamma is not None:
        spec = replace(spec, robust=replace(spec.robust, gamma=args.gamma))
    if args.protection is not None:
        spec = replace(spec, robust=replace(spec.robust, protection=args.protection))
    model = AllocationModel(spec)
    best = model.solve()
    doc = allocation_json(model, best, explain_unmet(model, best))
    print(strict_json.dumps(doc, indent=2) if args.json else allocation_text(doc))
    return 0 if best.ok else 1


def _compare(args: argparse.Namespace, spec: PackingSpec, plots: Path | None) -> int:
    from controller.planner.packing_report import compare, compare_table, plot_compare

    instances = len(spec.scenarios) * len(spec.traces) * len(spec.scales)
    if instances > MAX_INSTANCES:  # each solved within time_limit_s, and nothing printed until the last
        raise ConfigError("--compare", f"{len(spec.scenarios)} scenarios x {len(spec.traces)} traces x "
                          f"{len(spec.scales)} scales = {instances} instances, past the {MAX_INSTANCES} it solves "
                          f"(each within time_limit_s, {spec.time_limit_s:g} s); name fewer scenarios, traces or "
                          "scales")
    if plots is not None:  # before the solves: a folder that cannot be made, or no matplotlib, is said at once
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plots", "needs matplotlib: pip install 'wattscale[plots]'") from None
        try:
            plots.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("--plots", f"{plots}: cannot be written ({exc.strerror or exc})") from None
    rows = compare(spec)
    print(strict_json.dumps(rows, indent=2) if args.json else compare_table(rows))
    if plots is not None:
        try:
            written = plot_compare(rows, plots)
        except OSError as exc:
            raise ConfigError("--plots", f"cannot write into {plots} ({exc.strerror or exc})") from None
        for path in written:
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _packing(args: argparse.Namespace, spec: PackingSpec, solver: str) -> int:
    from controller.planner.packing import enumerate_configs
    from controller.planner.packing_report import Instance, result_json, solve_instance

    inst = Instance(next(iter(spec.scenarios)) if args.scenario is None else args.scenario,  # '' is a name, unknown
                    next(iter(spec.traces)) if args.trace is None else args.trace,
                    args.requests if args.requests is not None else max(spec.scales))
    if inst.scenario not in spec.scenarios or inst.trace not in spec.traces:
        raise ConfigError("--scenario/--trace", f"got {quoted(inst.scenario)} and {quoted(inst.trace)}; "
                          f"expected a scenario in {list(spec.scenarios)} and a trace in {list(spec.traces)}")
    configs = enumerate_configs(spec)
    doc = result_json(configs, inst, solve_instance(spec, configs, inst, (solver,)))
    if args.json:
        print(strict_json.dumps(doc, indent=2))
    else:
        chosen = [f"--{k} {v}" for k, v in (("scenario", args.scenario), ("trace", args.trace),
                                             ("requests", args.requests)) if v is not None]
        how = ", ".join(chosen) if chosen else "the spec's first scenario and trace at its largest scale"
        rest = "" if len(chosen) == 3 else "; --scenario, --trace and --requests choose others"
        print(f"{inst.requests} requests of trace {inst.trace} on scenario {inst.scenario} ({how}{rest})")
        width = max(len(r["solver"]) for r in doc["results"])
        for r in doc["results"]:
            cost = "fail" if r["cost_per_h"] is None else f"{r['cost_per_h']:.2f} $/h"
            cards = ", ".join(f"{g} x{n}" for g, n in r["cards"].items()) or "-"
            print(f"{r['solver']:<{width}} {cost:>12}  cards {cards}  {r['note']}".rstrip())
    if not any(r["feasible"] for r in doc["results"]):
        stopped = all(r["stopped"] for r in doc["results"])  # a limit, not a proof
        print(f"wattscale: plan: {'no packing found in time_limit_s' if stopped else 'no feasible packing'} of "
              f"{inst.requests} requests ({inst.trace}) on scenario {inst.scenario}'s cards with --solver {solver}",
              file=sys.stderr)
        return 1
    return 0


def _plots_dir(text: str | None) -> Path | None:
    """--plots: a directory, or one that can be made with its parents (as `simulate --report` makes its own), checked
    before anything else is read; made only once the spec and its options are."""
    if text is None:
        return None
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ConfigError("--plots", f"{path} exists and is not a directory")
    existing = next((p for p in path.absolute().parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError("--plots", f"{path}: cannot be made: {existing} is not a directory")
    return path
