"""Limits a source reports, checked before the governor counts them.

A GPU's limits come from NVML or, in a cluster, from an exporter's series and the catalogue. The governor
counts a GPU without a reading at its limit in force and holds it within [min, max]; it caps a reading at the
maximum. A NaN limit made the site's sum NaN, which passes every comparison (the governor read the site as under
budget); a 0-0 pair counted a GPU drawing 650 W as 0 W; a negative or reversed pair set limits no GPU takes.
Here a GPU whose own pair is implausible keeps the last plausible pair seen for it; one never seen with one is
counted at the most it may draw (the largest of the others' maxima, its own reading and its limit in force) and
not set. A limit in force outside its pair, or not a number, counts at the maximum. Each is reported once a run
of it, per GPU, and counted every tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from controller.telemetry.base import GpuSample

MAX_GPU_LIMIT_W = 10_000.0
"""No GPU's power limit reaches this (a GB200 superchip's is some 2,700 W): past it a figure is not a limit."""
MIN_GPU_MAX_W = 25.0
"""No data-centre GPU's maximum limit is below this (a T4's is 70 W): under it a figure is not a limit."""


def envelope_ok(min_w: float, max_w: float) -> bool:
    """Whether (min, max) can be a GPU's limits: finite, 0 <= min <= max, MIN_GPU_MAX_W <= max <= MAX_GPU_LIMIT_W."""
    return (math.isfinite(min_w) and math.isfinite(max_w) and 0.0 <= min_w <= max_w
            and MIN_GPU_MAX_W <= max_w <= MAX_GPU_LIMIT_W)


def _watts(value: float | None) -> float:
    """A figure as a draw it may stand for: 0 where it is none, not a number or past any GPU's."""
    return value if value is not None and 0.0 <= value <= MAX_GPU_LIMIT_W else 0.0


@dataclass
class LimitCheck:
    """Each GPU's last plausible limits, by UUID, and which GPUs' problems have been reported."""

    known: dict[str, tuple[float, float]] = field(default_factory=dict)
    """GPU UUID -> its last plausible (min, max)."""
    reported: set[tuple[str, str]] = field(default_factory=set)
    """(GPU UUID, "pair" or "in force"): problems reported in their current run."""
    implausible: int = 0
    """Problems at the last check (counted every tick, reported once a run)."""

    def forget(self, uuids: frozenset[str]) -> None:
        """GPUs gone for good: their limits and reports dropped."""
        for uuid in uuids:
            self.known.pop(uuid, None)
        self.reported = {r for r in self.reported if r[0] not in uuids}

    def check(self, samples: list[GpuSample]) -> tuple[list[GpuSample], frozenset[str], list[str]]:
        """The listing with every limit plausible, the GPUs that must not be set (their limits unknown), and what
        is newly wrong (one line a problem). Raises ValueError, naming them, where a GPU of unknown limits has
        nothing to be counted at (no other GPU's maximum, no reading, no limit in force)."""
        out: list[GpuSample] = []
        unknown: set[str] = set()
        problems: list[str] = []
        self.implausible = 0
        for g in samples:
            if envelope_ok(g.min_limit_w, g.max_limit_w):
                self.known[g.uuid] = (g.min_limit_w, g.max_limit_w)
                self.reported.discard((g.uuid, "pair"))
            else:
                if not g.never_read:  # its source said why, once: nothing here is a bad reading
                    self._report(problems, g.uuid, "pair", f"GPU {g.uuid} ({g.index}) reports limits "
                                 f"{g.min_limit_w:g}-{g.max_limit_w:g} W, which no GPU has: {self._instead(g.uuid)}")
                if g.uuid not in self.known:
                    unknown.add(g.uuid)
                    out.append(g)
                    continue
                low, high = self.known[g.uuid]
                g = replace(g, min_limit_w=low, max_limit_w=high)
            if g.min_limit_w - 1.0 <= g.power_limit_w <= g.max_limit_w + 1.0:  # False for NaN too
                self.reported.discard((g.uuid, "in force"))
            else:
                self._report(problems, g.uuid, "in force", f"GPU {g.uuid} ({g.index}) reports a limit in force of "
                             f"{g.power_limit_w:g} W, outside its {g.min_limit_w:g}-{g.max_limit_w:g} W: counted at "
                             f"{g.max_limit_w:g} W until it reads within them")
                g = replace(g, power_limit_w=g.max_limit_w)
            out.append(g)
        if unknown:
            out = self._counted_at_most(out, unknown, problems)
        return out, frozenset(unknown), problems

    def _report(self, problems: list[str], uuid: str, kind: str, message: str) -> None:
        self.implausible += 1
        if (uuid, kind) not in self.reported:
            self.reported.add((uuid, kind))
            problems.append(message)

    def _instead(self, uuid: str) -> str:
        if uuid in self.known:
            return "its last limits, {:g}-{:g} W, are kept".format(*self.known[uuid])
        return "counted at the most it may draw (the others' largest maximum, its reading, its limit) and not set"

    @staticmethod
    def _counted_at_most(samples: list[GpuSample], unknown: set[str], problems: list[str]) -> list[GpuSample]:
        """GPUs of unknown limits, each counted at the largest of the others' maxima, its reading and its limit in
        force: the most it may draw that anything here says (a mixed host's small GPUs do not bound a large one)."""
        peers = max((g.max_limit_w for g in samples if g.uuid not in unknown), default=0.0)
        out = []
        for g in samples:
            if g.uuid in unknown:
                most = max(peers, _watts(g.power_w), _watts(g.power_limit_w))
                if most <= 0.0:
                    raise ValueError(f"GPU {g.uuid} ({g.index}) has no plausible power limits and nothing to count "
                                     f"it at: {'; '.join(problems)}")
                g = replace(g, min_limit_w=most, max_limit_w=most, power_limit_w=most)
            out.append(g)
        return out
