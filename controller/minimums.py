"""The services' min_replicas against the inventory (a daemon config's or an optimize spec's): a minimum no plan can
place is a service left at 0 replicas, or short, without the inventory named as why."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Protocol

from controller.config_loader import ConfigError, svc_path

if TYPE_CHECKING:
    from controller.settings import AcceleratorSettings


class _Bounded(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def min_replicas(self) -> int: ...


def minimum_fits(accelerators: Sequence[AcceleratorSettings], services: Sequence[_Bounded],
                 homes: Sequence[Sequence[str]]) -> None:
    """The services' min_replicas fit the inventory together (a config's or an optimize spec's), and each one's on
    some accelerator of its `homes` (a service runs on one type at a time): a minimum the plan cannot place is a
    service left at 0 replicas, or short, without the inventory named as why. A service none of whose types is
    on offer at all (a spec's what-if with count = 0) is planned short for inventory instead."""
    most = {a.name: a.count // a.gpus_per_replica for a in accelerators}
    room = sum(most.values())
    for svc, needed in zip(services, accumulate(b.min_replicas for b in services), strict=True):
        if needed > room:
            for a in accelerators:  # where that is why, the accelerator is what to mend, not the service
                if 0 < a.count < a.gpus_per_replica:
                    raise ConfigError(f"accelerators[{a.name}].gpus_per_replica", f"{a.gpus_per_replica} is more "
                                      f"than the {a.count} GPUs of count: no replica fits, and the services' "
                                      f"min_replicas need {needed}")
            held = ", ".join(f"accelerators[{a.name}] {most[a.name]}: {a.count} GPUs, {a.gpus_per_replica} a replica"
                             for a in accelerators)
            raise ConfigError(f"{svc_path(svc.name)}.min_replicas", f"the services' min_replicas up to here add up "
                              f"to {needed}, more replicas than the accelerators hold ({room}; {held})")
    alone: dict[str, int] = {}  # the min_replicas, up to here, of the services that run on one type only
    for svc, names in zip(services, homes, strict=True):
        if names and 0 < max(most.get(n, 0) for n in names) < svc.min_replicas:
            held = ", ".join(f"{n} holds {most.get(n, 0)}" for n in names)
            raise ConfigError(f"{svc_path(svc.name)}.min_replicas", f"{svc.min_replicas} replicas fit on none of its "
                              f"accelerators ({held}): a service runs on one type at a time")
        if len(names) == 1:
            only = names[0]
            alone[only] = alone.get(only, 0) + svc.min_replicas
            if alone[only] > most.get(only, 0) > 0:
                raise ConfigError(f"{svc_path(svc.name)}.min_replicas", f"the min_replicas up to here of the services "
                                  f"that run on {only} alone add up to {alone[only]}, more than it holds "
                                  f"({most[only]})")
