"""What a fleet draws with no work (its idle floor) and under its least load (its busy floor), from the
catalogue's figures: no budget below the idle floor can be met, whatever the caps, and every config, spec and
scenario refuses one in the same words."""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.config_loader import ConfigError
from queuemodels.accelerators import CATALOG

if TYPE_CHECKING:
    from controller.settings import Settings


def idle_w(s: Settings) -> float:
    """What the fleet draws idle: every accelerator's count at the catalogue's draw of a GPU no replica holds."""
    return sum(a.count * CATALOG[a.name].empty_draw_w for a in s.accelerators)


def lowest_limits_w(s: Settings) -> float:
    """Every GPU at its lowest power limit: the least the governor's limits sum to, so a budget under it holds every
    GPU there and no cap planned above it applies."""
    return sum(a.count * CATALOG[a.name].min_power_w for a in s.accelerators)


def floor_w(s: Settings) -> float:
    """The least the site can be held to under load: every service's min_replicas busy at the lowest limit of its
    cheapest accelerator, every other GPU with no process (the catalogue's figures). Below it only fewer replicas
    help, and min_replicas forbids them."""
    per_replica = {a.name: a.gpus_per_replica * (CATALOG[a.name].min_power_w - CATALOG[a.name].empty_draw_w)
                   for a in s.accelerators}
    busy = sum(svc.min_replicas * min(per_replica.get(v.accelerator, 0.0) for v in s.variants_of(svc))
               for svc in s.services)
    return idle_w(s) + busy


def below_idle(where: str, budget_w: float, idle: float, whose: str = "fleet", also: str = "") -> ConfigError:
    """The refusal of a budget under the idle floor (`also`: what the reader compares it with)."""
    return ConfigError(where, f"{budget_w:g} W is below the {whose}'s idle draw, {idle:g} W (accelerators' count x "
                       f"the catalogue's draw of a GPU no replica holds{also})")
