"""The report of a `wattscale simulate` run: summary.json and a Markdown summary that reads on its own.

Figures are the mean over seeds (each seed's own are kept under `runs`); the verdicts on them are
controller/simulate/targets.py's.
"""

from __future__ import annotations

import csv
import math
import re
import string
from pathlib import Path
from typing import Any

from controller import strict_json
from controller.simulate.accounting import GRACE_S, STEP_GRACE_S, VIOLATION_SHARE, WINDOW_S
from controller.simulate.runner import Trace
from controller.simulate.scenario import APPLIES, Scenario
from controller.simulate.targets import not_judged, targets

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
               "limits_over_bound_s", "mean_limits_w", "energy_kwh",
               "tokens_per_joule", "sum_t_over_c", *POWER_FIGURES)
SERVICE_FIGURES = ("slo_attainment", "requests", "finished", "ttft_mean_ms", "ttft_p95_ms", "itl_mean_ms",
                   "itl_p95_ms", "t_over_c", "restarts_per_hour", "replica_changes_per_hour", "replicas_mean")


def _mean(values: list[Any], cut: bool = False) -> float | None:
    """The mean of the known values to 4 decimals: cut rather than rounded where `cut` (an attainment: a mean of
    0.9999 and 1.0 reads 0.9999, not 1.0)."""
    known = [float(v) for v in values if v is not None]
    if not known:
        return None
    mean = sum(known) / len(known)
    return math.floor(mean * 1e4 + 1e-6) / 1e4 if cut else round(mean, 4)  # 1e-6: three seeds at 0.99 read 0.99


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over seeds of one policy's runs."""
    out: dict[str, Any] = {k: _mean([r[k] for r in runs]) for k in RUN_FIGURES}
    out["services"] = {name: {k: _mean([r["services"][name][k] for r in runs], k == "slo_attainment")
                              for k in SERVICE_FIGURES}
                       for name in runs[0]["services"]}
    out["runs"] = runs
    return out


def summary(scn: Scenario, duration_s: float, seeds: list[int], fleet: dict[str, dict[str, int]],
            policies: dict[str, Any], frontier: dict[str, Any] | str | None = None,
            unmet: list[str] | None = None) -> dict[str, Any]:
    """The report's document; `frontier` (figures, or why none were measured) where an energy target was missed;
    `unmet`, the services no rate of whose load test met their SLO on one replica."""
    return {"scenario": scn.settings.name, "description": scn.settings.description, "file": str(scn.path),
            "duration_s": duration_s, "seeds": seeds, "start_budget_w": scn.start_budget_w,
            "events": [{"at_s": e.at_s, "kind": e.kind} | {k: getattr(e, k) for k in APPLIES[e.kind]}
                       for e in scn.settings.events if e.at_s < duration_s],
            "events_after_end": sum(e.at_s >= duration_s for e in scn.settings.events),
            "slos": {svc.name: {"priority": svc.priority, "statistic": svc.statistic, "ttft_ms": svc.ttft_ms,
                                "itl_ms": svc.itl_ms} for svc in scn.config.services},
            "plant": {"start_delay_s": scn.config.simulator.start_delay_s,
                      "shutdown_timeout_s": scn.config.simulator.shutdown_timeout_s},
            "static_fleet": fleet, "static_fleet_unmet": unmet or [], "policies": policies,
            "targets": targets(scn, policies, duration_s, frontier),
            "not_judged": not_judged(scn, policies, duration_s),
            **({"frontier": frontier} if frontier is not None else {})}


def _plant_words(plant: dict[str, float]) -> str:
    """How the simulated vLLM starts and stops, which decides what every scale-down costs a policy that scales."""
    stop = (f"drains what it holds for up to {plant['shutdown_timeout_s']:g} s (vLLM's --shutdown-timeout)"
            if plant["shutdown_timeout_s"] > 0 else "aborts what it holds, resubmitted from the start (vLLM's "
            "default: no --shutdown-timeout)")
    return f"A replica takes {plant['start_delay_s']:g} s to load its model; one scaled away or restarted {stop}."


def event_words(event: dict[str, Any]) -> str:
    """`gpu_lost at 200 s (gpu 3)`: an event of the summary with what it did."""
    what = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in event.items()
                     if k not in ("at_s", "kind") and v != "")
    return f"{event['kind']} at {event['at_s']:g} s" + (f" ({what})" if what else "")


def _fleet(fleet: dict[str, dict[str, int]]) -> str:
    """Replicas per service and accelerator, as words: `chat: H100-SXM x2; code: ...`."""
    return "; ".join(f"{svc}: " + ", ".join(f"{acc} x{n}" for acc, n in accs.items()) for svc, accs in fleet.items())


NO_PLOTS = "No figures: matplotlib is not installed (pip install 'wattscale[plots]')."


