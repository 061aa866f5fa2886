"""How the governor shares a tick's limits out under the site's ceiling and its domains' lines (`allot`): who
keeps room, who grows into it, who lends it, priority first. Split from controller/governor.py, which works out
each GPU's target and the ceiling; this is the arithmetic of one tick, no state kept between ticks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from actuators import LEAST_RISE_W
from controller.limit_pressure import accounted_w, held, keeps, lends_down_to_w, presses, step_w
from controller.power_rooms import Rooms
from controller.telemetry.base import GpuSample


def allot(samples: Sequence[GpuSample], want: Mapping[str, float], reach: Mapping[str, float],
          groups: list[list[GpuSample]], lines: list[tuple[float, list[GpuSample]]], ceiling_w: float,
          pinned: frozenset[str], beyond_w: float, lagging: Mapping[str, float]) -> dict[str, float]:
    """Limits no higher than `want` whose sum stays under `ceiling_w` (the threshold, or less under a ramp limit):
    the most the site can draw at the next tick, whatever its load does. A GPU keeps its limit while it has room
    under it. One pressed against its limit grows by a step a tick, highest priority first, out of the room left
    under the ceiling, then out of the room other GPUs leave unused (lowest priority first), then out of
    strictly lower priorities' limits. Room still free then goes to the plan's caps, highest priority first
    (with a loose budget every GPU sits at its cap). Where the sum is over, unused room is taken back, lowest
    priority first: what lies over each GPU's draw, its pressed margin and a watt, then the rest. `reach`: how
    far each GPU may grow while pressed or held (at least `want`: a fitted cap's ceiling); a limit above `want`
    is kept only while the GPU is, or draws past `want` (`keeps`), and room still free after the caps goes on to
    the ceilings, highest priority first. `beyond_w`: the budget's room above a ramp's ceiling. A GPU only the
    ramp holds back grows by an even share of the tick's room (the free room and that other GPUs' limits leave
    over their draw) and takes no lower priority's limit (given whole to the highest priority, one pressed in its
    draw's noise took it every tick). `groups`: the GPUs by priority, lowest first (`PowerGovernor.by_priority`);
    `lines`: each power domain's line and its GPUs (`PowerGovernor.domains`), the site's ceiling checked after them."""
    floor = {g.uuid: g.power_limit_w if g.uuid in pinned else max(g.min_limit_w, min(want[g.uuid],
                                                                                    accounted_w(g)))
             for g in samples}
    # a GPU its fitted cap holds down may grow to its ceiling, and keeps that room while it draws past the cap
    top = {g.uuid: reach[g.uuid] if keeps(g, want[g.uuid], reach[g.uuid]) else want[g.uuid] for g in samples}
    limit = {g.uuid: min(top[g.uuid], max(g.power_limit_w, floor[g.uuid])) for g in samples}
    order = [g for group in groups for g in group]
    rooms = Rooms([*((line_w, [g.uuid for g in inside]) for line_w, inside in lines),
                   (ceiling_w, [g.uuid for g in samples])], limit)  # the site last
    # the racks first, the site last, each under its ceiling: room left unused first, then, where the floors
    # still pass a line (GPUs drawing at their limits beside idle ones under their lowest), below the draw; a
    # ramp's ceiling is no line: nothing goes below its draw for it (the site's threshold is `beyond_w` above)
    lowest = {g.uuid: floor[g.uuid] if g.uuid in pinned else g.min_limit_w for g in samples}
    site = len(rooms.members) - 1

    def lends_to(h: GpuSample) -> float:
        """The least a GPU not pressed lends its limit down to (`lends_down_to_w`), its floor at least."""
        return max(lends_down_to_w(h, limit[h.uuid]), floor[h.uuid])

    # the room over a margin first (taken down to its draw at once, a GPU pressed its limit that tick and took a
    # step back from a lower priority, by turns every few ticks)
    for down_to, ramp_w in (({g.uuid: lends_to(g) for g in samples}, 0.0), (floor, 0.0), (lowest, beyond_w)):
        for i, members in enumerate(rooms.members):
            for g in (g for g in order if g.uuid in members):
                over = -rooms.room[i] - (ramp_w if i == site else 0.0)
                if over <= 0:
                    break
                take = min(over, max(0.0, limit[g.uuid] - down_to[g.uuid]))
                limit[g.uuid] -= take
                rooms.move(g.uuid, -take)
    pressing = {g.uuid for g in samples if g.uuid not in pinned and (
        presses(g, min(limit[g.uuid], lagging.get(g.uuid, math.inf)))
        or (held(g) and want[g.uuid] - 1.0 <= limit[g.uuid] < top[g.uuid] - 1.0))}  # held at its fitted cap

    # a ramp's tick of room, shared evenly, counts the room limits leave over their GPUs' draw: taken back, it
    # is the ramp's (a 96-W slack over one GPU's draw held two pressed ones at 300 W, the site at 1,100 of 3,880)
    spare = sum(max(0.0, limit[h.uuid] - lends_to(h)) for h in samples if beyond_w > 0 and h.uuid not in pressing
                and h.uuid not in lagging and h.uuid not in pinned)
    tick_w = max(0.0, rooms.room[-1]) + spare
    share = tick_w / max(1, len(pressing))
    if share < LEAST_RISE_W:  # split, no limit would move (a rise under a watt is never set) and the same tick
        share = tick_w  # came again for good: a 900-W load stayed at 450 W among twelve GPUs under 20 W/s
    for k in range(len(groups) - 1, -1, -1):  # highest priority first
        lower = [h for group in groups[:k] for h in group]
        for g in groups[k]:
            r = lagging.get(g.uuid)  # a lagging GPU grows a step from the limit it reads, not an unapplied one
            need = (min(top[g.uuid] - limit[g.uuid], step_w(limit[g.uuid])) if r is None
                    else min(top[g.uuid], r + step_w(r)) - limit[g.uuid])
            if need < 1.0 or g.uuid not in pressing:
                continue
            ramp_only = beyond_w > 0 and rooms.of(g.uuid, beyond_w) >= need
            need = min(need, share) if ramp_only else need
            unused = [(h, lends_to(h)) for h in order
                      if h.uuid not in pressing and h.uuid not in lagging]  # room node plans would not admit
            givers = [*((h, least, 0.0) for h, least in unused),  # a lower priority's limit goes for a line's
                      *((h, h.min_limit_w, beyond_w) for h in ([] if ramp_only else lower))]  # room, not a ramp's
            for h, least, ramp_w in givers:
                if rooms.of(g.uuid) >= need:
                    break
                least = max(least, floor[h.uuid] if h.uuid not in pressing else h.min_limit_w)
                if h is g or h.uuid in pinned or limit[h.uuid] <= least or not rooms.shared_short(
                        g.uuid, h.uuid, need, ramp_w):
                    continue
                take = min(limit[h.uuid] - least, need - rooms.of(g.uuid))
                limit[h.uuid] -= take
                rooms.move(h.uuid, -take)
            rise = max(0.0, min(need, rooms.of(g.uuid)))
            limit[g.uuid] += rise
            rooms.move(g.uuid, rise)
    # room nobody presses for goes to the plan's caps, highest priority first, then (where the caps fitted for
    # the replicas planned leave some: fewer run yet) on to their ceilings; under a ramp's ceiling, none to a GPU
    # not pressing (room it did not draw counted at its draw at the next tick, and that ceiling took it back from
    # the GPUs that grew into it, every other tick: a 900-W load beside five steady ones under 20 W/s stood at
    # 466-541 W 20 ticks after its jump, where the ramp allows 700)
    kept = {g.uuid: math.inf if beyond_w <= 0 or g.uuid in pressing or held(g) else limit[g.uuid]  # held: its
            for g in samples}  # bursts draw the room (kept out of it, one lent down never grew back: a review)
    for grow_to in (want, reach):
        for g in reversed(order):
            rise = min(grow_to[g.uuid], kept[g.uuid]) - limit[g.uuid]
            rise = min(rise, rooms.of(g.uuid))
            if rise > 0:
                limit[g.uuid] += rise
                rooms.move(g.uuid, rise)
    return limit
