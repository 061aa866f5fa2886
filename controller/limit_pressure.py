"""How a GPU's reading stands against its limit: what it counts for, whether it presses the limit or was held by it,
and how far the governor moves a limit in one tick. The governor, the fast loop and the clock shedder read the same."""

from __future__ import annotations

import math

from controller.telemetry.base import GpuSample


def accounted_w(sample: GpuSample) -> float:
    """What a GPU counts for: its reading, or its limit where it has none (a NaN reading is none: it would
    pass every comparison and lift the ramp's ceiling); a reading a little past what the GPU can draw at all (far
    past it, the listing makes it none: gpu_listing.is_draw) counts at that most."""
    p = sample.power_w
    return min(p, sample.max_limit_w) if p is not None and math.isfinite(p) else sample.power_limit_w


def counted_w(g: GpuSample, pinned: frozenset[str]) -> float:
    """What a GPU counts for against a line: a `pinned` one (no limit can be set on it now) at the limit in force
    where that is above its reading, since its load may fill it before the others could be cut (counted at its
    draw, a pinned GPU at 200 of its 700 W kept 1,400 W of limits on a 970-W line for its 5-s backoff)."""
    return max(accounted_w(g), g.power_limit_w) if g.uuid in pinned else accounted_w(g)


def pressed(g: GpuSample) -> bool:
    """Whether a GPU's reading sits within its pressed margin of its limit, whatever held its clock: a ramp limit
    counts such a GPU at its limit. Counted at its draw where its limit held it none of the tick, the room it kept
    inside its margin took a small ramp's whole tick, and a GPU pressing beside it never grew (a review: a 480-W
    load resting 23 W under its limit held a 900-W load at 300 W for good under a 25-W/s ramp); lent to the ramp
    instead, that room's noise, or the watt per GPU the limits are set to, stalled larger sites (two more reviews)."""
    return within_margin(g, g.power_limit_w)


def lends_down_to_w(g: GpuSample, limit_w: float) -> float:
    """The least a GPU not pressed lends its limit down to: its draw, its margin and the watt a limit is set to past
    it (lent to the margin's edge, a GPU under 200 W, whose margin is 10 W whatever its limit, was pressed by it)."""
    return accounted_w(g) + pressed_w(limit_w) + 1.0


def presses(g: GpuSample, limit_w: float) -> bool:
    """Whether a GPU wants room past `limit_w`: it draws within its pressed margin of it and the limit held its clock
    in the tick where the GPU says so (`clipped`), or it draws past it (a limit set under its draw)."""
    return accounted_w(g) >= limit_w or (within_margin(g, limit_w) and clipped(g))


def within_margin(g: GpuSample, limit_w: float) -> bool:
    """Whether a GPU's reading sits within its pressed margin of `limit_w`, or past it."""
    return accounted_w(g) >= limit_w - pressed_w(limit_w)


CLIPPED_SHARE = 0.01
"""The least share of a tick a GPU's limit held its clock for a draw near the limit to count as pressing it."""


def clipped(g: GpuSample) -> bool:
    """Whether a GPU's limit held its clock in the tick, or the GPU cannot say (no violation counter: its reading
    alone judges it). A load under its limit whose reading's noise touched the margin asks for no room: judged by
    the reading alone, it took a 15 % step of a lower priority's limit and gave it back, again and again."""
    return g.capped_share is None or g.capped_share >= CLIPPED_SHARE


HELD_SHARE = 0.1
"""The share of a tick its limit held a GPU's clock from which it may grow past a fitted cap."""


def held(g: GpuSample) -> bool:
    """Whether a GPU's limit held its clock down for a good share of the tick (its prompts' bursts pass it)."""
    return g.capped_share is not None and g.capped_share >= HELD_SHARE


def keeps(g: GpuSample, want_w: float, reach_w: float) -> bool:
    """Whether a GPU with room past its cap (`reach_w` over `want_w`: a fitted cap's ceiling) keeps, or may grow
    into, that room: pressed against its limit, held by it, or drawing past the cap."""
    return reach_w > want_w and (held(g) or pressed(g) or accounted_w(g) > want_w)


def pressed_w(limit_w: float) -> float:
    """How close to its limit a GPU draws before it counts as pressed against it (wants room to grow)."""
    return max(10.0, 0.05 * limit_w)


def at_floor(limit_w: float, g: GpuSample) -> bool:
    return limit_w <= g.min_limit_w + 1.0  # within the 1 W a limit is set to


def step_w(limit_w: float) -> float:
    """The most a pressed GPU's limit grows in one tick: load that grows fast still gets room within
    seconds, and one tick's noise does not strip every other GPU of its room."""
    return max(25.0, 0.15 * limit_w)
