"""What the two loops hand each other: the slow loop's plan one way, the fast loop's draw readings the other.

Each side owns its own state; they meet only here. A plan is immutable and published by swapping one
reference, so the fast loop reads a whole plan or the one before it, never a half-written one, and never
waits for the slow loop's network I/O. Readings are appended under a lock held for an append or a swap.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple


@dataclass(frozen=True)
class Plan:
    """What the governor steers to: each service's per-GPU cap and priority."""

    version: int
    caps_w: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    priorities: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @staticmethod
    def of(version: int, caps_w: dict[str, float], priorities: dict[str, int]) -> Plan:
        return Plan(version, MappingProxyType(dict(caps_w)), MappingProxyType(dict(priorities)))


class DrawReading(NamedTuple):
    """A service's GPUs at one fast tick: mean draw, mean limit in force, and whether the governor held a cut
    on any of them."""

    draw_w: float
    limit_w: float
    cut: bool


class DrawLedger:
    """Per service, its readings since the slow loop last took them: the window's draw the tuner fits the draw
    curve to (one tick is a 1-s reading of a load that swings), and the limits it ran under."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readings: dict[str, list[DrawReading]] = {}

    def add(self, service: str, reading: DrawReading) -> None:
        with self._lock:
            self._readings.setdefault(service, []).append(reading)

    def take(self, service: str) -> list[DrawReading]:
        with self._lock:
            return self._readings.pop(service, [])
