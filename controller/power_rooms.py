"""The room each power domain (and the site, last) leaves under its ceiling as the governor moves limits, and the
shares of watts the governor and the blind cut hand out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from actuators import LEAST_RISE_W
from controller.telemetry.base import GpuSample


class Rooms:
    """The room each power domain leaves under its ceiling, kept up to date as limits move."""

    def __init__(self, domains: list[tuple[float, list[str]]], limit: Mapping[str, float]) -> None:
        # Summed in the listing's order: a set's order changes with the process's string hashing, and float
        # sums in another order differ in the last bits, enough to flip a comparison and the run after it.
        self.room = [ceiling - sum(limit[u] for u in m) for ceiling, m in domains]
        self.members = [frozenset(m) for _, m in domains]

    def of(self, uuid: str, site_extra_w: float = 0.0) -> float:
        """The room a GPU may grow into: the least its domains leave, the site (last, every GPU in it) with
        `site_extra_w` more."""
        inner = (r for r, m in zip(self.room[:-1], self.members[:-1], strict=True) if uuid in m)
        return min([self.room[-1] + site_extra_w, *inner])

    def move(self, uuid: str, delta_w: float) -> None:
        for i, m in enumerate(self.members):
            if uuid in m:
                self.room[i] -= delta_w

    def shared_short(self, uuid: str, giver: str, need_w: float, site_extra_w: float = 0.0) -> bool:
        """Whether `giver` is in a domain of `uuid`'s that leaves it less than it needs (room it could free); the
        site (last) with `site_extra_w` more (a ramp's ceiling is no line a lower priority gives its limit up for)."""
        last = len(self.room) - 1
        return any(uuid in m and giver in m and r + (site_extra_w if i == last else 0.0) < need_w
                   for i, (r, m) in enumerate(zip(self.room, self.members, strict=True)))


def settable(samples: Sequence[GpuSample], limits: Mapping[str, float],
             lines: Sequence[tuple[float, Sequence[GpuSample]]]) -> dict[int, float]:
    """The limits to set (GPU index -> watts): each that moves a watt or more (a smaller move is no set's worth), and
    a smaller fall where a line's limits in force would pass it without it, the largest first. The limits are fitted
    to each line exactly: a watt kept per GPU instead left a ramp smaller than the GPUs' count no room at all."""
    out = {g.index: limits[g.uuid] for g in samples if abs(limits[g.uuid] - g.power_limit_w) >= LEAST_RISE_W}
    for line_w, inside in lines:
        in_force = sum(out.get(g.index, g.power_limit_w) for g in inside)
        unset = sorted((g for g in inside if g.index not in out and limits[g.uuid] < g.power_limit_w),
                       key=lambda g: limits[g.uuid] - g.power_limit_w)
        for g in unset:
            if in_force <= line_w:
                break
            out[g.index] = limits[g.uuid]
            in_force -= g.power_limit_w - limits[g.uuid]
    return out


def take_lowest_first(rooms: Sequence[Mapping[str, float]], excess_w: float, slack_w: float = 0.0) -> dict[str, float]:
    """What each GPU gives of `excess_w`: the priority groups' rooms (GPU -> watts it may give, lowest priority
    first) taken in turn, within a group in proportion to room, until the excess is within `slack_w`."""
    taken: dict[str, float] = {}
    for room in rooms:
        total = sum(room.values())
        if excess_w <= slack_w:
            break
        if total <= 0.0:
            continue
        take = min(excess_w, total)
        taken.update((uuid, take * r / total) for uuid, r in room.items() if r > 0.0)
        excess_w -= take
    return taken


def clamp(watts: float, g: GpuSample) -> float:
    return min(g.max_limit_w, max(g.min_limit_w, watts))


def safe_caps(gpus: Sequence[GpuSample], budget_w: float) -> tuple[dict[int, float], bool]:
    """Limits whose sum fits `budget_w` by construction, for when draw cannot be read: one water level for
    all GPUs, each held within its own limits. Also whether they fit (not when the minima alone exceed it)."""
    if not gpus:
        return {}, True
    if sum(g.min_limit_w for g in gpus) > budget_w:
        return {g.index: g.min_limit_w for g in gpus}, False
    lo, hi = 0.0, max(g.max_limit_w for g in gpus)
    for _ in range(60):  # bisection on the level: the sum of clamped levels rises with it
        mid = (lo + hi) / 2
        if sum(clamp(mid, g) for g in gpus) <= budget_w:
            lo = mid
        else:
            hi = mid
    return {g.index: clamp(lo, g) for g in gpus}, True


def fixed_at_limit(g: GpuSample) -> GpuSample:
    """A GPU whose limit cannot be set, as one whose limits allow only the one it has."""
    limit_w = max(g.power_limit_w, g.min_limit_w)
    return replace(g, min_limit_w=limit_w, max_limit_w=limit_w)
