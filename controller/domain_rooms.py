"""The power domains as the optimizer plans within them: each domain's line scaled as the site's budget is
for planning (headroom, and in predicted mode the plan's margin), less what its GPUs count for with no replica
(their draw then, or in caps mode their lowest limits); and
where each service's replicas sit (its variants' GPU lists on a host, or the domain a variant runs in: a
cluster's node pool)."""

from __future__ import annotations

from collections.abc import Mapping

from controller.optimizer import DomainRoom
from controller.service_settings import ServiceSettings
from controller.settings import Settings
from controller.settings_checks import domain_floor_w, domain_room_w


def domain_rooms(settings: Settings, empty_w: Mapping[str, float] | None = None,
                 reserved_w: Mapping[int, float] | None = None) -> tuple[DomainRoom, ...]:
    """`empty_w`: per accelerator, what its GPUs draw with no process where read (else the catalogue's); `reserved_w`:
    GPUs out of service by number, at what the governor still counts each (its last limit): a domain's room keeps
    that much for it, not its draw with no replica (a lost H100 counted at 700 W by the governor and 62 W by the
    plan had the plan give its rack 600 W the governor then cut from the rest)."""
    reserved_w = reserved_w or {}
    return tuple(DomainRoom(d.name, domain_room_w(settings, d, empty_w) - sum(
        max(0.0, w - domain_floor_w(settings, (g,), empty_w)) for g, w in reserved_w.items() if g in d.gpus),
        frozenset(d.gpus)) for d in settings.power.domains)


def placements(settings: Settings, svc: ServiceSettings, lost: frozenset[int] = frozenset()
               ) -> dict[str, tuple[int, ...]]:
    """Per accelerator, the GPUs the service's replicas take in order: the variant's own, or those of the domain
    it runs in (its replicas' watts land there, whichever of them they take); neither: unknown placement. GPUs out of
    service (`lost`) are none of them."""
    pools = {d.name: tuple(i for i in d.gpus if i not in lost) for d in settings.power.domains}
    per_replica = {a.name: a.gpus_per_replica for a in settings.accelerators}
    out = {}
    for v in settings.variants_of(svc):
        if v.gpus:
            out[v.accelerator] = tuple(i for i in v.gpus if i not in lost)
        elif pool := pools.get(v.domain, ()):  # every replica lands in the pool, however many: its GPUs repeated
            out[v.accelerator] = pool * -(-svc.max_replicas * per_replica.get(v.accelerator, 1) // len(pool))
    return out
