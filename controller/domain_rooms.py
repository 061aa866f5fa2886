"""The power domains as the optimizer plans within them: each domain's line scaled as the site's budget is
for planning (headroom, and in predicted mode the plan's margin), less its GPUs' idle draw; and where each
service's replicas sit (its variants' GPU lists, on a host)."""

from __future__ import annotations

from controller.optimizer import DomainRoom
from controller.service_settings import ServiceSettings
from controller.settings import PowerSettings, Settings
from queuemodels.accelerators import CATALOG


def domain_rooms(settings: Settings, power: PowerSettings) -> tuple[DomainRoom, ...]:
    """`power` is the settings' power with the budget in force (its sources'): its planned share applies to
    every domain's limit as it does to the site's budget."""
    if not power.domains:
        return ()
    share = power.planned_w() / power.budget_w
    kind = {g: v.accelerator for svc in settings.services for v in settings.variants_of(svc) for g in v.gpus}
    default = settings.accelerators[0].name
    rooms = []
    for d in power.domains:
        idle_w = sum(CATALOG[kind.get(g, default)].idle_power_w for g in d.gpus)
        rooms.append(DomainRoom(d.name, d.limit_w * share - idle_w, frozenset(d.gpus)))
    return tuple(rooms)


def placements(settings: Settings, svc: ServiceSettings) -> dict[str, tuple[int, ...]]:
    """Per accelerator, the GPUs the service's replicas take in order (none listed: unknown placement)."""
    return {v.accelerator: v.gpus for v in settings.variants_of(svc) if v.gpus}
