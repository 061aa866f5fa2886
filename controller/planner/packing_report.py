"""Running the packing solvers over a spec's instances, the --compare table, and the seed's bar charts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.config_loader import ConfigError
from controller.planner.packing import (
    Config,
    PackingResult,
    available_cards,
    draw_workload,
    enumerate_configs,
    solve_greedy,
    solve_homogeneous,
    solve_milp,
)
from controller.planner.packing_spec import PackingSpec

SOLVERS = ("milp", "milp_per_type", "greedy", "homogeneous")
"""What `--compare` runs: milp_per_type is the seed's per-type capacity row (docs/plan.md), shown beside, never
planned with."""


@dataclass(frozen=True)
class Instance:
    scenario: str
    """Availability scenario."""
    trace: str
    """Workload trace."""
    requests: int
    """Workload size."""


def solve_instance(spec: PackingSpec, configs: list[Config], inst: Instance,
                   solvers: tuple[str, ...]) -> list[PackingResult]:
    cards = available_cards(spec, inst.scenario)
    counts = draw_workload(spec, inst.trace, inst.requests)
    out = []
    names = tuple(spec.request_types)
    for name in solvers:
        if name in ("milp", "milp_per_type"):
            out.append(solve_milp(configs, counts, cards, "shared" if name == "milp" else "per_type",
                                  spec.time_limit_s, spec.mip_gap, names))
        elif name == "greedy":
            out.append(solve_greedy(configs, counts, cards, names))
        else:
            out.extend(solve_homogeneous(configs, counts, cards, g) for g in spec.homogeneous or tuple(spec.gpus))
    return out


def result_json(configs: list[Config], inst: Instance, results: list[PackingResult]) -> dict[str, Any]:
    return {
        "kind": "packing", "scenario": inst.scenario, "trace": inst.trace, "requests": inst.requests,
        "results": [{
            "solver": r.solver, "feasible": r.feasible, "cost_per_h": r.cost_per_h if r.feasible else None,
            "copies": r.copies, "cards": r.cards(configs), "solve_s": r.solve_s, "note": r.note,
            "optimal": r.optimal, "mip_gap": r.mip_gap, "stopped": r.stopped,
        } for r in results],
    }


def compare(spec: PackingSpec) -> list[dict[str, Any]]:
    """Every scenario x trace x scale with every solver."""
    configs = enumerate_configs(spec)
    return [result_json(configs, inst, solve_instance(spec, configs, inst, SOLVERS))
            for inst in (Instance(s, t, n) for s in spec.scenarios for t in spec.traces for n in spec.scales)]


def compare_table(rows: list[dict[str, Any]]) -> str:
    names = [r["solver"] for r in rows[0]["results"]]
    head = f"{'scenario':<12}{'trace':<12}{'requests':>9}" + "".join(f"{n.replace('homogeneous:', 'homo:'):>16}"
                                                                      for n in names)
    lines = [head + f"{'greedy gap':>12}"]
    stopped = unfound = False
    for row in rows:
        costs = {r["solver"]: r["cost_per_h"] for r in row["results"]}
        failed = {r["solver"]: "stopped" if r["stopped"] else "fail" for r in row["results"]}
        # a MILP stopped at its time limit is an incumbent, not an optimum: marked, or its gap reads as greedy's
        marks = {r["solver"]: "*" if r["solver"].startswith("milp") and r["feasible"] and not r["optimal"] else ""
                 for r in row["results"]}
        stopped = stopped or any(marks.values())
        unfound = unfound or any(costs[n] is None and failed[n] == "stopped" for n in names)
        cells = "".join(f"{failed[n] if costs[n] is None else format(costs[n], '.2f') + marks[n]:>16}" for n in names)
        gap = f"{costs['greedy'] / costs['milp'] - 1:.4f}" if costs.get("milp") and costs.get("greedy") else "-"
        lines.append(f"{row['scenario']:<12}{row['trace']:<12}{row['requests']:>9}{cells}{gap:>12}")
    lines.append("milp: shared capacity row (ours); milp_per_type: the seed's per-type row, which counts a config "
                 "once per request type, so its optimum under-states the cost (one stopped at the limit may not).")
    if unfound:
        lines.append("stopped: no packing found before time_limit_s (a longer limit may find one); fail: none exists.")
    if stopped:
        lines.append("*: not proven optimal: stopped at time_limit_s (the best found; --json gives its gap), or copies "
                     "rounded up past the solver's tolerance (--json gives the note).")
    return "\n".join(lines)


def plot_compare(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One PNG per scenario, one panel per trace, bars per solver by workload size; 'fail' where infeasible."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plots", "needs matplotlib: pip install 'wattscale[plots]'") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        mine = [r for r in rows if r["scenario"] == scenario]
        traces = list(dict.fromkeys(r["trace"] for r in mine))
        solvers = [s["solver"] for s in mine[0]["results"] if s["solver"] != "milp_per_type"]
        fig, axes = plt.subplots(1, len(traces), figsize=(6 * len(traces), 5), squeeze=False)
        fig.suptitle(f"Cost by solver, availability scenario {scenario}")
        for ax, trace in zip(axes[0], traces, strict=True):
            rs = [r for r in mine if r["trace"] == trace]
            width = 0.8 / len(solvers)
            finite = [s["cost_per_h"] for r in rs for s in r["results"] if s["cost_per_h"] is not None]
            top = max(finite, default=1.0)
            for n, solver in enumerate(solvers):
                costs = [next(s["cost_per_h"] for s in r["results"] if s["solver"] == solver) for r in rs]
                xs = [i + (n - (len(solvers) - 1) / 2) * width for i in range(len(rs))]
                ax.bar(xs, [0.0 if c is None else c for c in costs], width, label=solver)
                for x, c in zip(xs, costs, strict=True):
                    if c is None:
                        ax.text(x, top * 0.05, "fail", ha="center", rotation=90, fontsize=8)
            ax.set_xticks(range(len(rs)), [str(r["requests"]) for r in rs])
            ax.set_title(trace)
            ax.set_xlabel("requests")
            ax.set_ylabel("cost ($/h)")
            ax.grid(axis="y", linestyle="--", alpha=0.5)
        axes[0][0].legend(fontsize="small", loc="upper left")
        fig.tight_layout()
        path = out_dir / f"scenario_{scenario}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
