"""The report of a `wattscale simulate` run: summary.json and a Markdown summary that reads on its own.

Figures are the mean over seeds (each seed's own are kept under `runs`); `targets` checks the issue's
targets for the `wattscale` policy against the baselines that ran.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from controller import strict_json
from controller.service_settings import ServiceSettings
from controller.simulate.accounting import STEP_GRACE_S, VIOLATION_SHARE, WINDOW_S
from controller.simulate.frontier import T_OVER_C_GAIN, TOKENS_PER_JOULE_GAIN, explain
from controller.simulate.power_figures import BOUND_SHARE
from controller.simulate.runner import Trace
from controller.simulate.scenario import Scenario

POWER_LABELS = {"mean_budget_w": "mean budget (W)", "co2_kg": "CO2 (kg)", "co2_mg_per_token": "CO2 (mg/token)",
                "budget_bound_share": "budget-bound share", "idle_energy_share": "idle energy share",
                "drop_settle_s": "budget drop settled in (s)", "drop_over_after_s": "over after a drop (s)",
                "domain_over_s": "domain over limit (s)", "domain_longest_over_s": "domain longest over (s)",
                "ramp_rise_max_w_per_s": "fastest rise (W/s)", "ramp_fall_max_w_per_s": "fastest fall (W/s)",
                "ramp_up_fast_s": "rising past the ramp limit (s)", "ramp_down_fast_s": "falling past it (s)",
                "ramp_down_fast_by_limits_s": "falling past it by the limits (s)"}
"""controller/simulate/power_figures.py's figures, each with its column's heading; a column shows where some policy
has a value."""
POWER_FIGURES = tuple(POWER_LABELS)
RUN_FIGURES = ("budget_violation_s", "budget_violation_raw_s", "peak_draw_w", "mean_draw_w", "limits_over_budget_s",
               "mean_limits_w", "energy_kwh",
               "tokens_per_joule", "sum_t_over_c", *POWER_FIGURES)
SERVICE_FIGURES = ("slo_attainment", "requests", "finished", "ttft_mean_ms", "ttft_p95_ms", "itl_mean_ms",
                   "itl_p95_ms", "t_over_c", "restarts_per_hour", "replica_changes_per_hour", "replicas_mean")
MAX_RESTARTS_PER_HOUR = 2.0
CO2_GAIN = 0.2
"""CO2 per token at least this share below wattscale-flat's."""
MAX_SETTLE_S = 2.0
"""A budget drop met within this long, and a domain over its limit no longer than this."""


def _mean(values: list[Any]) -> float | None:
    known = [float(v) for v in values if v is not None]
    return round(sum(known) / len(known), 4) if known else None


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over seeds of one policy's runs."""
    out: dict[str, Any] = {k: _mean([r[k] for r in runs]) for k in RUN_FIGURES}
    out["services"] = {name: {k: _mean([r["services"][name][k] for r in runs]) for k in SERVICE_FIGURES}
                       for name in runs[0]["services"]}
    out["runs"] = runs
    return out


def _limits_words(name: str, figures: dict[str, Any]) -> str:
    over = figures["limits_over_budget_s"]
    return (f"{name} ran with its GPUs' power limits summed above the budget for {over:g} s" if over else
            f"{name} kept its GPUs' power limits' sum within the budget") + (
        f" (limits' mean sum {figures['mean_limits_w']:g} W; peak draw {figures['peak_draw_w']:g} W)")


