"""What the two loops hand each other: the slow loop's plan one way, the fast loop's draw readings (and its call
to plan now, `FloorAlarm`) the other.

Each side owns its own state; they meet only here. A plan is immutable and published by swapping one
reference, so the fast loop reads a whole plan or the one before it, never a half-written one, and never
waits for the slow loop's network I/O. Readings are appended under a lock held for an append or a swap.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple


@dataclass(frozen=True)
class Plan:
    """What the governor steers to: per service, the per-GPU cap of each variant that runs (a service moving
    between accelerator types runs on two; a cap belongs to its type), and the service's priority."""

    version: int
    caps_w: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: MappingProxyType({}))
    """Service -> variant (accelerator type) -> cap; the first variant listed is the one planned."""
    priorities: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    clocks: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: MappingProxyType({}))
    """Service -> variant -> locked SM clock share; a variant absent runs unlocked."""
    ceilings_w: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: MappingProxyType({}))
    """Service -> variant -> how far a GPU its cap holds down may grow past it (the cap chosen before the caps
    were fitted within the limits' sum); absent: the cap."""

    @staticmethod
    def of(version: int, caps_w: dict[str, dict[str, float]], priorities: dict[str, int],
           clocks: dict[str, dict[str, float]] | None = None,
           ceilings_w: dict[str, dict[str, float]] | None = None) -> Plan:
        caps = {s: MappingProxyType(dict(v)) for s, v in caps_w.items()}
        locks = {s: MappingProxyType(dict(v)) for s, v in (clocks or {}).items()}
        tops = {s: MappingProxyType(dict(v)) for s, v in (ceilings_w or {}).items()}
        return Plan(version, MappingProxyType(caps), MappingProxyType(dict(priorities)), MappingProxyType(locks),
                    MappingProxyType(tops))

    def _variant(self, service: str, variant: str | None) -> str | None:
        """The variant a GPU of `service` is planned on: its own, the planned one (the first with a cap) where its
        own is not known; None where the plan has no cap for the service."""
        caps = self.caps_w.get(service)
        if not caps:
            return None
        return next(iter(caps)) if variant is None else variant

    def ceiling_w(self, service: str, variant: str | None) -> float | None:
        """How far a GPU of `service` on `variant` that its cap holds down may grow: its ceiling, else its cap."""
        v = self._variant(service, variant)
        cap = None if v is None else self.caps_w[service].get(v)
        if v is None or cap is None:
            return None
        top = self.ceilings_w.get(service, {}).get(v)
        return cap if top is None else max(cap, top)

    def clock_fraction(self, service: str, variant: str | None) -> float | None:
        """The locked clock share for a GPU of `service` on `variant` (the planned variant's where the GPU's is
        not known); None: unlocked."""
        v = self._variant(service, variant)
        return None if v is None else self.clocks.get(service, {}).get(v)

    def cap_w(self, service: str, variant: str | None) -> float | None:
        """The cap for a GPU of `service` on `variant` (the planned variant's where the GPU's is not known);
        None where the plan has none."""
        v = self._variant(service, variant)
        return None if v is None else self.caps_w[service].get(v)


def ceiling_of(applied: tuple[str, float], planned: tuple[str, float], chosen_w: float | None) -> float | None:
    """How far the governor may grow a GPU that the cap in force (`applied`: accelerator, cap) holds down, where above
    that cap: the cap chosen before the plan's caps were fitted within the limits' sum (`chosen_w`; None: none was,
    or the plan is not the one that runs), or the plan's own (`planned`) where the gate holds a lower one in force.
    None on another accelerator than the plan's (a cap of one type says nothing of another's)."""
    top = max(chosen_w or 0.0, planned[1])
    return top if applied[0] == planned[0] and top > applied[1] else None


class DrawReading(NamedTuple):
    """A service's GPUs at one fast tick: mean draw, mean limit in force, whether the governor held a cut
    on any of them, their mean locked clock share (None: none locked), and the mean share of the tick their
    limits held their clocks down (None: no GPU's source reads it)."""

    draw_w: float
    limit_w: float
    cut: bool
    clock_share: float | None = None
    capped_share: float | None = None


LEDGER_KEEP = 4096
"""Readings kept per service (and of the free GPUs), the newest: slow ticks that keep failing before they take
them (or a service the operator no longer plans) would otherwise grow the ledger a reading a fast tick for ever."""


class DrawLedger:
    """Per service, its readings since the slow loop last took them: the window's draw the tuner fits the draw
    curve to (one tick is a 1-s reading of a load that swings), and the limits it ran under."""

    def __init__(self, keep: int = LEDGER_KEEP) -> None:
        self._lock = threading.Lock()
        self._keep = keep
        self._readings: dict[str, deque[DrawReading]] = {}
        self._free: deque[tuple[str, float]] = deque(maxlen=keep)

    def add(self, service: str, reading: DrawReading) -> None:
        """One fast tick's reading of a service's GPUs (the fast loop's thread)."""
        with self._lock:
            got = self._readings.get(service)
            if got is None:
                got = self._readings[service] = deque(maxlen=self._keep)
            got.append(reading)

    def take(self, service: str) -> list[DrawReading]:
        """The service's readings since the last take, oldest first (the slow loop's thread)."""
        with self._lock:
            return list(self._readings.pop(service, ()))

    def add_free(self, readings: list[tuple[str, float]]) -> None:
        """One fast tick's readings of the GPUs no service holds: (GPU name, draw)."""
        with self._lock:
            self._free.extend(readings)

    def take_free(self) -> list[tuple[str, float]]:
        """The free GPUs' readings since the last take (controller/empty_draw.py)."""
        with self._lock:
            out = list(self._free)
            self._free.clear()
            return out


@dataclass
class FloorAlarm:
    """When the fast loop asks the slow loop to plan now rather than at its period: the governor has cut every
    limit to its floor and the site is still over its budget, so only fewer replicas can bring the draw down.
    Once an episode, and at most once a slow period, so a budget no plan can meet, or a draw that dips under
    the threshold and back, does not plan every tick."""

    at_floor: bool = False
    """Whether the limits were all at their floors over budget at the last tick."""
    last_s: float = -math.inf
    """When it last asked."""

    def ring(self, now: float, exhausted: bool, period_s: float) -> bool:
        """Whether to ask now, given whether the governor is exhausted at this tick."""
        due = exhausted and not self.at_floor and now - self.last_s >= period_s
        self.at_floor = exhausted
        if due:
            self.last_s = now
        return due
