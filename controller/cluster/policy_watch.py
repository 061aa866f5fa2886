"""The PowerPolicy's power settings as the watch sees them, for the governor at once.

The slow tick reads the custom resources at its period, after a tick that may wait on Prometheus: a budget cut
written into the policy reached the governor a slow period late or more, where a host's reload gives it at once.
kopf's watch hands each event of the policy to the acting loop (controller/cluster/handlers.py); a new generation's
lower budget goes to the governor then, and a slow tick's read of an older generation is not applied over it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controller.cluster.snapshot import resource_spec
from controller.settings import Settings
from controller.telemetry.base import finite


def generation_of(obj: dict[str, Any]) -> int:
    """A resource's generation (0 where it has none: never newer than what was seen)."""
    generation = (obj.get("metadata") or {}).get("generation")
    return generation if isinstance(generation, int) and not isinstance(generation, bool) else 0


def _budget_w(obj: dict[str, Any]) -> float | None:
    """The policy's `spec.power.budget_w` alone, where it is a finite number: read apart from the rest of the spec,
    which a cut does not wait on (checked whole, a bad `plan_ttl_s` in the same edit kept a cut from 2,400 to 1,000 W
    off the GPUs until the policy was mended)."""
    power = resource_spec(obj).get("power")
    return finite(power.get("budget_w")) if isinstance(power, dict) else None


def watched_budget(newest: Settings, obj: dict[str, Any]) -> Settings | None:
    """`newest` (the settings the governor holds, a reload's still waiting for the slow tick among them) with the
    policy's lower `power.budget_w`, where it is lower and they pass the checks with it; None else. A cut is the safe
    direction, taken from a policy whatever the slow tick makes of the rest of it; a rise, and every other field,
    waits for the slow tick, which reads the policy whole and refuses what it refuses."""
    try:
        budget_w = _budget_w(obj)
        if budget_w is None or budget_w >= newest.power.budget_w:
            return None
        settings = replace(newest, power=replace(newest.power, budget_w=budget_w))
        settings.check("")
    except Exception:
        return None
    return settings
