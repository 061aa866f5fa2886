"""The PowerPolicy's power settings as the watch sees them, for the governor at once.

The slow tick reads the custom resources at its period, after a tick that may wait on Prometheus: a budget cut
written into the policy reached the governor a slow period late or more, where a host's reload gives it at once.
kopf's watch hands each event of the policy to the acting loop (controller/cluster/handlers.py); a new generation's
power settings, checked as the slow tick would check them, go to the governor then, and a slow tick's read of an
older generation is not applied over them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controller.cluster.resources import policy_power, policy_spec
from controller.cluster.snapshot import resource_spec
from controller.settings import Settings


def generation_of(obj: dict[str, Any]) -> int:
    """A resource's generation (0 where it has none: never newer than what was seen)."""
    generation = (obj.get("metadata") or {}).get("generation")
    return generation if isinstance(generation, int) and not isinstance(generation, bool) else 0


def watched_power(running: Settings, obj: dict[str, Any], seen: int) -> tuple[int, Settings] | None:
    """The policy's generation and the running settings with its power settings (its domains on the GPUs they run on:
    a new one waits for the slow tick, which knows its GPUs), where it is newer than `seen` and passes the checks;
    None else (a policy the checks refuse waits for the slow tick, which reports it by field)."""
    generation = generation_of(obj)
    if generation <= seen:
        return None
    try:
        gpus = {d.name: d.gpus for d in running.power.domains}
        settings = replace(running, power=policy_power(policy_spec(resource_spec(obj)), gpus))
        settings.check("")
    except Exception:
        return None
    return generation, settings