def _attainment_why(service: str, mine: float, ws: dict[str, Any], baselines: dict[str, Any]) -> str:
    """What the baselines that did better ran on, beside wattscale: limits summed above the budget are what a hard
    budget rules out (and what let their long prompts run at full clock when their GPUs peaked together); the line
    draws that conclusion only where wattscale's own limits stayed within the budget and no better baseline's did."""
    better = {k: v for k, v in baselines.items() if (v["services"][service]["slo_attainment"] or 0.0) > mine + 1e-9}
    lines = [_limits_words(f"{k} ({v['services'][service]['slo_attainment']:.4f})", v) for k, v in better.items()]
    lines.append(_limits_words(f"wattscale ({mine:.4f})", ws) + f", under a mean budget of {ws['mean_budget_w']:g} W")
    within = [k for k, v in better.items() if not v["limits_over_budget_s"]]
    if within:
        return "; ".join(lines) + f"; {' and '.join(within)} did better with limits within the budget, so the hard " \
            "limit does not explain this miss"
    if ws["limits_over_budget_s"]:  # a budget under the GPUs' lowest limits: no policy can hold a sum within it
        return "; ".join(lines)
    whose = "those ahead" if len(better) > 1 else next(iter(better))
    return "; ".join(lines) + f": {whose} ran on limits that a hard budget does not allow"


def _attainment_targets(svc: ServiceSettings, mine: float, ws: dict[str, Any], baselines: dict[str, Any]
                        ) -> list[dict[str, Any]]:
    """A service's attainment against 0.99 where `static` reaches it, and against every baseline's (a miss
    says what the baselines that did better ran on)."""
    out: list[dict[str, Any]] = []
    static = baselines.get("static", {}).get("services", {}).get(svc.name, {}).get("slo_attainment")
    if static is not None and static >= 0.99:
        out.append({"target": f"{svc.name} (priority {svc.priority}): slo_attainment >= 0.99 (static reaches "
                    f"{static:.3f})", "value": mine, "unit": "of requests", "met": mine >= 0.99}
                   | ({} if mine >= 0.99 else {"why": _attainment_why(svc.name, mine, ws,
                                                                      {"static": baselines["static"]})}))
    best = max(((k, v["services"][svc.name]["slo_attainment"] or 0.0) for k, v in baselines.items()),
               key=lambda kv: kv[1], default=None)
    if best is not None:
        met = mine >= best[1] - 1e-9
        out.append({"target": f"{svc.name} (priority {svc.priority}): slo_attainment >= every baseline's "
                    f"(best: {best[0]} {best[1]:.3f})", "value": mine, "unit": "of requests", "met": met}
                   | ({} if met else {"why": _attainment_why(svc.name, mine, ws, baselines)}))
    return out


def energy_gains(policies: dict[str, Any]) -> tuple[float | None, float | None]:
    """`wattscale`'s tokens per joule over `static`'s and sum T/C over `uniform-cap`'s (None where a side did not
    run or has no figure)."""
    ws, static, uniform = policies.get("wattscale"), policies.get("static"), policies.get("uniform-cap")
    if ws is None:
        return None, None
    energy = (ws["tokens_per_joule"] or 0.0) / static["tokens_per_joule"] if static and static["tokens_per_joule"] \
        else None
    speed = (ws["sum_t_over_c"] or 0.0) / uniform["sum_t_over_c"] if uniform and uniform["sum_t_over_c"] else None
    return energy, speed


def energy_missed(policies: dict[str, Any]) -> bool:
    """Whether an energy target was judged and missed: what the frontier is measured to explain."""
    energy, speed = energy_gains(policies)
    return (energy is not None and energy < TOKENS_PER_JOULE_GAIN) or (speed is not None and speed < T_OVER_C_GAIN)


def energy_targets(policies: dict[str, Any], frontier: dict[str, Any] | str | None) -> list[dict[str, Any]]:
    """tokens per joule against `static`'s and sum T/C against `uniform-cap`'s; a missed one says why from
    `frontier` (controller/simulate/frontier.py's figures, or why it was not measured)."""
    energy, speed = energy_gains(policies)
    why = None if frontier is None else frontier if isinstance(frontier, str) else explain(frontier)
    out: list[dict[str, Any]] = []
    for gain, need, figure, unit in ((energy, TOKENS_PER_JOULE_GAIN, "tokens_per_joule", "static's"),
                                     (speed, T_OVER_C_GAIN, "sum_t_over_c", "uniform-cap's")):
        if gain is not None:
            out.append({"target": f"{figure} >= {need} x {unit} (set for the diurnal and tight-budget scenarios)",
                        "value": round(gain, 3), "unit": f"x {unit}", "met": gain >= need}
                       | ({"why": why} if why and gain < need else {}))
    return out


