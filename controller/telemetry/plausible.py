"""Limits a source reports, checked before the governor counts them.

A GPU's limits come from NVML or, in a cluster, from an exporter's series and the catalogue. The governor
counts a GPU without a reading at its limit in force and holds it within [min, max]: a NaN limit made the site's
sum NaN, which passes every comparison (the governor read the site as under budget), and a negative or
reversed pair set limits no GPU takes. A GPU whose own pair is implausible keeps the last plausible pair seen
for it; one never seen with one is counted at the largest maximum of the others and not set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from controller.telemetry.base import GpuSample

MAX_GPU_LIMIT_W = 10_000.0
"""No GPU's power limit reaches this (a GB200 superchip's is some 2,700 W): past it a figure is not a limit."""


def envelope_ok(min_w: float, max_w: float) -> bool:
    """Whether (min, max) can be a GPU's limits: finite, 0 <= min <= max <= MAX_GPU_LIMIT_W."""
    return math.isfinite(min_w) and math.isfinite(max_w) and 0.0 <= min_w <= max_w <= MAX_GPU_LIMIT_W


@dataclass
class LimitCheck:
    """Each GPU's last plausible limits, by UUID, and what was said about the others."""

    known: dict[str, tuple[float, float]] = field(default_factory=dict)
    """GPU UUID -> its last plausible (min, max)."""
    reported: set[str] = field(default_factory=set)
    """GPUs whose implausible limits were reported (once each)."""
    implausible: int = 0
    """GPUs whose pair was implausible at the last check (counted every tick, reported once)."""

    def check(self, samples: list[GpuSample]) -> tuple[list[GpuSample], frozenset[str], list[str]]:
        """The listing with every limit plausible, the GPUs that must not be set (their limits unknown), and
        what is newly wrong (one line a GPU). A limit in force outside its pair, or not a number, counts at the
        maximum: the GPU may draw that much. Raises ValueError where no GPU reports a plausible pair."""
        out: list[GpuSample] = []
        unknown: set[str] = set()
        problems: list[str] = []
        self.implausible = 0
        for g in samples:
            if envelope_ok(g.min_limit_w, g.max_limit_w):
                self.known[g.uuid] = (g.min_limit_w, g.max_limit_w)
            else:
                self.implausible += 1
                if g.uuid not in self.reported:
                    self.reported.add(g.uuid)
                    problems.append(f"GPU {g.uuid} ({g.index}) reports limits {g.min_limit_w:g}-{g.max_limit_w:g} W, "
                                    f"which no GPU has: {self._instead(g.uuid)}")
                if g.uuid not in self.known:
                    unknown.add(g.uuid)
                    out.append(g)
                    continue
                low, high = self.known[g.uuid]
                g = replace(g, min_limit_w=low, max_limit_w=high)
            if not g.min_limit_w - 1.0 <= g.power_limit_w <= g.max_limit_w + 1.0:  # NaN too
                g = replace(g, power_limit_w=g.max_limit_w)
            out.append(g)
        if unknown:
            out = self._counted_at_most(out, unknown)
        return out, frozenset(unknown), problems

    def _instead(self, uuid: str) -> str:
        if uuid in self.known:
            return "its last limits, {:g}-{:g} W, are kept".format(*self.known[uuid])
        return "counted at the largest maximum of the others and not set"

    @staticmethod
    def _counted_at_most(samples: list[GpuSample], unknown: set[str]) -> list[GpuSample]:
        """GPUs of unknown limits counted at the largest maximum of the rest: the most a GPU here may draw."""
        peers = [g.max_limit_w for g in samples if g.uuid not in unknown]
        if not peers:
            raise ValueError("no GPU reports plausible power limits")
        most = max(peers)
        return [replace(g, min_limit_w=most, max_limit_w=most, power_limit_w=most) if g.uuid in unknown else g
                for g in samples]
