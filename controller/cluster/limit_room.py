"""Room for raises under caps: what the node plans' limits may sum to whichever agent applies its plan first.

Under `power.mode = "caps"` the limits in force sum under the budget (less headroom) and each domain's line. A host
sets a cut before the raise fitted on it and reads both back; node plans are applied by each node's agent as it
fetches its own, so a raise written beside a cut may land first. A GPU counts here at the most it may hold: its limit
in force, or a limit written and not yet applied (`NodeReadings` reads a GPU at a raise written for it), whichever
is higher; a cut lowers none of that until its agent reports it. A raise is written only while the sums of those,
with it, fit every line; else it waits, queued, for the cuts to be reported in force.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from controller.telemetry.base import GpuSample


class Room:
    def __init__(self, samples: Mapping[int, GpuSample], budget_w: float,
                 domains: Sequence[tuple[float, Sequence[int]]]) -> None:
        self.held = {i: g.power_limit_w for i, g in samples.items()}
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