def targets(scn: Scenario, policies: dict[str, Any], frontier: dict[str, Any] | str | None = None
            ) -> list[dict[str, Any]]:
    """The targets set for `wattscale` (docs/simulate.md), each with the figure it was judged on and its unit
    (empty without it); `frontier` explains a missed energy target (`energy_targets`)."""
    ws = policies.get("wattscale")
    if ws is None:
        return []
    out: list[dict[str, Any]] = [{"target": "budget_violation_s = 0", "value": ws["budget_violation_s"],
                                  "unit": "s", "met": ws["budget_violation_s"] == 0}]
    baselines = {k: v for k, v in policies.items() if k not in ("wattscale", "wattscale-flat")}
    for svc in sorted(scn.config.services, key=lambda s: s.priority):
        mine = ws["services"][svc.name]["slo_attainment"]
        if mine is not None:  # None: no request of it came, nothing to judge its attainment by
            out += _attainment_targets(svc, mine, ws, baselines)
        restarts = ws["services"][svc.name]["restarts_per_hour"] or 0.0
        out.append({"target": f"{svc.name}: restarts <= {MAX_RESTARTS_PER_HOUR:g} per service-hour (a steady load's "
                    "target)", "value": restarts, "unit": "per hour", "met": restarts <= MAX_RESTARTS_PER_HOUR})
    out += energy_targets(policies, frontier)
    return out + power_targets(scn, policies)


def power_targets(scn: Scenario, policies: dict[str, Any]) -> list[dict[str, Any]]:
    """The power targets for `wattscale` (docs/power.md), where the scenario has their subject."""
    ws, flat = policies.get("wattscale"), policies.get("wattscale-flat")
    if ws is None:
        return []
    out: list[dict[str, Any]] = []
    if flat is not None and ws["co2_mg_per_token"] and flat["co2_mg_per_token"]:
        gain = 1.0 - ws["co2_mg_per_token"] / flat["co2_mg_per_token"]
        out.append({"target": f"co2_mg_per_token >= {CO2_GAIN:.0%} below wattscale-flat's (mean budget "
                    f"{ws['mean_budget_w']} vs {flat['mean_budget_w']} W)", "value": round(gain, 4),
                    "unit": "(share below wattscale-flat's)",
                    "met": gain >= CO2_GAIN, "why": carbon_limits(ws, flat)})
        first = min(scn.config.services, key=lambda svc: svc.priority)
        mine = ws["services"][first.name]["slo_attainment"] or 0.0
        theirs = flat["services"][first.name]["slo_attainment"] or 0.0
        out.append({"target": f"{first.name} (priority {first.priority}): slo_attainment >= wattscale-flat's "
                    f"({theirs:.4f})", "value": mine, "unit": "of requests", "met": mine >= theirs - 0.005})
    if ws["drop_settle_s"] is not None:
        out.append({"target": f"every budget drop met within {MAX_SETTLE_S:g} s (drop_settle_s)",
                    "value": ws["drop_settle_s"], "unit": "s", "met": ws["drop_settle_s"] <= MAX_SETTLE_S})
        out.append({"target": "0 s over the budget after a drop was met (drop_over_after_s)",
                    "value": ws["drop_over_after_s"], "unit": "s", "met": ws["drop_over_after_s"] == 0})
    if ws["domain_longest_over_s"] is not None:
        out.append({"target": f"no power domain over its limit for more than {MAX_SETTLE_S:g} s "
                    "(domain_longest_over_s)", "value": ws["domain_longest_over_s"], "unit": "s",
                    "met": ws["domain_longest_over_s"] <= MAX_SETTLE_S})
    for key, side in (("ramp_up_fast_s", "rises"), ("ramp_down_fast_by_limits_s", "falls the limits made")):
        if ws[key] is not None:
            out.append({"target": f"0 s of draw {side} faster than the ramp limit outside a budget drop ({key})",
                        "value": ws[key], "unit": "s", "met": ws[key] == 0})
    return out


