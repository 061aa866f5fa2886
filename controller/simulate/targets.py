"""What `wattscale simulate` judges: the targets set for the `wattscale` policy (docs/simulate.md, docs/power.md)
against the baselines that ran, each with the figure it was judged on, why it was missed, and which were not judged.
"""

from __future__ import annotations

from typing import Any

from controller.idle_floor import lowest_limits_w
from controller.service_settings import ServiceSettings
from controller.simulate.frontier import T_OVER_C_GAIN, TOKENS_PER_JOULE_GAIN, explain
from controller.simulate.power_figures import BOUND_SHARE
from controller.simulate.scenario import Scenario, fast_ticks

MAX_RESTARTS_PER_HOUR = 2.0
CO2_GAIN = 0.2
"""CO2 per token at least this share below wattscale-flat's."""
MAX_SETTLE_S = 2.0
"""A budget drop met within this long, and a domain over its limit no longer than this."""


def _limits_words(name: str, figures: dict[str, Any]) -> str:
    over, domains = figures["limits_over_budget_s"], figures.get("domain_over_s")
    bound = figures.get("limits_over_bound_s") or 0.0
    return (f"{name} ran with its GPUs' power limits summed above the budget for {over:g} s" + (
        f", {bound:g} s of them drawing within {BOUND_SHARE:.0%} of it or over" if bound else
        f", never drawing within {BOUND_SHARE:.0%} of it") if over else
        f"{name} kept its GPUs' power limits' sum within the budget") + (
        f" (limits' mean sum {figures['mean_limits_w']:g} W; peak draw {figures['peak_draw_w']:g} W"
        + (f"; a power domain's draw over its limit {domains:g} s" if domains else "") + ")")


def _over_a_limit(figures: dict[str, Any]) -> bool:
    """Whether a run's limits summed above the budget while its draw came near it (limits over a budget its draw
    never neared, a spare GPU left at its highest limit, let it draw nothing a hard budget forbids: the line had
    blamed the hard budget for a miss where static peaked at 1,955 W under 2,200), or a power domain (a rack) drew
    over its own limit."""
    return bool(figures.get("limits_over_bound_s") or figures.get("domain_over_s"))


def _attainment_why(service: str, mine: float, ws: dict[str, Any], baselines: dict[str, Any], floor: str) -> str:
    """What the baselines that did better ran on, beside wattscale: limits summed above the budget, or a rack over its
    limit, are what hard limits rule out (and what let their long prompts run at full clock when their GPUs peaked
    together); the line draws that conclusion only where wattscale stayed within both and no better baseline did."""
    better = {k: v for k, v in baselines.items() if (v["services"][service]["slo_attainment"] or 0.0) > mine + 1e-9}
    lines = [_limits_words(f"{k} ({v['services'][service]['slo_attainment']:.4f})", v) for k, v in better.items()]
    lines.append(_limits_words(f"wattscale ({mine:.4f})", ws) + f", under a mean budget of {ws['mean_budget_w']:g} W")
    within = [k for k, v in better.items() if not _over_a_limit(v)]
    if within:
        return "; ".join(lines) + f"; {' and '.join(within)} did better within the budget and every power domain's " \
            "limit, so the hard limits do not explain this miss"
    if ws["limits_over_budget_s"] or ws.get("domain_over_s"):  # over a line too: nothing tells them apart
        return "; ".join(lines) + (f": {floor}" if floor and ws["limits_over_budget_s"] else
                                   ": wattscale passed a line too, so the hard limits do not tell them apart")
    whose = "those ahead" if len(better) > 1 else next(iter(better))
    domains = any(v.get("domain_over_s") for v in better.values())
    return "; ".join(lines) + f": {whose} ran on limits that a hard budget does not allow" + (
        ", or over a power domain's limit" if domains else "")


