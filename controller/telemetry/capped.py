"""How much of a tick each GPU's power limit held its clock down, read off a cumulative counter (NVML's power
violation time; the simulator keeps the same). A GPU whose one-second mean draw sits under its limit may still
hit it on every compute-bound step (a prompt's prefill): the mean alone reads that limit as room to spare."""

from __future__ import annotations

import math


class CappedShares:
    """Per GPU UUID, the share of the time between two reads of its counter that the limit held the clock."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}
        """UUID -> (the counter's time stamp, its seconds held) at the last read."""

    def share(self, uuid: str, at_s: float | None, capped_s: float | None) -> float | None:
        """The share since the last read, within [0, 1]; None on a first read, a missing or non-finite value,
        a time stamp that did not advance, or a counter that fell (a driver reload starts it again)."""
        if at_s is None or capped_s is None or not (math.isfinite(at_s) and math.isfinite(capped_s)):
            self._last.pop(uuid, None)
            return None
        last, self._last[uuid] = self._last.get(uuid), (at_s, capped_s)
        if last is None or at_s <= last[0] or capped_s < last[1]:
            return None
        return min(1.0, (capped_s - last[1]) / (at_s - last[0]))