def carbon_limits(ws: dict[str, Any], flat: dict[str, Any]) -> str:
    """What bounds the carbon gain, in the runs' own figures: a budget that follows the grid only saves where it
    binds, on the draw above idle, and only on load that could run at another hour."""
    return (f"what bounds it: the flat budget bound the draw (within {BOUND_SHARE:.0%}) "
            f"{flat['budget_bound_share']:.1%} of the time and the following one {ws['budget_bound_share']:.1%} "
            "(elsewhere a lower budget cuts nothing); the GPUs' idle draw is "
            f"{ws['idle_energy_share']:.0%} of the energy, paid at every hour; and every request is served as it "
            "arrives: none is deferred to a cleaner hour")


def summary(scn: Scenario, duration_s: float, seeds: list[int], fleet: dict[str, dict[str, int]],
            policies: dict[str, Any], frontier: dict[str, Any] | str | None = None) -> dict[str, Any]:
    """The report's document; `frontier` (figures, or why none were measured) where an energy target was missed."""
    return {"scenario": scn.settings.name, "description": scn.settings.description, "file": str(scn.path),
            "duration_s": duration_s, "seeds": seeds, "start_budget_w": scn.start_budget_w,
            "events": [{"at_s": e.at_s, "kind": e.kind} for e in scn.settings.events if e.at_s < duration_s],
            "events_after_end": sum(e.at_s >= duration_s for e in scn.settings.events),
            "slos": {svc.name: {"priority": svc.priority, "statistic": svc.statistic, "ttft_ms": svc.ttft_ms,
                                "itl_ms": svc.itl_ms} for svc in scn.config.services},
            "static_fleet": fleet, "policies": policies, "targets": targets(scn, policies, frontier),
            **({"frontier": frontier} if frontier is not None else {})}


def _fleet(fleet: dict[str, dict[str, int]]) -> str:
    """Replicas per service and accelerator, as words: `chat: H100-SXM x2; code: ...`."""
    return "; ".join(f"{svc}: " + ", ".join(f"{acc} x{n}" for acc, n in accs.items()) for svc, accs in fleet.items())


NO_PLOTS = "No figures: matplotlib is not installed (pip install 'wattscale[plots]')."


