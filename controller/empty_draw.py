"""What a GPU with no process on it draws, read off the GPUs no replica holds.

A loaded model's CUDA context keeps its GPU out of the deepest idle state: one H200 drew 124-128 W idle with a
context held and 80 W with no process (docs/gpus.md). The catalogue's idle power is the first, the floor of a
replica's draw curve; the second is what a plan pays for a GPU it leaves free, so what a replica's context costs
and what freeing a GPU saves. The catalogue holds it for few types, so the daemon reads it: every fast tick's
draw of each GPU no service holds, by accelerator type, the median of the recent ones. A reading above the type's
idle power is not an empty GPU (a process the daemon does not know of, a replica just stopped) and is left out.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
from prometheus_client import Gauge

from controller.optimizer import AcceleratorType
from controller.settings import AcceleratorSettings
from controller.telemetry.base import GpuSample
from queuemodels.accelerators import CATALOG

KEEP = 600
"""Readings kept per type, the newest: ten minutes of one free GPU read each second."""
MIN_READINGS = 30
"""Readings of a type before its median replaces the catalogue's figure."""

log = logging.getLogger("wattscale.controller")


class EmptyDraw:
    def __init__(self, gauge: Gauge | None = None) -> None:
        self.gauge = gauge
        """`wattscale_gpu_empty_power_watts`, by accelerator: set for each type read."""
        self._readings: dict[str, deque[float]] = {}
        self._types: dict[str, str] = {}
        """GPU name (NVML's, "NVIDIA H100 80GB HBM3") -> accelerator type, as the GPUs services hold are labelled."""
        self._said: set[str] = set()

    def observe(self, free: Iterable[tuple[str, float]], listing: Iterable[GpuSample],
                accelerators: Sequence[str]) -> None:
        """Take the free GPUs' readings (GPU name, draw) since the last call; `listing`, the GPUs as last read,
        tells which type a name is (a type's own name, or one a service's GPU of that type carries)."""
        for g in listing:
            if g.variant is not None and g.variant in accelerators:
                self._types[g.name] = g.variant
        only = accelerators[0] if len(accelerators) == 1 else None
        for name, watts in free:
            kind = name if name in accelerators else self._types.get(name, only)
            if kind is not None and kind in CATALOG and 0.0 < watts <= CATALOG[kind].idle_power_w:
                self._readings.setdefault(kind, deque(maxlen=KEEP)).append(watts)

    def learnt_w(self) -> dict[str, float]:
        """Per type read often enough, what its GPUs draw with no process."""
        return {kind: float(np.median(got)) for kind, got in self._readings.items() if len(got) >= MIN_READINGS}

    def offers(self, accelerators: Iterable[AcceleratorSettings]) -> tuple[AcceleratorType, ...]:
        """The inventory as the optimizer sees it, each type's empty draw as read where it was."""
        learnt = self.learnt_w()
        for kind in sorted(learnt.keys() - self._said):
            log.info("%s GPUs draw %.0f W with no process (read off the free ones; a replica's idle: %.0f W)", kind,
                     learnt[kind], CATALOG[kind].idle_power_w)
            self._said.add(kind)
        if self.gauge is not None:
            for kind, watts in learnt.items():
                self.gauge.labels(kind).set(watts)
        out = []
        for acc in accelerators:
            offer = acc.offer()
            if (read := learnt.get(acc.name)) is not None:
                offer = replace(offer, profile=replace(offer.profile, empty_power_w=read))
            out.append(offer)
        return tuple(out)