def _attainment_targets(svc: ServiceSettings, mine: float, ws: dict[str, Any], baselines: dict[str, Any],
                        floor: str) -> list[dict[str, Any]]:
    """A service's attainment against 0.99 where `static` reaches it, and against every baseline's (a miss
    says what the baselines that did better ran on)."""
    out: list[dict[str, Any]] = []
    static = baselines.get("static", {}).get("services", {}).get(svc.name, {}).get("slo_attainment")
    if static is not None and static >= 0.99:
        out.append({"target": f"{svc.name} (priority {svc.priority}): slo_attainment >= 0.99 (static reaches "
                    f"{static:.4f})", "value": mine, "unit": "of requests", "met": mine >= 0.99}
                   | ({} if mine >= 0.99 else {"why": _attainment_why(svc.name, mine, ws,
                                                                      {"static": baselines["static"]}, floor)}))
    best = max(((k, v["services"][svc.name]["slo_attainment"] or 0.0) for k, v in baselines.items()),
               key=lambda kv: kv[1], default=None)
    if best is not None:
        met = mine >= best[1] - 1e-9
        out.append({"target": f"{svc.name} (priority {svc.priority}): slo_attainment >= every baseline's "
                    f"(best: {best[0]} {best[1]:.4f})", "value": mine, "unit": "of requests", "met": met}
                   | ({} if met else {"why": _attainment_why(svc.name, mine, ws, baselines, floor)}))
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


def energy_missed(scn: Scenario, policies: dict[str, Any]) -> bool:
    """Whether an energy target was asked, judged and missed: what the frontier is measured to explain."""
    energy, speed = energy_gains(policies)
    return scn.settings.energy_targets and (
        (energy is not None and energy < TOKENS_PER_JOULE_GAIN) or (speed is not None and speed < T_OVER_C_GAIN))


ENERGY_TARGETS = ((TOKENS_PER_JOULE_GAIN, "tokens_per_joule", "static"), (T_OVER_C_GAIN, "sum_t_over_c", "uniform-cap"))


def energy_targets(policies: dict[str, Any], frontier: dict[str, Any] | str | None) -> list[dict[str, Any]]:
    """tokens per joule against `static`'s and sum T/C against `uniform-cap`'s; a missed one says why from
    `frontier` (controller/simulate/frontier.py's figures, or why it was not measured)."""
    why = None if frontier is None else frontier if isinstance(frontier, str) else explain(frontier)
    out: list[dict[str, Any]] = []
    for gain, (need, figure, base) in zip(energy_gains(policies), ENERGY_TARGETS, strict=True):
        if gain is not None:
            out.append({"target": f"{figure} >= {need} x {base}'s", "value": round(gain, 3), "unit": f"x {base}'s",
                        "met": gain >= need} | ({"why": why} if why and gain < need else {}))
    return out


def _below_floor(scn: Scenario, duration_s: float) -> str:
    """Why no policy can hold the budget, where its lowest (less headroom) is below the GPUs' lowest limits; "" else."""
    lowest = lowest_limits_w(scn.config)
    line = min(scn.config.power.line_w(w) for _, w in scn.stated_budgets(duration_s))
    return (f"the budget at its lowest, {line:.0f} W less headroom, is below the GPUs' lowest limits, {lowest:.0f} W, "
            "which no policy can hold") if line < lowest else ""


def targets(scn: Scenario, policies: dict[str, Any], duration_s: float,
            frontier: dict[str, Any] | str | None = None) -> list[dict[str, Any]]:
    """The targets set for `wattscale` (docs/simulate.md) over a run of `duration_s`, each with the figure it was
    judged on and its unit (empty without it); `frontier` explains a missed energy target (`energy_targets`)."""
    ws = policies.get("wattscale")
    if ws is None:
        return []
    out: list[dict[str, Any]] = [{"target": "budget_violation_s = 0", "value": ws["budget_violation_s"],
                                  "unit": "s", "met": ws["budget_violation_s"] == 0}]
    floor = _below_floor(scn, duration_s)
    if ws["budget_violation_s"] and ws["limits_over_budget_s"]:
        out[0]["why"] = f"wattscale's GPUs' power limits summed above the budget for {ws['limits_over_budget_s']:g} " \
            "s" + (f": {floor}" if floor else "")
    baselines = {k: v for k, v in policies.items() if k not in ("wattscale", "wattscale-flat")}
    fast = scn.config.daemon.fast_interval_s
    ran_s = fast_ticks(duration_s, fast) * fast  # whole fast ticks, as the run's rates are per hour of them
    for svc in sorted(scn.config.services, key=lambda s: s.priority):
        mine = ws["services"][svc.name]["slo_attainment"]
        if mine is not None and _finished_anywhere(policies, svc.name):  # else nothing to judge its attainment by
            out += _attainment_targets(svc, mine, ws, baselines, floor)
        out.append(_restarts_target(svc.name, ws["services"][svc.name]["restarts_per_hour"] or 0.0, ran_s))
    if scn.settings.energy_targets:
        out += energy_targets(policies, frontier)
    return out + power_targets(scn, policies)