def _cell(v: Any, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def markdown(doc: dict[str, Any], images: list[str]) -> str:
    pol = doc["policies"]
    lines = [f"# Scenario `{doc['scenario']}`", "", doc["description"] or "", "",
             f"{doc['duration_s']:g} s of simulated time, "
             + (f"seed {doc['seeds'][0]}" if len(doc["seeds"]) == 1 else
                f"seeds {', '.join(map(str, doc['seeds']))} (figures are the mean over seeds)")
             + f"; budget at the start {doc['start_budget_w']:g} W; events: "
             + (", ".join(f"{e['kind']} at {e['at_s']:g} s" for e in doc["events"]) or "none")
             + (f" ({doc['events_after_end']} more after the run's end)" if doc["events_after_end"] else "") + ".",
             "SLOs (a mean service's request meets its own when its TTFT and mean inter-token gap do; a p95 or "
             f"p99 service's requests of a {WINDOW_S:g}-s window meet theirs when the window's quantiles do): "
             + "; ".join(f"{name} (priority {t['priority']}) {t['statistic']} TTFT <= {t['ttft_ms']:g} ms, ITL <= "
                         f"{t['itl_ms']:g} ms" for name, t in doc["slos"].items()) + ".",
             f"The baselines' fleet (sized for the peak by load tests of one replica): {_fleet(doc['static_fleet'])}.",
             "", "## Site", "", "| policy | budget violation (s) | over budget, raw (s) | peak draw (W) "
             "| limits over budget (s) | energy (kWh) | tokens / J | sum T/C |", "|---|---|---|---|---|---|---|---|"]
    for name, p in pol.items():
        lines.append(f"| {name} | {_cell(p['budget_violation_s'], '{:g}')} "
                     f"| {_cell(p['budget_violation_raw_s'], '{:g}')} "
                     f"| {_cell(p['peak_draw_w'], '{:.0f}')} | {_cell(p['limits_over_budget_s'], '{:g}')} "
                     f"| {_cell(p['energy_kwh'])} "
                     f"| {_cell(p['tokens_per_joule'])} | {_cell(p['sum_t_over_c'], '{:.2f}')} |")
    lines += ["", f"Budget violation: seconds whose mean draw passed the budget by more than {VIOLATION_SHARE:.0%},"
              f" the first {STEP_GRACE_S:g} s after a step-down excused (raw: not excused). Sum T/C: over services,"
              " output tokens per second over requests in the system (by Little's law, output tokens per"
              " request-second): the faster each request, the higher. Limits over budget: seconds the GPUs' power"
              " limits summed above the budget; in those seconds only the load kept the draw under it (compare the"
              " peak draw)."]
    shown = [k for k in POWER_FIGURES if any(p.get(k) is not None for p in pol.values())]
    if shown:
        lines += ["", "## Power", "", "| policy | " + " | ".join(POWER_LABELS[k] for k in shown) + " |",
                  "|---" * (len(shown) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(_cell(p.get(k), "{:g}") for k in shown) + " |" for name, p in pol.items()]
    lines += ["", "## Services", "", "| service | policy | SLO attainment | TTFT p95 (ms) | ITL p95 (ms) "
              "| restarts / h | replica changes / h | replicas (mean) |", "|---|---|---|---|---|---|---|---|"]
    for svc in next(iter(pol.values()))["services"]:
        for name, p in pol.items():
            s = p["services"][svc]
            lines.append(f"| {svc} | {name} | {_cell(s['slo_attainment'])} | {_cell(s['ttft_p95_ms'], '{:.0f}')} "
                         f"| {_cell(s['itl_p95_ms'], '{:.1f}')} | {_cell(s['restarts_per_hour'], '{:.1f}')} "
                         f"| {_cell(s['replica_changes_per_hour'], '{:.1f}')} "
                         f"| {_cell(s['replicas_mean'], '{:.2f}')} |")
    if doc["targets"]:
        lines += ["", "## Targets (wattscale)", "", "| target | value | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['value']} {t['unit']} | {'yes' if t['met'] else '**no**'} |"
                  for t in doc["targets"]]
        missed = [t for t in doc["targets"] if not t["met"] and "why" in t]
        lines += ["", "Why missed:", ""] * bool(missed) + [f"- {t['target']}: {t['why']}." for t in missed]
    lines += ["", "## Figures", ""] + ([f"![{Path(i).stem}]({i})" for i in images] or [NO_PLOTS])
    lines += ["", "How each figure is measured: docs/simulate.md.", ""]
    return "\n".join(lines)


def write_trace(path: Path, trace: Trace) -> None:
    """A run's per-second series as CSV: time, budget, draw, the limits' sum, the grid's intensity (nan without
    a carbon CSV), per service its replicas, max batch and mean power limit, and each power domain's draw (what
    the PNGs draw, for a closer look)."""
    names, domains = list(trace.replicas), list(trace.domain_draw_w)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["t_s", "budget_w", "draw_w", "limits_w", "g_co2_per_kwh"]
                     + [f"{n}:{k}" for n in names for k in ("replicas", "max_batch", "cap_w")]
                     + [f"domain {d}:draw_w" for d in domains])
        for k in range(len(trace.t_s)):
            out.writerow([f"{trace.t_s[k]:g}", f"{trace.budget_w[k]:g}", f"{trace.draw_w[k]:.1f}",
                          f"{trace.limits_w[k]:.1f}", f"{trace.intensity_g_per_kwh[k]:g}"]
                         + [f"{v:.1f}" for n in names
                            for v in (trace.replicas[n][k], trace.max_batch[n][k], trace.cap_w[n][k])]
                         + [f"{trace.domain_draw_w[d][k]:.1f}" for d in domains])


def write(report_dir: Path, doc: dict[str, Any], images: list[str]) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "summary.json").write_text(strict_json.dumps(doc, indent=2, sort_keys=False) + "\n")
    (report_dir / "summary.md").write_text(markdown(doc, images))