def _cell(v: Any, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def _paragraph(text: str) -> str:
    """`text` as a paragraph of its own: a line that opens a heading, a quote, a list or a table is escaped."""
    text = text.lstrip()
    number = re.match(r"\d+(?=[.)])", text)
    if number:
        return f"{number.group()}\\{text[number.end():]}"
    return f"\\{text}" if text and text[0] in string.punctuation else text  # a fence, a rule, a link definition, HTML


def _code(text: str) -> str:
    """`text` as a code span: fenced by one backtick more than its longest run of them (a name holding one broke
    the heading's span), spaced where it starts or ends with one."""
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown(doc: dict[str, Any], images: list[str]) -> str:
    pol = doc["policies"]
    about = _paragraph(doc["description"] or "")
    lines = [f"# Scenario {_code(doc['scenario'])}", "", *([about, ""] if about else []),
             f"{doc['duration_s']:g} s of simulated time, "
             + (f"seed {doc['seeds'][0]}" if len(doc["seeds"]) == 1 else
                f"seeds {', '.join(map(str, doc['seeds']))} (figures are the mean over seeds)")
             + f"; budget at the start {doc['start_budget_w']:g} W; events: "
             + (", ".join(map(event_words, doc["events"])) or "none")
             + (f" ({doc['events_after_end']} more after the run's end)" if doc["events_after_end"] else "") + ".",
             "SLOs (a mean service's request meets its own when its TTFT and mean inter-token gap do; a p95 or "
             f"p99 service's requests of a {WINDOW_S:g}-s window meet theirs when the window's quantiles do): "
             + "; ".join(f"{name} (priority {t['priority']}) {t['statistic']} TTFT <= {t['ttft_ms']:g} ms, ITL <= "
                         f"{t['itl_ms']:g} ms" for name, t in doc["slos"].items()) + ".",
             f"The baselines' fleet (sized for the peak by load tests of one replica): {_fleet(doc['static_fleet'])}."
             + (" No rate of one replica's load test met the SLO of "
                f"{', '.join(f'`{n}`' for n in doc['static_fleet_unmet'])}: the baselines ask each such service's "
                "max_replicas, as far as the GPUs go, and no fleet of them may meet its SLO."
                if doc.get("static_fleet_unmet") else ""),
             _plant_words(doc["plant"]),
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
              " request-second) of the finished requests (one dropped or still waiting at the end counts in"
              " neither: read it beside finished / arrived): the faster each request, the higher. Limits over"
              " budget: seconds the GPUs' power limits summed above the budget; in those seconds only the load kept"
              " the draw under it (compare the peak draw)."]
    shown = [k for k in POWER_FIGURES if any(p.get(k) is not None for p in pol.values())]
    if shown:
        lines += ["", "## Power", "", "| policy | " + " | ".join(POWER_LABELS[k] for k in shown) + " |",
                  "|---" * (len(shown) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(_cell(p.get(k), "{:g}") for k in shown) + " |" for name, p in pol.items()]
    lines += ["", "## Services", "", "| service | policy | SLO attainment | finished / arrived | TTFT p95 (ms) "
              "| ITL p95 (ms) | restarts / h | replica changes / h | replicas (mean) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for svc in next(iter(pol.values()))["services"]:
        for name, p in pol.items():
            s = p["services"][svc]
            lines.append(f"| {svc} | {name} | {_cell(s['slo_attainment'], '{:.4f}')} "  # cut to 4 places: shown whole
                         f"| {_cell(s['finished'], '{:.0f}')} / {_cell(s['requests'], '{:.0f}')} "
                         f"| {_cell(s['ttft_p95_ms'], '{:.0f}')} "
                         f"| {_cell(s['itl_p95_ms'], '{:.1f}')} | {_cell(s['restarts_per_hour'], '{:.1f}')} "
                         f"| {_cell(s['replica_changes_per_hour'], '{:.1f}')} "
                         f"| {_cell(s['replicas_mean'], '{:.2f}')} |")
    lines += ["", f"Requests that arrived up to {GRACE_S:g} s before the run's end (in the first half of a run under "
              f"{2 * GRACE_S:g} s) are scored; TTFT and ITL p95 are over those that finished, and one that never "
              "finished (dropped, still queued) counts as a miss in the attainment alone. Per-hour rates of a run "
              "shorter than an hour are its counts scaled to the hour."]
    if doc["targets"]:
        lines += ["", "## Targets (wattscale)", "", "| target | value | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['value']} {t['unit']} | {'yes' if t['met'] else '**no**'} |"
                  for t in doc["targets"]]
        whys: dict[str, list[str]] = {}  # one reason for both energy targets (the frontier's) is said once
        for t in doc["targets"]:
            if not t["met"] and "why" in t:
                whys.setdefault(t["why"], []).append(t["target"])
        lines += ["", "Why missed:", ""] * bool(whys) + [f"- {' and '.join(ts)}: {why}." for why, ts in whys.items()]
    if doc["not_judged"]:
        lines += ["", "Not judged:", ""] + [f"- {line}." for line in doc["not_judged"]]
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
                     + [f"{n}:{k}" for n in names for k in ("replicas", "max_batch", "limit_w")]
                     + [f"domain {d}:draw_w" for d in domains])
        for k in range(len(trace.t_s)):
            out.writerow([f"{trace.t_s[k]:g}", f"{trace.budget_w[k]:g}", f"{trace.draw_w[k]:.1f}",
                          f"{trace.limits_w[k]:.1f}", f"{trace.intensity_g_per_kwh[k]:g}"]
                         + [f"{v:.1f}" for n in names
                            for v in (trace.replicas[n][k], trace.max_batch[n][k], trace.limit_w[n][k])]
                         + [f"{trace.domain_draw_w[d][k]:.1f}" for d in domains])


def write(report_dir: Path, doc: dict[str, Any], images: list[str]) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "summary.json").write_text(strict_json.dumps(doc, indent=2, sort_keys=False) + "\n")
    (report_dir / "summary.md").write_text(markdown(doc, images))
