"""The stability gate between a plan and the actuators: cooldown, step limits, safety first.

Changes that lower power pass at once (a budget is a hard limit); everything else waits out the
service's cooldown and moves at most `max_replica_step` replicas and `max_cap_step_w` watts a cycle.
"""

from __future__ import annotations

from dataclasses import replace

from controller.optimizer import Assignment
from controller.settings import StabilitySettings


class StabilityGate:
    def __init__(self, settings: StabilitySettings) -> None:
        self.settings = settings
        self.last_change_s: dict[str, float] = {}

    def admit(self, now: float, service: str, current: Assignment, planned: Assignment) -> Assignment:
        """What of `planned` may be applied now, starting from `current`."""
        if planned == current:
            return current
        s = self.settings
        cap = planned.power_cap_w
        if cap > current.power_cap_w:
            cap = min(cap, current.power_cap_w + s.max_cap_step_w)
        cooling = now - self.last_change_s.get(service, -float("inf")) < s.cooldown_s
        if cooling:
            out = replace(current, power_cap_w=min(cap, current.power_cap_w))
        else:
            step = max(-s.max_replica_step, min(s.max_replica_step, planned.replicas - current.replicas))
            out = replace(current, replicas=current.replicas + step, max_batch=planned.max_batch, power_cap_w=cap)
        if (out.replicas, out.max_batch) != (current.replicas, current.max_batch):
            self.last_change_s[service] = now
        return out
