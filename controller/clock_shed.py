"""The governor's fast clock lever: where a GPU's draw must fall under a limit the governor just lowered below it,
its SM clock is locked down the same tick, so the draw falls at once through the clock.

The hard budget stays with the limits: the governor sets them exactly as with caps alone (their sum under the
threshold by construction, lowest priority cut first), and a lock never lets a GPU draw past its limit. What the
lock adds is how the draw gets under the new limit: a GPU's own cap response is a feedback loop over a window (the
driver's power brake throttles coarsely, then recovers), while a lock takes effect at the next kernel and holds
every step at one clock. So the lock is chosen to bring the draw just under the limit, and the cap binds only for
what the clock could not shed (memory and idle draw barely follow the clock). Each tick corrects the hold from
the draw read at it: a GPU still pressed against its limit is lowered further, down to `min_share`; one drawing
well under its limit is raised a step, and the hold ends once it reaches the plan's clock (the governor gave the
watts back). The lowest-priority GPUs are the ones cut, so they are the ones whose clocks fall.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence, Set

from controller.limit_pressure import pressed_w
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

    def step(self, samples: Sequence[GpuSample], limits_w: Mapping[str, float], shedding: Set[str],
             share: Callable[[GpuSample], float], planned: Callable[[GpuSample], float]) -> dict[int, float]:
        """The clock shares to hold GPUs at now (GPU index -> share), given the limits in force after this tick
        (`limits_w`, by UUID), the GPUs the governor holds below the plan's cap (`shedding`, by UUID: a plan's
        own cap that binds is the plan's choice, not a shed), each GPU's clock share in force (`share`) and the
        plan's (`planned`, 1.0 free). A GPU without a reading keeps its hold: its draw is not known, and its
        limit bounds it anyway (a NaN reading counts as none)."""
        out = {}
        listed = set()
        for g in samples:
            listed.add(g.uuid)
            held = self.holds.get(g.uuid)
            if g.power_w is None or not math.isfinite(g.power_w) or g.power_w <= 0:
                if held is not None:
                    out[g.index] = held
                continue
            hold = self._decide(g, limits_w.get(g.uuid, g.power_limit_w), share(g), planned(g), held,
                                g.uuid in shedding)
            if hold is None:
                self.holds.pop(g.uuid, None)
            else:
                self.holds[g.uuid] = hold
                out[g.index] = hold
        self.holds = {u: h for u, h in self.holds.items() if u in listed}
        return out

    def _decide(self, g: GpuSample, limit_w: float, now: float, plan: float, held: float | None,
                shedding: bool) -> float | None:
        """The share to hold the GPU at (None: no hold): lower while it is pressed against a limit the governor
        cut, kept just under it, raised a step a tick once it has room or is no longer held down."""
        draw = min(g.power_w or 0.0, g.max_limit_w)  # a reading past what the GPU can draw is a glitch, not a draw
        margin = pressed_w(limit_w)  # a held GPU aims just under the governor's 'pressed' band
        pressed = draw > limit_w - margin
        if shedding and pressed and (held is not None or draw > limit_w + 1.0):
            # The compute part of the draw falls at least as fast as the clock: proportional is the least shed.
            # a hold in force counts even where the lock in force reads otherwise (one failed and was dropped)
            share = max(self.min_share, min(now, plan, held or 1.0) * max(0.0, limit_w - margin) / draw)
            return share if share < plan else None
        if held is None:
            return None
        if shedding and draw >= limit_w - 2 * margin:
            return held  # just under the limit: the clock holds the draw where the governor wants it
        # Room under the limit, or the governor no longer holds the GPU down: clock back, a step at a time.
        share = held * (RAISE_STEP if not shedding else min(RAISE_STEP, (limit_w - margin) / draw))
        return share if share < plan else None