def _finished_anywhere(policies: dict[str, Any], service: str) -> bool:
    """Whether some policy finished a request of `service`: in a run of a few seconds none did, every attainment
    read 0, and "0 >= every baseline's 0" was called met."""
    return any(p["services"][service]["finished"] for p in policies.values())


def _restarts_target(service: str, per_hour: float, duration_s: float) -> dict[str, Any]:
    """At most 2 max-batch restarts per service-hour. A run under an hour is judged by its count, as the first hour
    it is part of: one restart in 10 minutes reads 6 per hour, which says nothing of the next 50."""
    count = round(per_hour * duration_s / 3600.0, 2)  # the mean over seeds: not always whole
    short = duration_s < 3600.0
    return {"target": f"{service}: restarts <= {MAX_RESTARTS_PER_HOUR:g} per service-hour (a steady load's target"
            + (f"; {count:g} in this {duration_s:g}-s run, judged as its first hour)" if short else ")"),
            "value": per_hour, "unit": "per hour", "met": (count if short else per_hour) <= MAX_RESTARTS_PER_HOUR}


def not_judged(scn: Scenario, policies: dict[str, Any], duration_s: float) -> list[str]:
    """The targets `targets` leaves out for want of a figure, each with why: a policy they compare with did not run
    (`--policies`), or a service had no request."""
    if "wattscale" not in policies:
        return ["every target: wattscale did not run (--policies)"]
    lost = {e.gpu for e in scn.settings.events if e.kind == "gpu_lost" and e.at_s < duration_s}
    why = "every GPU of the host was lost" if len(lost) >= len(scn.gpu_types) else "too short a run"
    out = [f"{name}: slo_attainment: no request of it came" if s["slo_attainment"] is None else
           f"{name}: slo_attainment: no request of it finished under any policy ({why})"
           for name, s in policies["wattscale"]["services"].items()
           if s["slo_attainment"] is None or not _finished_anywhere(policies, name)]
    if not set(policies) - {"wattscale", "wattscale-flat"}:
        out.append("slo_attainment >= every baseline's: no baseline ran")
    if "static" not in policies:
        out.append("slo_attainment >= 0.99 where static reaches it: static did not run")
    if policies["wattscale"]["co2_mg_per_token"] is not None and "wattscale-flat" not in policies:
        out.append(f"co2_mg_per_token >= {CO2_GAIN:.0%} below wattscale-flat's: wattscale-flat did not run")
    if scn.settings.energy_targets:
        gains = zip(energy_gains(policies), ENERGY_TARGETS, strict=True)
        out += [f"{figure} >= {need} x {base}'s: " + (f"{base} did not run" if base not in policies else
                                                      f"{base} finished no request to measure it by")
                for gain, (need, figure, base) in gains if gain is None]
    return out


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
                    f"({theirs:.4f})", "value": mine, "unit": "of requests", "met": mine >= theirs})
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
            "(elsewhere a lower budget cuts nothing); the GPUs' draw with no process is "
            f"{ws['idle_energy_share']:.0%} of the energy, paid at every hour; and every request is served as it "
            "arrives: none is deferred to a cleaner hour")
