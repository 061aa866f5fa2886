"""What a GPU with no process on it draws, read off the GPUs no replica holds.

A loaded model's CUDA context keeps its GPU out of the deepest idle state: one H200 drew 122-128 W idle with a
context held and 80 W with no process (docs/gpus.md). The catalogue's idle power is the first, the floor of a
replica's draw curve; the second is what a plan pays for a GPU it leaves free, so what a replica's context costs
and what freeing a GPU saves. The catalogue holds it for few types, so the controller reads it where replicas
come and go (a cluster, the simulated host): every fast tick's draw of each GPU no service holds, by accelerator
type, the median of the recent ones. A reading above the type's idle power is not an empty GPU (a process the
daemon does not know of, a replica just stopped) and is left out; an idle context of another tenant is not told
apart, and errs high, the safe side. The figure the plan uses moves only by more than `STEP_W`, so a median that
wanders by a watt does not make every cycle's sizing a new one (the profile is in its cache keys).
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
from prometheus_client import Gauge

from controller.gpu_listing import OUT_OF_SERVICE_S
from controller.optimizer import AcceleratorType
from controller.settings import AcceleratorSettings
from controller.telemetry.base import GpuSample
from queuemodels.accelerators import CATALOG

KEEP = 600
"""Readings kept per type, the newest: ten minutes of one free GPU read each second."""
MIN_READINGS = 30
"""Readings of a type before its median replaces the catalogue's figure."""
STEP_W = 2.0
"""Least move of the median (W) that changes the figure the plan uses."""

log = logging.getLogger("wattscale.controller")


class EmptyDraw:
    def __init__(self, gauge: Gauge | None = None) -> None:
        self.gauge = gauge
        """`wattscale_gpu_empty_power_watts`, by accelerator: set for each type read."""
        self._readings: dict[str, deque[float]] = {}
        self._types: dict[str, str] = {}
        """GPU name (NVML's, "NVIDIA H100 80GB HBM3") -> accelerator type, as the GPUs services hold are labelled."""
        self._used: dict[str, float] = {}
        """Per type, the figure the plan uses (whole watts)."""
        self.short: dict[str, tuple[int, int]] = {}
        """Per type, the GPUs out of service the last plan left out, and the type's count."""

    def observe(self, free: Iterable[tuple[str, float]], listing: Iterable[GpuSample],
                accelerators: Sequence[str]) -> None:
        """Take the free GPUs' readings (GPU name, draw) since the last call; `listing`, the GPUs as last read,
        tells which type a name is: a type's own name, or one a service's GPU of that type carries. With one type
        configured, a name is taken as it only while no name of it is known, and never another type's own name."""
        for g in listing:
            if g.variant is not None and g.variant in accelerators:
                self._types[g.name] = g.variant
        fresh = set()
        for name, watts in free:
            kind = self._kind(name, accelerators)
            if kind is not None and 0.0 < watts <= CATALOG[kind].idle_power_w:
                self._readings.setdefault(kind, deque(maxlen=KEEP)).append(watts)
                fresh.add(kind)
        for kind in sorted(fresh):  # a type no free GPU was read of since keeps its figure
            got = self._readings[kind]
            median = float(np.median(got))
            if len(got) >= MIN_READINGS and abs(median - self._used.get(kind, -np.inf)) > STEP_W:
                if kind not in self._used:
                    log.info("%s GPUs draw %.0f W with no process (read off the free ones; a replica's idle: %.0f W)",
                             kind, median, CATALOG[kind].idle_power_w)
                self._used[kind] = round(median)
                if self.gauge is not None:
                    self.gauge.labels(kind).set(self._used[kind])

    def _kind(self, name: str, accelerators: Sequence[str]) -> str | None:
        """The accelerator type a GPU name is, where known (`observe`)."""
        if name in accelerators:
            return name
        only = accelerators[0] if len(accelerators) == 1 and accelerators[0] not in self._types.values() else None
        return self._types.get(name, None if name in CATALOG else only)

    def learnt_w(self) -> dict[str, float]:
        """Per type read often enough, what its GPUs draw with no process, as the plan uses it."""
        return dict(self._used)

    def offers(self, accelerators: Sequence[AcceleratorSettings], listing: Iterable[GpuSample] = (),
               out_of_service: Iterable[GpuSample] = ()) -> tuple[AcceleratorType, ...]:
        """The inventory as the optimizer sees it, each type's empty draw as read where it was, and its count short
        of the GPUs out of service (`GpuListing.out_of_service`) that the type's other listed GPUs do not make up
        for: a plan for two GPUs of a type of which one is left was held at the gate cycle after cycle, its service
        on one replica. A GPU whose type is not known is not counted against any."""
        names = [a.name for a in accelerators]
        out_uuids = {g.uuid for g in out_of_service}
        lost = Counter(self._of(g, names) for g in out_of_service)
        present = Counter(self._of(g, names) for g in listing if g.uuid not in out_uuids)
        out, short = [], {}
        for acc in accelerators:
            offer = acc.offer()
            if (read := self._used.get(acc.name)) is not None:
                offer = replace(offer, profile=replace(offer.profile, empty_power_w=read))
            count = min(acc.count, max(acc.count - lost[acc.name], present[acc.name]))
            if count < acc.count:
                offer, short[acc.name] = replace(offer, count=count), (acc.count - count, acc.count)
            out.append(offer)
        if short != self.short:
            log.warning("GPUs out of service (missing from the listing, or listed and unread for %.0f s): %s",
                        OUT_OF_SERVICE_S, ", ".join(f"{k} {n} of {of}, planned on the rest" for k, (n, of)
                                                    in sorted(short.items())) or "none now")
            self.short = short
        return tuple(out)

    def _of(self, g: GpuSample, accelerators: Sequence[str]) -> str | None:
        """A listed GPU's type; none for a stand-in of a GPU never read (no name: one type's only GPU it is not)."""
        if g.variant in accelerators:
            return g.variant
        return None if g.never_read or not g.name else self._kind(g.name, accelerators)
