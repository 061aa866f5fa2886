"""The fast loop while it cannot read the GPUs (a failed, blind, empty or hung sample).

The governor steers on readings; without them it still holds the budget. A tick that read the GPUs leaves
their limits within the threshold and every domain's line, so limits past either mean a budget or a line that
fell meanwhile: the excess is cut at once, lowest priority first, and nothing rises while blind. After
`failsafe_after_ticks` lost ticks in a row, limits whose sum fits the budget by construction go to every GPU
last seen, and `wattscale_power_failsafe` reads 1, until readings return.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from actuators import worth_setting
from controller.power_rooms import take_lowest_first

if TYPE_CHECKING:
    from controller.fast_loop import FastLoop

log = logging.getLogger("wattscale.governor")


class Blind:
    """The fast loop's state and steps between readings."""

    def __init__(self, failsafe_after_ticks: int) -> None:
        self.failsafe_after_ticks = failsafe_after_ticks
        self.lost = 0
        """Failed or blind samples in a row."""
        self.since = 0.0
        """When the run of lost samples began."""
        self.failsafe_due: set[int] = set()
        """GPUs the failsafe has yet to set once since it began."""
        self.failsafe_on = False
        """Whether safe caps hold."""
        self.cut_said = False
        """Whether a cut while blind was logged in this run of lost ticks."""

    def read(self) -> None:
        """A tick read the GPUs: the run of lost ticks, if any, ends."""
        if self.failsafe_on:
            log.info("GPU readings back after %d lost ticks; the governor steers again", self.lost)
        self.lost, self.failsafe_on, self.cut_said = 0, False, False

    def step(self, loop: FastLoop, now: float) -> None:
        """One more lost tick: safe caps once there are enough, before that a cut where the limits pass a line."""
        if self.lost == 0:
            self.since = now
        self.lost += 1
        if self.lost >= self.failsafe_after_ticks:
            self._failsafe(loop, now)
        else:  # the hard limit waits on no count of ticks
            self._cut(loop, now)

    def _cut(self, loop: FastLoop, now: float) -> None:
        """What the limits in force pass each domain's line and then the threshold by, taken off them lowest
        priority first (within a priority, in proportion to the room above their floors), none below its floor and
        none of a GPU that cannot be set (missing, or its sets in backoff). The governor's own state is left as it
        was: its step would grow the GPUs it read as pressed, out of the limits of lower priorities."""
        governor, threshold = loop.governor, loop.governor.threshold_w()
        pinned = loop.listing.missing | {g.uuid for g in loop.samples if not loop.retry.may_try(limit_key(g.uuid), now)}
        held = loop.later.held_w() if loop.later is not None else {}  # node plans: a limit written may be in force
        counted = {g.uuid: max(g.power_limit_w, held.get(g.index, 0.0)) for g in loop.samples}
        limit = dict(counted)
        for line_w, inside in [*governor.domains(loop.samples), (threshold, loop.samples)]:  # the site last
            rooms = [{g.uuid: max(0.0, limit[g.uuid] - g.min_limit_w) for g in group if g.uuid not in pinned}
                     for group in governor.by_priority(inside, loop.plan.priorities)]
            for uuid, take in take_lowest_first(rooms, sum(limit[g.uuid] for g in inside) - line_w, 1.0).items():
                limit[uuid] -= take
        set_w = {g.uuid: loop.set_limit(now, g, limit[g.uuid]) for g in loop.samples  # any fall: a share under a
                 if worth_setting(counted[g.uuid], limit[g.uuid])}  # watt each left 24 GPUs 10 W over (a review)
        if not set_w:
            return
        loop.samples = [replace(g, power_limit_w=w) if (w := set_w.get(g.uuid)) is not None else g
                        for g in loop.samples]
        loop.export_limits()
        loop.metrics.emergency.set(1.0)
        if not self.cut_said:
            log.warning("limits over the %.0f-W threshold or a domain's line with the GPU readings lost: the excess "
                        "cut, lowest priority first", threshold)
            self.cut_said = True

    def _failsafe(self, loop: FastLoop, now: float) -> None:
        """Safe caps (PowerGovernor.failsafe_caps) on every GPU last seen: each set on entry whatever its reading
        says (a limit read late may be above it) until set, then where its limit differs. A GPU that cannot be set
        (missing, of unknown limits, its sets in backoff) counts at its limit; one in backoff is tried anyway where
        the caps do not fit without it (`forceable`: twice a run of failures at most), as the governor tries one.
        One left above its cap (its set failed, or its driver applied more) is pinned where it is, and the others'
        caps are shared again around it."""
        fixed = frozenset(loop.listing.missing) | loop.unknown
        waiting = frozenset(g.uuid for g in loop.samples if not loop.retry.may_try(limit_key(g.uuid), now)) - fixed
        pinned = fixed | waiting
        caps, fits = loop.governor.failsafe_caps(loop.samples, pinned)
        forced = frozenset(u for u in waiting if loop.retry.forceable(limit_key(u))) if not fits else frozenset()
        if forced:
            pinned -= forced
            caps, fits = loop.governor.failsafe_caps(loop.samples, pinned)
        loop.metrics.failsafe.set(1.0)
        entered, self.failsafe_on = not self.failsafe_on, True
        if entered:
            self.failsafe_due = set(caps)
        for _ in range(len(loop.samples) + 1):
            stuck = self._set_caps(loop, now, caps, pinned, forced)
            if stuck is None:
                break
            pinned |= {stuck}
            caps, fits = loop.governor.failsafe_caps(loop.samples, pinned)
        loop.export_limits()
        if entered:  # said once the caps are set: the saying is not the safety
            unset = {g.index for g in loop.samples if g.uuid in pinned}  # counted, not written
            failed = self.failsafe_due - unset  # its write failed: tried again at the next tick
            set_w = ", ".join(f"GPU {i} {w:.0f} W" for i, w in sorted(caps.items()) if i not in unset | failed)
            log.error("GPU readings lost for %d ticks: safe caps %s%s%s", self.lost,
                      set_w or ("(none set)" if caps else "(no GPU ever seen)"),
                      "".join(f"; GPU {i} counted at {caps[i]:.0f} W (cannot be set)" for i in sorted(unset)),
                      "".join(f"; GPU {i} not set to {caps[i]:.0f} W (its write failed)" for i in sorted(failed)))
            if not fits:
                held_w = sum(caps[i] for i in unset)
                log.error("the safe caps do not fit the budget: %s", f"the GPUs that cannot be set hold {held_w:.0f} W "
                          "of it" if unset else "the GPUs' minimum limits alone exceed it; each is at its minimum")

    def _set_caps(self, loop: FastLoop, now: float, caps: dict[int, float], pinned: frozenset[str],
                  forced: frozenset[str]) -> str | None:
        """Set each GPU not pinned to its cap where due, those whose sets failed lately first (set after, the others'
        caps had assumed them lowered: 2,398 W of limits on a 1,940-W threshold), the listing then holding what each
        driver applied. Stops at the first GPU left above its cap, whose room the others' caps had counted, and
        returns it (None: every one set)."""
        for g in sorted(loop.samples, key=lambda g: limit_key(g.uuid) not in loop.retry.failing):
            cap = caps[g.index]  # a pinned GPU is counted in them at the limit it has, and not set
            if g.uuid in pinned or (g.index not in self.failsafe_due and not worth_setting(g.power_limit_w, cap)):
                continue
            w = loop.set_limit(now, g, cap, g.uuid in forced)
            if w is not None:  # a new listing: the slow loop may be reading the last one
                self.failsafe_due.discard(g.index)
                loop.samples = [replace(h, power_limit_w=w) if h.uuid == g.uuid else h for h in loop.samples]
            if (g.power_limit_w if w is None else w) > cap + 1.0:
                return g.uuid
        return None


def limit_key(uuid: str) -> str:
    """A GPU's limit sets in the retry book (the fast loop's and the fail-safe's)."""
    return f"power_limit:{uuid}"
