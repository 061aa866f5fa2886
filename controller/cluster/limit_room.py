"""Room for raises under caps: what the node plans' limits may sum to whichever agent applies its plan first.

The governor keeps the limits in force under the budget (less headroom) and each domain's line. A host sets a cut
before the raise fitted on it and reads both back; node plans are applied by each node's agent as it fetches its own,
so a raise written beside a cut may land first, and a plan written may be in force before its agent says so. A GPU
counts here at the most it may hold (`Unacked`): its limit as reported, or any limit written in a plan its agent has
not yet reported following, whichever is higher; a cut lowers none of that until its agent reports it. A raise is
written only while the sums of those, with it, fit every line; else it waits, queued, for the cuts to be in force.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

MAX_UNACKED = 64
"""Plans kept per node past the one its agent reports: beyond, the oldest are merged (each GPU at their highest)."""


class Unacked:
    """Per node, the limits of each plan written since the one its agent last reported following (its status'
    `plan_sequence`): any may be in force by the next tick, and a new leader's first counts the plan it adopted."""

    def __init__(self) -> None:
        self.plans: dict[str, list[tuple[int, dict[str, float]]]] = {}

    def written(self, node: str, sequence: int, limits_w: Mapping[str, float]) -> None:
        plans = self.plans.setdefault(node, [])
        plans.append((sequence, dict(limits_w)))
        if len(plans) > MAX_UNACKED:
            merged: dict[str, float] = {}
            for _, limits in plans[:2]:
                for k, w in limits.items():
                    merged[k] = max(w, merged.get(k, w))
            plans[:2] = [(plans[1][0], merged)]

    def acked(self, node: str, sequence: object, latest: int | None) -> None:
        """The agent reports following plan `sequence`: that one and those before are in force or replaced. One past
        the `latest` written (a plan deleted and made again from 0, its agent still on the old count) says nothing."""
        if isinstance(sequence, int) and not isinstance(sequence, bool) and node in self.plans and (
                latest is None or sequence <= latest):
            self.plans[node] = [(q, limits) for q, limits in self.plans[node] if q > sequence]

    def most(self, node: str, local: int, limit_w: float, max_w: float) -> float:
        """The most GPU `local` of `node` may hold: its reported `limit_w` or a limit written since (<= `max_w`)."""
        written = [limits[str(local)] for _, limits in self.plans.get(node, ()) if str(local) in limits]
        return max(limit_w, min(max(written), max_w)) if written else limit_w

    def drop(self, node: str) -> None:
        self.plans.pop(node, None)


class Room:
    def __init__(self, held_w: Mapping[int, float], budget_w: float,
                 domains: Sequence[tuple[float, Sequence[int]]]) -> None:
        self.held = dict(held_w)
        """Per GPU (cluster number), the most it may hold."""
        self.lines = [(budget_w, frozenset(self.held)), *((w, frozenset(gpus)) for w, gpus in domains)]
        self.sums = [sum(self.held.get(i, 0.0) for i in gpus) for _, gpus in self.lines]

    def take(self, gpu: int | None, limit_w: float) -> bool:
        """Whether a raise of `gpu` to `limit_w` keeps every line's sum within it; counted if so."""
        if gpu is None or gpu not in self.held:
            return False  # a GPU no agent has reported: nothing to count it against
        rise = limit_w - self.held[gpu]
        inside = [k for k, (_, gpus) in enumerate(self.lines) if gpu in gpus]
        if rise > 0 and any(self.sums[k] + rise > self.lines[k][0] + 1e-6 for k in inside):
            return False
        for k in inside:
            self.sums[k] += max(rise, 0.0)
        self.held[gpu] = max(self.held[gpu], limit_w)
        return True
