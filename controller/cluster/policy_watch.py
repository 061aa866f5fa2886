"""The PowerPolicy's power settings as the watch sees them, for the governor at once.

The slow tick reads the custom resources at its period, after a tick that may wait on Prometheus: a budget cut
written into the policy reached the governor a slow period late or more, where a host's reload gives it at once.
kopf's watch hands each event of the policy to the acting loop (controller/cluster/handlers.py); a new generation's
lower budget goes to the governor then, and a slow tick's read of an older generation is not applied over it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controller.cluster.resources import policy_spec
from controller.cluster.snapshot import resource_spec
from controller.settings import Settings


def generation_of(obj: dict[str, Any]) -> int:
    """A resource's generation (0 where it has none: never newer than what was seen)."""
    generation = (obj.get("metadata") or {}).get("generation")
    return generation if isinstance(generation, int) and not isinstance(generation, bool) else 0


def watched_budget(newest: Settings, obj: dict[str, Any]) -> Settings | None:
    """`newest` (the settings the governor holds, a reload's still waiting for the slow tick among them) with the
    policy's lower `power.budget_w`, where it is lower and they pass the checks; None else. A cut is the safe
    direction, taken from a policy whatever the slow tick makes of the rest of it; a rise, and every other field,
    waits for the slow tick, which reads the policy whole and refuses what it refuses."""
    try:
        budget_w = policy_spec(resource_spec(obj)).power.budget_w
        if budget_w >= newest.power.budget_w:
            return None
        settings = replace(newest, power=replace(newest.power, budget_w=budget_w))
        settings.check("")
    except Exception:
        return None
    return settings
