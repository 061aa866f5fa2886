"""The stability gate between a plan and the actuators: cooldown, confirmation, step limits, safety first.

Changes that lower power pass at once (a budget is a hard limit): lower caps always, and fewer replicas, whole,
while the site is over its budget with every limit at its floor (`urgent`: the governor is exhausted; only fewer
replicas bring the draw down then, and confirming them would leave the site over its budget for `confirm_cycles`
cycles); while urgent nothing else passes: no replica past min_replicas, no restart, and a move waits while what
it leaves shrinks. Adding replicas otherwise waits out only the service's cooldown. What costs capacity to make -
a new max batch (a rolling restart), fewer replicas, or a move to another accelerator type - must also be asked
for `confirm_cycles` cycles in a row, so one noisy estimate does not set it off. Replicas move at most
`max_replica_step`, caps at most `max_cap_step_w` up, per cycle (the plan's cap is published as the ceiling of the
cap held lower meanwhile: the governor grows a GPU that cap holds down toward it); a move starts the new variant
with at most `max_replica_step` replicas at the plan's cap for its type (a cap of one type says nothing of
another's, so while a move waits for confirmation what runs keeps its own cap; the governor holds the budget
meanwhile). A service below its min_replicas (a move's new variant once the old one drained, a replica lost)
steps back towards them at the next cycle, cooling or not.

A new max batch also waits, up to `short_restart_hold_s`, while the plan leaves its service short of
capacity with no replica to add ("replicas": at `max_replicas`; "inventory": no free GPU): a rolling restart
takes each replica out in turn, and the surge replica that carries one elsewhere cannot start, so a restart
in a burst turns a shortfall into a queue that outlasts it (diurnal.toml, code's burst: p95 TTFT 5.3 s in
the minute the restart ran). A shortfall for power ("budget", "domain") holds nothing: a smaller shape is
the degradation ladder's second step.

The cooldown counts from a change the actuators took (`note_change`), not from one the gate let through: a
scale-up refused for want of free GPUs does not hold the next try back. Where the GPUs a scale-up needs are
held by services the plan shrinks, `make_room` lets those shrinks through at once, lowest priority first:
the plan already chose who gives way, and confirming it while a higher priority waits costs more SLO than
one noisy estimate could. A service more important than every one waiting gives way only once its shrink
is confirmed (diurnal.toml: chat, priority 1, gave a replica to code's token-speed spare at once, mid-burst,
on one cycle's plan; 23 of its requests waited up to 4.7 s).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from controller.optimizer import Assignment
from controller.settings import AcceleratorSettings, StabilitySettings

CAPACITY_SHORT = ("replicas", "inventory")
"""Shortfall reasons (controller/optimizer/solvers.py) that leave no replica to carry a rolling restart."""


class StabilityGate:
    def __init__(self, settings: StabilitySettings) -> None:
        self.settings = settings
        self.last_change_s: dict[str, float] = {}
        self._short_since: dict[str, float] = {}
        """Per service: when the plan first left it short of capacity, in the shortfall now running."""
        self._asked: dict[str, tuple[tuple[str, int], int, int, int]] = {}
        """Per service: the (accelerator, max batch) last planned, cycles in a row it was, cycles in a row its
        accelerator was, cycles in a row fewer replicas were."""

    def _streaks(self, service: str, current: Assignment, planned: Assignment) -> tuple[int, int, int]:
        """Cycles in a row the plan asked for its shape (a new max batch), for its accelerator (a move: its new
        replicas start at the max batch in force, so a max batch changing each cycle does not hold one back, where
        the variant it turned back to and the one it left both ran on) and for fewer replicas."""
        shape = (planned.accelerator, planned.max_batch)
        last, shape_n, acc_n, shrink_n = self._asked.get(service, (shape, 0, 0, 0))
        shape_n = shape_n + 1 if last == shape else 1
        acc_n = acc_n + 1 if last[0] == planned.accelerator else 1
        shrink_n = shrink_n + 1 if planned.replicas < current.replicas else 0
        self._asked[service] = (shape, shape_n, acc_n, shrink_n)
        return shape_n, acc_n, shrink_n

    def admit(self, now: float, service: str, current: Assignment, planned: Assignment,
              short_reason: str | None = None, urgent: bool = False, least: int = 0,
              one_variant: bool = True) -> Assignment:
        """What of `planned` may be applied now, starting from `current`; `short_reason` is why the plan leaves
        the service short of its load (None: it does not); `urgent`: over budget with every limit at its floor;
        `least`: the service's min_replicas, which it regains even while urgent or cooling; `one_variant`: no
        other variant of it runs (a move's old one drained)."""
        s = self.settings
        shape_n, acc_n, shrink_n = self._streaks(service, current, planned)
        held = self._restart_held(now, service, short_reason)
        if planned == current:
            return current
        if urgent:  # fewer replicas, whole and at once; nothing that adds a GPU's draw (a replica past min_replicas,
            # a move: the plan that asks for them reads the draws at its caps, not the floors the governor holds,
            # where a replica slowed past its load draws its whole floor) and no restart
            if planned.accelerator != current.accelerator:  # a move waits; what it leaves shrinks now, as the plan
                # counted it gone (a cap of one type says nothing of another's)
                return replace(current, replicas=min(current.replicas, max(least, 1)))
            regained = min(planned.replicas, least) if one_variant else 0  # not mid-move (below)
            return replace(current, replicas=max(min(planned.replicas, current.replicas), regained),
                           power_cap_w=min(planned.power_cap_w, current.power_cap_w))
        cooling = now - self.last_change_s.get(service, -float("inf")) < s.cooldown_s
        if planned.accelerator != current.accelerator:
            if cooling or acc_n < s.confirm_cycles:
                return current
            # The service's max batch is one for all its replicas: the new ones start with it, a change follows.
            return replace(planned, replicas=min(planned.replicas, s.max_replica_step), max_batch=current.max_batch)
        cap = planned.power_cap_w
        if cap > current.power_cap_w:
            cap = min(cap, current.power_cap_w + s.max_cap_step_w)
        # Mid-move (its old variant still runs) the new one does not grow: the old drains once every replica of the
        # service serves, and a growth pending for GPUs that another service's move frees only once this one's old
        # variant is gone held both moves for good (two services trading types, a replica's warm-up past the
        # cooldown). Once drained, below min_replicas a step back towards them passes, cooling or not: a move
        # starts the new variant at max_replica_step, which held a service of three on one replica for the cooldown.
        if cooling:
            regain = min(planned.replicas, least) - current.replicas if one_variant else 0
            out = replace(current, replicas=current.replicas + max(0, min(regain, s.max_replica_step)),
                          power_cap_w=min(cap, current.power_cap_w))
        else:
            step = max(-s.max_replica_step, min(s.max_replica_step, planned.replicas - current.replicas))
            if (step < 0 and shrink_n < s.confirm_cycles) or (step > 0 and not one_variant):
                step = 0
            batch = planned.max_batch if shape_n >= s.confirm_cycles else current.max_batch
            if batch != current.max_batch and (planned.replicas > current.replicas or held):
                batch = current.max_batch  # the replicas that carry the restart come first; the batch follows
            out = replace(current, replicas=current.replicas + step, max_batch=batch, power_cap_w=cap)
        return out

    def _restart_held(self, now: float, service: str, short_reason: str | None) -> bool:
        """Whether a rolling restart must wait: the service is short of capacity with no replica to add, and
        has been for less than `short_restart_hold_s`."""
        if short_reason not in CAPACITY_SHORT:
            self._short_since.pop(service, None)
            return False
        since = self._short_since.setdefault(service, now)
        return now - since < self.settings.short_restart_hold_s

    def note_change(self, now: float, service: str) -> None:
        """The actuators took a change of the service's replicas, variant or max batch: its cooldown starts."""
        self.last_change_s[service] = now

    def make_room(self, gpus: Mapping[str, Inventory], services: list[Pending]) -> dict[str, Assignment]:
        """Let through, lowest priority first, the shrinks the plan asks for that free the GPUs the admitted
        scale-ups need on each accelerator type; returns what is admitted now, per service."""
        out = {p.name: p.admitted for p in services}
        for acc, inv in gpus.items():
            on = [p for p in services if p.admitted.accelerator == acc]
            # Growth counts a move onto this type whole; shrinks already admitted free their GPUs for it.
            grow = sum(p.admitted.replicas - (p.current.replicas if p.current.accelerator == acc else 0) for p in on)
            short = grow * inv.gpus_per_replica - inv.free
            growers = [p.priority for p in on if p.admitted.replicas > (p.current.replicas if p.current.accelerator
                                                                         == acc else 0)]
            top = min(growers, default=math.inf)  # the most important service that waits for a GPU
            for p in sorted(services, key=lambda p: -p.priority):
                if short <= 0:
                    break
                if p.current.accelerator != acc or p.admitted.accelerator != acc or p.priority < top:
                    continue  # a service never gives way early to a less important one: its shrink is confirmed
                floor = max(p.planned.replicas, p.current.replicas - self.settings.max_replica_step)
                give = min(out[p.name].replicas - floor, math.ceil(short / inv.gpus_per_replica))
                if give > 0:
                    out[p.name] = replace(out[p.name], replicas=out[p.name].replicas - give)
                    short -= give * inv.gpus_per_replica
        return out


@dataclass(frozen=True)
class Inventory:
    """GPUs of one accelerator type: how many no replica holds now, and how many a replica takes."""

    free: int
    gpus_per_replica: int = 1

    @classmethod
    def of(cls, accelerators: Iterable[AcceleratorSettings],
           running: Iterable[Mapping[str, int]]) -> dict[str, Inventory]:
        """Per accelerator type, the GPUs no replica holds (`running`: each service's replicas per type, as read
        back) and the GPUs a replica takes."""
        used: dict[str, int] = {}
        for got in running:
            for acc, n in got.items():
                used[acc] = used.get(acc, 0) + n
        return {a.name: cls(a.count - used.get(a.name, 0) * a.gpus_per_replica, a.gpus_per_replica)
                for a in accelerators}


@dataclass(frozen=True)
class Pending:
    """One service's change this cycle: what runs, what the plan asks, what the gate let through."""

    name: str
    priority: int
    current: Assignment
    planned: Assignment
    admitted: Assignment
