"""The governor's fast clock lever: where a GPU's draw must fall under a limit the governor just lowered below it,
its SM clock is locked down the same tick, so the draw falls at once through the clock.

The hard budget stays with the limits: the governor sets them exactly as with caps alone (their sum under the
threshold by construction, lowest priority cut first), and a lock never lets a GPU draw past its limit. What the
lock adds is how the draw gets under the new limit: a GPU's own cap response is a feedback loop over a window (the
driver's power brake throttles coarsely, then recovers), while a lock takes effect at the next kernel and holds
every step at one clock. So the lock is chosen to bring the draw just under the limit, and the cap binds only for
what the clock could not shed (memory and idle draw barely follow the clock). Each tick corrects the hold from
the draw read at it: a GPU the governor cuts whose draw passes its limit, or whose cap bites, is lowered further,
down to `min_share`; one with room under its cut limit rises towards an aim inside the governor's pressed band; and
once the governor cuts it no more (a limit a ramp or a higher priority lends down is no cut) it rises a step a
tick until the hold ends at the plan's clock. The lowest-priority GPUs are the ones cut, so they are the ones whose
clocks fall.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence, Set

from controller.limit_pressure import CLIPPED_SHARE, pressed_w
from controller.telemetry.base import GpuSample

RAISE_STEP = 1.25
"""The most a hold rises in one tick (x the share), so a clock given back does not overshoot the limit at once."""


class ClockShed:
    def __init__(self, min_share: float = 0.3) -> None:
        self.min_share = min_share
        """The lowest clock share a hold goes to: below it a GPU serves too slowly to be worth the watts; the cap
        sheds the rest."""
        self.holds: dict[str, float] = {}
        """GPU UUID -> the clock share it is held at (of its maximum SM clock), below the plan's."""

    def step(self, samples: Sequence[GpuSample], limits_w: Mapping[str, float], cut: Set[str],
             share: Callable[[GpuSample], float], planned: Callable[[GpuSample], float]) -> dict[int, float]:
        """The clock shares to hold GPUs at now (GPU index -> share), given the limits in force after this tick
        (`limits_w`, by UUID), the GPUs the governor cuts below their draw for a line they pass (`cut`, by UUID: a
        plan's own cap that binds is the plan's choice, and a limit a ramp or a higher priority lends down is no
        cut), each GPU's clock share in force (`share`) and the plan's (`planned`, 1.0 free). A GPU without a
        reading keeps its hold: its draw is not known, and its limit bounds it anyway (a NaN reading counts as
        none)."""
        out = {}
        listed = set()
        for g in samples:
            listed.add(g.uuid)
            held = self.holds.get(g.uuid)
            if g.power_w is None or not math.isfinite(g.power_w) or g.power_w <= 0:
                if held is not None:
                    out[g.index] = held
                continue
            hold = self._decide(g, limits_w.get(g.uuid, g.power_limit_w), share(g), planned(g), held, g.uuid in cut)
            if hold is None:
                self.holds.pop(g.uuid, None)
            else:
                self.holds[g.uuid] = hold
                out[g.index] = hold
        self.holds = {u: h for u, h in self.holds.items() if u in listed}
        return out

    def _decide(self, g: GpuSample, limit_w: float, now: float, plan: float, held: float | None,
                cut: bool) -> float | None:
        """The share to hold the GPU at (None: no hold): lowered while its draw passes a limit the governor cut it
        to, held inside the pressed band, raised with the room the cut leaves it, and a step a tick once the
        governor cuts it no more."""
        draw = min(g.power_w or 0.0, g.max_limit_w)  # a reading past what the GPU can draw is a glitch, not a draw
        margin = pressed_w(limit_w)
        # A hold rises towards an aim inside the governor's 'pressed' band, so it presses for the room a cut leaves
        # as a capped GPU does. Only a cut lowers it, or keeps it: aimed just under the band and kept while a ramp
        # or a higher priority lent the limit down, a hold never rose (code's GPU at a third of its clock for good,
        # its SLO met on 0.19 of its requests), or, where the draw barely follows the clock, was lowered and raised
        # by turns, its limit and lock set again every tick under a loose budget.
        aim_w = limit_w - 0.5 * margin
        fell = limit_w < g.power_limit_w - 1.0
        # the limit held the clock in the tick (its cap bit): the reading, clipped, says nothing of the room
        bit = draw >= g.power_limit_w - 1.0 if g.capped_share is None else g.capped_share >= CLIPPED_SHARE
        if cut and (draw > limit_w + 1.0 or (held is not None and (
                (fell and draw > aim_w) or (bit and limit_w <= g.power_limit_w + 1.0)))):
            # The compute part of the draw falls at least as fast as the clock: proportional is the least shed.
            # a hold in force counts even where the lock in force reads otherwise (one failed and was dropped);
            # clear under the band, so the cap need not bite
            share = max(self.min_share, min(now, plan, held or 1.0) * max(0.0, limit_w - margin) / draw)
            return share if share < plan else None
        if held is None:
            return None
        # Room under the cut limit, or no cut: clock back, a step at a time.
        share = held * (min(RAISE_STEP, max(1.0, aim_w / draw)) if cut else RAISE_STEP)
        return share if share < plan else None
