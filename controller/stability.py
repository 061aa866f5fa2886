"""The stability gate between a plan and the actuators: cooldown, confirmation, step limits, safety first.

Changes that lower power pass at once (a budget is a hard limit). Adding replicas waits out only the
service's cooldown. What costs capacity to make - a new max batch (a rolling restart), fewer replicas, or
a move to another accelerator type - must also be asked for `confirm_cycles` cycles in a row, so one noisy
estimate does not set it off. Replicas move at most `max_replica_step`, caps at most `max_cap_step_w` up,
per cycle; a move starts the new variant with at most `max_replica_step` replicas at the plan's cap for
its type (a cap of one type says nothing of another's, so while a move waits for confirmation what runs
keeps its own cap; the governor holds the budget meanwhile).
"""

from __future__ import annotations

from dataclasses import replace

from controller.optimizer import Assignment
from controller.settings import StabilitySettings


class StabilityGate:
    def __init__(self, settings: StabilitySettings) -> None:
        self.settings = settings
        self.last_change_s: dict[str, float] = {}
        self._asked: dict[str, tuple[tuple[str, int], int, int]] = {}
        """Per service: the (accelerator, max batch) last planned, cycles in a row it was, cycles in a row fewer
        replicas were."""

    def _streaks(self, service: str, current: Assignment, planned: Assignment) -> tuple[int, int]:
        shape = (planned.accelerator, planned.max_batch)
        last, shape_n, shrink_n = self._asked.get(service, (shape, 0, 0))
        shape_n = shape_n + 1 if last == shape else 1
        shrink_n = shrink_n + 1 if planned.replicas < current.replicas else 0
        self._asked[service] = (shape, shape_n, shrink_n)
        return shape_n, shrink_n

    def admit(self, now: float, service: str, current: Assignment, planned: Assignment) -> Assignment:
        """What of `planned` may be applied now, starting from `current`."""
        s = self.settings
        shape_n, shrink_n = self._streaks(service, current, planned)
        if planned == current:
            return current
        cooling = now - self.last_change_s.get(service, -float("inf")) < s.cooldown_s
        if planned.accelerator != current.accelerator:
            if cooling or shape_n < s.confirm_cycles:
                return current
            self.last_change_s[service] = now
            # The service's max batch is one for all its replicas: the new ones start with it, a change follows.
            return replace(planned, replicas=min(planned.replicas, s.max_replica_step), max_batch=current.max_batch)
        cap = planned.power_cap_w
        if cap > current.power_cap_w:
            cap = min(cap, current.power_cap_w + s.max_cap_step_w)
        if cooling:
            out = replace(current, power_cap_w=min(cap, current.power_cap_w))
        else:
            step = max(-s.max_replica_step, min(s.max_replica_step, planned.replicas - current.replicas))
            if step < 0 and shrink_n < s.confirm_cycles:
                step = 0
            batch = planned.max_batch if shape_n >= s.confirm_cycles else current.max_batch
            out = replace(current, replicas=current.replicas + step, max_batch=batch, power_cap_w=cap)
        if (out.replicas, out.max_batch) != (current.replicas, current.max_batch):
            self.last_change_s[service] = now
        return out
