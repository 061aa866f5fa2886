"""The room each power domain (and the site, last) leaves under its ceiling as the governor moves limits."""

from __future__ import annotations

from collections.abc import Mapping


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

    def shared_short(self, uuid: str, giver: str, need_w: float) -> bool:
        """Whether `giver` is in a domain of `uuid`'s that leaves it less than it needs (room it could free)."""
        return any(uuid in m and giver in m and r < need_w for r, m in zip(self.room, self.members, strict=True))
