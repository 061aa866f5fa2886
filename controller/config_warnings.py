"""What the config file alone says `run` would warn of (no host probed): budgets and domains under the GPUs' lowest
limits or the services' floors, power levels under a limit, sources that can lift a cut, limits restored while the
servers outlive the daemon, a dry-run replica backend that may scale. `check-config`, `run` and `simulate` say them."""

from __future__ import annotations

import math

from controller.budget.settings import CarbonSettings
from controller.idle_floor import floor_w, lowest_limits_w
from controller.settings import Settings
from controller.settings_checks import domain_lowest_limits_w
from queuemodels.accelerators import CATALOG


def file_warnings(settings: Settings) -> list[str]:
    """What the file alone says `run` would warn of (no host probed)."""
    return config_warnings(settings) + budget_warnings(settings, settings.power.budget_w)


def config_warnings(settings: Settings) -> list[str]:
    """`file_warnings` but the budget's own."""
    return (_floor_levels(settings) + _domain_floors(settings) + _safe_above_curves(settings) + _restored(settings)
            + _dry_run_replicas(settings))


def _dry_run_replicas(settings: Settings) -> list[str]:
    """Services a dry-run replica backend may plan more or fewer replicas for than it runs: the plan counts the
    replicas it asks for as running (a trial's status read two where one ran, and the caps flipped with it). Right
    where an HPA or KEDA scales them to `wattscale_desired_replicas` (deploy/kubernetes/); otherwise fix them."""
    if settings.actuators.replicas != "dry-run":
        return []
    return [f"services[{s.name}].min_replicas: {s.min_replicas} < max_replicas {s.max_replicas} under actuators."
            "replicas = \"dry-run\": the plan counts the replicas it asks for as running; right where an HPA or "
            "KEDA scales the service to wattscale_desired_replicas, else set both to the replicas it runs"
            for s in settings.services if s.min_replicas != s.max_replicas]


def budget_warnings(settings: Settings, budget_w: float, where: str = "power.budget_w") -> list[str]:
    """What a site budget of `budget_w` (stated by `where`: the config's, or a scenario's event) would be warned of:
    under the GPUs' lowest limits, or under what the services' min_replicas draw busy. A warning, not a refusal:
    budget sources and reloads may bring it too, and the daemon sheds replicas."""
    threshold_w, floor = settings.power.line_w(budget_w), floor_w(settings)
    lowest = lowest_limits_w(settings)
    if floor <= threshold_w < lowest:  # the governor's limits cannot fit it: it holds each at its lowest
        return [f"{where}: {budget_w:g} W ({threshold_w:.0f} W less headroom) is below the GPUs' lowest limits, "
                f"{lowest:.0f} W: every GPU is held at its lowest limit, so a cap planned above it does not apply and "
                "the plan serves less than it predicts"]
    if threshold_w >= floor:
        return []
    return [f"{where}: {budget_w:g} W ({threshold_w:.0f} W less headroom) is below what the services' min_replicas "
            f"draw busy at their GPUs' lowest limits with every other GPU idle, {floor:.0f} W: under load no cap holds "
            "it, and the plan cannot go below min_replicas"]


def _restored(settings: Settings) -> list[str]:
    """Default limits restored on exit where the servers outlive the daemon: each stop (a restart, an upgrade) lifted
    the budget for as long as the daemon was down (a host example did so: 8 x 700 W of limits on 4,000 W)."""
    a = settings.actuators
    if not a.restore_power_limits or a.power != "nvml" or (a.batch == "vllm" and a.vllm_runner == "child"):
        return []
    return ["actuators.restore_power_limits: true puts every GPU back at its default limit when the daemon stops, "
            "while the servers it does not run as its children serve on: the budget is not held until it is back "
            "(false keeps the limits it set)"]


def fallback_w(settings: Settings) -> float:
    """What a failed budget source counts as: the safe budget, held to budget_w (controller/handoff.py)."""
    return min(settings.budget.safe_budget_w if settings.budget else math.inf, settings.power.budget_w)


def _safe_above_curves(settings: Settings) -> list[str]:
    """Carbon sources that can set a budget under the safe one: failed, once its last reading ends, such a source
    counts as the safe budget, which lifts the cut it had set (a trial's 2,560 W went to 3,000 W)."""
    if settings.budget is None:
        return []
    safe_w = fallback_w(settings)
    held = f" (held to budget_w, {safe_w:g} W)" if safe_w < settings.budget.safe_budget_w else ""
    return [f"power.budget.safe_budget_w: {settings.budget.safe_budget_w:g} W{held} is above the {low_w:g} W that "
            f"sources[{name}] can set: failed, once its last reading ends, it counts as the safe budget, and the "
            "budget rises"
            for name, src in settings.budget.sources if isinstance(src, CarbonSettings)
            and (low_w := min(w for _, w in src.curve)) < safe_w]


def _domain_floors(settings: Settings) -> list[str]:
    """Domains whose line, less headroom, is under their GPUs' lowest limits: busy, they draw over it whatever the
    governor does (a rack of four H100s under 500 W drew 800 W a whole run, and nothing said why)."""
    out = []
    for d in settings.power.domains:
        floor = domain_lowest_limits_w(settings, d.gpus)
        if (line := settings.power.line_w(d.limit_w)) < floor:
            out.append(f"power.domains[{d.name}].limit_w: {d.limit_w:g} W ({line:.0f} W less headroom) is below its "
                       f"GPUs' lowest limits, {floor:.0f} W: busy, they draw over it whatever the governor sets")
    return out


def _floor_levels(settings: Settings) -> list[str]:
    """The power levels under an accelerator's lowest limit: planned at that floor (the driver takes no less), so
    more than one of them is one cap offered twice ([0.01] read as a cap of 7 W)."""
    out = []
    for a in settings.accelerators:
        p = CATALOG[a.name]
        below = [f"{x:g}" for x in settings.optimizer.power_levels if x * p.max_power_w < p.min_power_w]
        if below:
            out.append(f"optimizer.power_levels: {', '.join(below)} of {a.name}'s {p.max_power_w:g} W is below its "
                       f"lowest limit, {p.min_power_w:g} W: planned at that limit")
    return out
