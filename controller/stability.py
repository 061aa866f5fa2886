"""The stability gate between a plan and the actuators: cooldown, confirmation, step limits, safety first.

Changes that lower power pass at once (a budget is a hard limit). Adding replicas waits out only the
service's cooldown. What costs capacity to make - a new max batch (a rolling restart) or fewer replicas -
must also be asked for `confirm_cycles` cycles in a row, so one noisy estimate does not set it off.
Replicas move at most `max_replica_step`, caps at most `max_cap_step_w` up, per cycle.
"""

from __future__ import annotations

from dataclasses import replace

from controller.optimizer import Assignment
from controller.settings import StabilitySettings


class StabilityGate:
    def __init__(self, settings: StabilitySettings) -> None:
        self.settings = settings
        self.last_change_s: dict[str, float] = {}
        self._asked: dict[str, tuple[int, int, int]] = {}
        """Per service: the max batch last planned, cycles in a row it was, cycles in a row fewer replicas were."""

    def _streaks(self, service: str, current: Assignment, planned: Assignment) -> tuple[int, int]:
        batch, batch_n, shrink_n = self._asked.get(service, (planned.max_batch, 0, 0))
        batch_n = batch_n + 1 if batch == planned.max_batch else 1
        shrink_n = shrink_n + 1 if planned.replicas < current.replicas else 0
        self._asked[service] = (planned.max_batch, batch_n, shrink_n)
        return batch_n, shrink_n

    def admit(self, now: float, service: str, current: Assignment, planned: Assignment) -> Assignment:
        """What of `planned` may be applied now, starting from `current`."""
        s = self.settings
        batch_n, shrink_n = self._streaks(service, current, planned)
        if planned == current:
            return current
        cap = planned.power_cap_w
        if cap > current.power_cap_w:
            cap = min(cap, current.power_cap_w + s.max_cap_step_w)
        cooling = now - self.last_change_s.get(service, -float("inf")) < s.cooldown_s
        if cooling:
            out = replace(current, power_cap_w=min(cap, current.power_cap_w))
        else:
            step = max(-s.max_replica_step, min(s.max_replica_step, planned.replicas - current.replicas))
            if step < 0 and shrink_n < s.confirm_cycles:
                step = 0
            batch = planned.max_batch if batch_n >= s.confirm_cycles else current.max_batch
            out = replace(current, replicas=current.replicas + step, max_batch=batch, power_cap_w=cap)
        if (out.replicas, out.max_batch) != (current.replicas, current.max_batch):
            self.last_change_s[service] = now
        return out
