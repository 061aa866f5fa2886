"""The fast-loop power governor: the site's draw never passes its threshold, lowest priority first.

The limits in force always sum under budget x (1 - headroom): a GPU draws at most its limit, so whatever the load
does before the next tick, the site cannot pass the threshold (a loose limit over a low draw is room a burst can
fill in one tick, so it counts in full). Within that sum, a GPU keeps its limit while it has room under it; one
pressed against its limit grows a step a tick, highest priority first, from the free room, then from room other GPUs
leave unused, then from lower priorities. Targets come from the plan (per-service caps; where a cap was fitted
within the limits' sum, a GPU pressed against it or held by it for a good share of the tick grows on toward the cap
chosen before, its ceiling); if measured draw still passes the threshold (a step-down of the budget, minimum limits)
caps are cut below the draw, lowest priority first, and given back once draw is below budget x release_below; and
where the limits' floors pass a line though the draw does not (idle GPUs' lowest limits over their draw), a busy GPU's
limit goes below its draw that tick, lowest priority first (a ramp's ceiling takes none below its draw). With
ramp limits, the limits never let the draw rise faster than `ramp_up_w_per_s`, and the governor's own lowering of
limits (a smaller cap planned) takes it down no faster than `ramp_down_w_per_s`, except where the site or a domain
is over its line (a budget drop). A GPU whose reading failed counts at its limit, never at zero, and so does one
no limit can be set on now (pinned) where its limit is above its reading: the others are cut to make room for it.
Cuts are kept by GPU UUID, so a GPU that changes position in a listing keeps its own cut; each GPU is held within its
own limits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.limit_allot import allot
from controller.limit_pressure import accounted_w, at_floor, counted_w, keeps, lends_down_to_w
from controller.plan import Plan
from controller.power_rooms import clamp, fixed_at_limit, safe_caps, settable, take_lowest_first
from controller.settings import PowerSettings
from controller.telemetry.base import GpuSample


class PowerGovernor:
    def __init__(self, settings: PowerSettings, interval_s: float = 1.0) -> None:
        self.settings = settings
        """Replaced whole on a reload (one reference): the next step uses the new budget, cuts kept."""
        self.interval_s = interval_s
        """Time between two steps (the fast loop's period): a tick's share of the ramp limit."""
        self.cut_w: dict[str, float] = {}
        """GPU UUID -> watts held below the plan's cap."""
        self.emergency = False
        self.exhausted = False
        """Over the threshold with every limit it may set at its floor: caps can cut no more, only fewer
        replicas (the slow loop's) bring the draw down."""
        self.ramp_bound = False
        """The last step's limits were held under the draw plus a tick's ramp, below the threshold: GPUs held
        under the plan's caps then wait on the ramp limit, not on the budget."""

    def threshold_w(self) -> float:
        return self.settings.line_w(self.settings.budget_w)

    def step(
        self,
        samples: Sequence[GpuSample],
        plan: Plan,
        pinned: frozenset[str] = frozenset(),
        lagging: Mapping[str, float] | None = None,
    ) -> dict[int, float]:
        """Limits to set now (GPU index -> watts), only where they differ from what is in force. A GPU no
        service runs on, or whose variant the plan has no cap for, is held at its minimum. A `pinned` GPU
        (UUID) cannot be set now (its actuator failed, it is missing from the listing, or its limits are unknown):
        it is counted at the limit in force, and the others are fitted around it. A `lagging` GPU (UUID -> the limit
        its reading says) is counted at a higher limit that may be in force any moment (a node plan not yet reported
        applied): judged pressed and grown a step against the limit it reads, it lends nothing, and counts whole."""
        lagging = lagging or {}
        s = self.settings
        priorities = plan.priorities
        target = {}
        for g in samples:
            cap = plan.cap_w(g.service, g.variant) if g.service else None
            target[g.uuid] = g.min_limit_w if cap is None else clamp(cap, g)
        if s.mode == "caps":
            self._fit_caps(samples, target, priorities, self.threshold_w())
        measured = sum(counted_w(g, pinned) for g in samples)
        threshold = self.threshold_w()
        over = []
        taken: dict[str, float] = {}  # watts this tick's cuts took below the draw, per GPU
        for line_w, inside in self.domains(samples):  # a rack at its breaker is cut even where the site has room
            over.append(sum(counted_w(g, pinned) for g in inside) - line_w)
            self._cut_line(inside, target, priorities, over[-1], pinned, taken)
        if measured > threshold:
            self.emergency = True
            self._cut_line(samples, target, priorities, measured - threshold, pinned, taken)
        elif measured < s.budget_w * s.release_below and all(v < 0 for v in over):
            self.emergency = False
            self._release(samples, priorities, threshold - measured)
        self.emergency = self.emergency or any(v > 0 for v in over)
        want = {g.uuid: g.power_limit_w if g.uuid in pinned else max(g.min_limit_w, target[g.uuid] -
                                                                       self.cut_w.get(g.uuid, 0.0)) for g in samples}
        reach = dict(want)  # how far past its cap a GPU may grow: to a fitted cap's ceiling, and only within every
        # line with no cut held; never in caps mode, where the caps themselves fit
        for g in samples if s.mode != "caps" and not self.emergency and all(v <= 0 for v in over) else ():
            if g.service and g.uuid not in pinned and (top_w := plan.ceiling_w(g.service, g.variant)) is not None:
                reach[g.uuid] = max(want[g.uuid], clamp(top_w, g) - self.cut_w.get(g.uuid, 0.0))
        if s.ramp_down_w_per_s > 0 and measured <= threshold and all(v <= 0 for v in over):  # one that keeps its
            # room past its cap (`allot`) makes no fall
            falling = [g for g in samples if g.uuid not in pinned and not keeps(g, want[g.uuid], reach[g.uuid])]
            self._hold_fall(falling, want, s.ramp_down_w_per_s * self.interval_s)
            reach = {u: max(w, want[u]) for u, w in reach.items()}
        ceiling = threshold
        if s.ramp_up_w_per_s > 0:  # the next tick's draw may not rise more than the ramp allows
            ceiling = min(ceiling, self._ramp_base_w(samples, lagging) + s.ramp_up_w_per_s * self.interval_s)
        self.ramp_bound = ceiling < threshold - 1.0
        limits = allot(samples, want, reach, self.by_priority(samples, priorities), self.domains(samples), ceiling,
                       pinned, threshold - ceiling, lagging)
        free = [g for g in samples if g.uuid not in pinned]  # none free (every GPU missing): not the floors' doing
        self.exhausted = measured > threshold and bool(free) and all(at_floor(limits[g.uuid], g) for g in free)
        return settable(samples, limits, [*self.domains(samples), (ceiling, list(samples))])

    def _ramp_base_w(self, samples: Sequence[GpuSample], lagging: Mapping[str, float]) -> float:
        """The draw a ramp limit grows from: a GPU whose limit the governor would not lend (its reading within its
        margin of it, or within the watt past that a limit is lent down to: `lends_down_to_w`) counts at its limit,
        held by it or not (it draws a little under it on average; counted at its draw, the site could never grow by
        less than that gap a tick, a fleet at its caps would stall under a small ramp, and one resting inside its
        margin kept a GPU pressing beside it from growing; one in the watt past the margin, counted at its draw but
        never lent, had the ceiling take that gap from the others every tick), and so does one at its floor (no limit
        holds it lower: an idle GPU's 120 W under it took every tick's ramp), the others at their draw, at least their
        lowest limit (a GPU idle under it, counted at its draw 1 W above its floor and at that floor on it, moved the
        ceiling back and forth by the gap and its limit with it every tick). A lagging GPU counts whole, as it is
        counted under the ceiling too."""

        def counted(g: GpuSample) -> float:
            kept = g.power_limit_w <= lends_down_to_w(g, g.power_limit_w) or at_floor(g.power_limit_w, g)
            return g.power_limit_w if kept or g.uuid in lagging else max(accounted_w(g), g.min_limit_w)

        return sum(counted(g) for g in samples)

    def _hold_fall(self, samples: Sequence[GpuSample], want: dict[str, float], fall_w: float) -> None:
        """Limits lowered below the draw (a plan's smaller cap, room taken back) may take no more than `fall_w`
        off the site's draw in one tick: each GPU's fall is scaled down alike. Only outside a budget drop:
        a site or domain over its line is cut at once, whatever the ramp."""
        falls = {g.uuid: max(0.0, accounted_w(g) - want[g.uuid]) for g in samples}
        total = sum(falls.values())
        if total <= fall_w:
            return
        for g in samples:
            if falls[g.uuid] > 0:
                want[g.uuid] = accounted_w(g) - falls[g.uuid] * fall_w / total

    def domains(self, samples: Sequence[GpuSample]) -> list[tuple[float, list[GpuSample]]]:
        """Each power domain's line (its limit less the headroom) and its GPUs among `samples`."""
        s = self.settings
        return [(s.line_w(d.limit_w), [g for g in samples if g.index in d.gpus]) for d in s.domains]

    def failsafe_caps(self, samples: Sequence[GpuSample], pinned: frozenset[str] = frozenset()) -> tuple[
            dict[int, float], bool]:
        """Limits that fit the budget and every domain's line whatever the GPUs draw (`safe_caps`), none above the
        limit a GPU has (one held lower, at its minimum for no service, stays there); and whether they fit. A
        `pinned` GPU (missing, of unknown limits, its sets in backoff) cannot be set: it counts at the limit it has,
        and the others share what it leaves."""
        samples = [fixed_at_limit(g) if g.uuid in pinned else g for g in samples]
        caps, fits = safe_caps(samples, self.threshold_w())
        for line_w, inside in self.domains(samples):
            domain_caps, fit = safe_caps(inside, line_w)
            caps.update({i: min(w, caps[i]) for i, w in domain_caps.items()})
            fits = fits and fit
        return {g.index: min(caps[g.index], max(g.power_limit_w, g.min_limit_w)) for g in samples}, fits

    def by_priority(self, samples: Sequence[GpuSample], priorities: Mapping[str, int]) -> list[list[GpuSample]]:
        """GPU groups from the lowest priority (largest number) up; idle GPUs first of all."""
        groups: dict[int, list[GpuSample]] = {}
        for g in samples:
            rank = priorities.get(g.service, 1) if g.service else 10**6
            groups.setdefault(rank, []).append(g)
        return [groups[k] for k in sorted(groups, reverse=True)]

    def tried_anyway(self, samples: Sequence[GpuSample], fixed: frozenset[str],
                     waiting: frozenset[str]) -> frozenset[str]:
        """Of the GPUs `waiting` out a failed set's backoff (pinned meanwhile: the others cut for them), those to
        lower at once: the ones inside a line (the site's threshold, a domain's) whose draw is over it by more than
        the other GPUs inside it can cut (two GPUs failing at a budget drop were over it for 5 s)."""
        forced: set[str] = set()
        if not waiting:  # the usual tick: no sum over the site's GPUs for nothing
            return frozenset()
        stuck = fixed | waiting
        for line_w, inside in [(self.threshold_w(), list(samples)), *self.domains(samples)]:
            free = [g for g in inside if g.uuid not in stuck]
            excess_w = sum(counted_w(g, stuck) for g in inside) - line_w
            if excess_w > 0 and excess_w > sum(max(0.0, accounted_w(g) - g.min_limit_w) for g in free):
                forced |= {g.uuid for g in inside if g.uuid in waiting}
        return frozenset(forced)

    def _cut_line(self, inside: Sequence[GpuSample], target: dict[str, float], priorities: Mapping[str, int],
                  excess_w: float, pinned: frozenset[str], taken: dict[str, float]) -> None:
        """Cut a line's excess, less what this tick's cuts for other lines (`taken`, added to) already took below
        the draw of its GPUs: the site's excess counts a rack's, and cut for both in full, a rack 30 W over its line
        and the site 260 W over its own took 490 W, the lowest priority held 230 W under what both lines allowed
        while the site's draw stayed above the release line."""
        excess_w -= sum(taken.get(g.uuid, 0.0) for g in inside)
        if excess_w > 0:
            for uuid, take in self._cut(inside, target, priorities, excess_w, pinned).items():
                taken[uuid] = taken.get(uuid, 0.0) + take

    def _cut(self, samples: Sequence[GpuSample], target: dict[str, float], priorities: Mapping[str, int],
             excess_w: float, pinned: frozenset[str]) -> dict[str, float]:
        """Cut `excess_w` below the draw, lowest priority first, from the GPUs that can be set now (a pinned GPU's
        share was never applied, and its cut wound up a tick at a time while the site stayed over); returns what
        each GPU gave."""
        rooms = [{g.uuid: 0.0 if g.uuid in pinned else max(0.0, min(accounted_w(g), target[g.uuid] -
                                                                    self.cut_w.get(g.uuid, 0.0)) - g.min_limit_w)
                  for g in group} for group in self.by_priority(samples, priorities)]
        by_uuid = {g.uuid: g for g in samples}
        takes = take_lowest_first(rooms, excess_w)
        for uuid, take in takes.items():
            cut = self.cut_w.get(uuid, 0.0)  # below present draw, so the limit bites at once
            self.cut_w[uuid] = cut + max(0.0, target[uuid] - cut - accounted_w(by_uuid[uuid])) + take
        return takes

    def _release(self, samples: Sequence[GpuSample], priorities: Mapping[str, int], spare_w: float) -> None:
        """Give cuts back, highest priority first, no more in all than `spare_w`."""
        for group in reversed(self.by_priority(samples, priorities)):
            for g in group:
                cut = self.cut_w.get(g.uuid, 0.0)
                give = min(cut, spare_w)
                if give > 0:
                    self.cut_w[g.uuid] = cut - give
                    spare_w -= give
        self.cut_w = {u: c for u, c in self.cut_w.items() if c >= 1.0}

    def _fit_caps(self, samples: Sequence[GpuSample], target: dict[str, float], priorities: Mapping[str, int],
                  budget: float) -> None:
        """Conservative mode: the caps themselves must fit the budget; trim lowest priority first."""
        over = sum(target.values()) - budget
        for group in self.by_priority(samples, priorities):
            for g in group:
                if over <= 0:
                    return
                give = min(over, target[g.uuid] - g.min_limit_w)
                target[g.uuid] -= give
                over -= give
