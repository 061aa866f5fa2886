"""What the fast loop knows of the GPUs listed so far, apart from what it decides with them.

A source's listing is taken as it is only where it is a reading: a draw that is no draw (NaN, infinite,
negative, nothing at all, or far past what the GPU can draw) is made none, so the governor counts that GPU at its
limit; and a GPU seen before and missing now (an
exporter down, a stale series) is added back at its last limit, unread, since a GPU out of sight still draws.
Each GPU that starts either is reported once as it starts and counted every tick.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace

from controller.failures import SAID_ONE_BY_ONE
from controller.own_metrics import OwnMetrics
from controller.telemetry.base import GpuSample
from controller.telemetry.plausible import MAX_GPU_LIMIT_W, envelope_ok

log = logging.getLogger("wattscale.governor")
GLITCH = 1.5
"""A reading past this many times a GPU's top limit is a glitch, no draw (an unsigned -1 mW read as 4.29 MW sent every
GPU to its floor; one 5,000-W reading a window took a draw fit's busy share from 0.39 to 0.71); a few watts over the
top, as a GPU at its cap reads, counts at the top."""

OUT_OF_SERVICE_S = 300.0
"""A GPU missing from the listing, or listed and unread, this long is out of service for planning: a lost reading, a
scrape that missed a series, a node agent's restart or rollout (well within it, as for a node's GPUs to depart:
controller/cluster/node_readings.py) move no replica, while the replicas on its GPUs may still serve."""
MAX_RETIRED = 4096
"""GPUs gone for good kept out of service, the newest (a site whose nodes are replaced daily retires hundreds a day;
those a type lists past its count make up for are kept out for nothing)."""


def is_draw(g: GpuSample) -> bool:
    """Whether a GPU's reading can be a draw: a number above 0 (a powered GPU draws tens of watts idle; a driver's 0
    is no reading) and within GLITCH of its top limit (of any GPU's, where its own is not known)."""
    p = g.power_w
    top = g.max_limit_w if envelope_ok(g.min_limit_w, g.max_limit_w) else MAX_GPU_LIMIT_W
    return p is not None and math.isfinite(p) and 0.0 < p <= GLITCH * top


class GpuListing:
    def __init__(self, metrics: OwnMetrics, on_error: Callable[[str, str], None]) -> None:
        self.metrics, self.on_error = metrics, on_error
        self.seen: dict[str, GpuSample] = {}
        """Every GPU listed so far, by UUID, as last read."""
        self.missing: set[str] = set()
        """GPUs seen before and missing from the last listing."""
        self.missing_since: dict[str, float] = {}
        """Each of them, since when (fast loop time)."""
        self.retired: dict[str, GpuSample] = {}
        """GPUs gone for good (`forget`), as last read: out of service for planning unless listed again."""
        self.no_draw: set[str] = set()
        """GPUs whose last reading was no draw."""
        self.unread: dict[str, float] = {}
        """GPUs that gave no reading at the last tick that others read at, and since when."""

    def drawing(self, samples: list[GpuSample]) -> list[GpuSample]:
        """The listing with every reading that is no draw made none, for every reader (-500 W from a DCGM exporter
        took the site to -4,000 W and ended a power emergency)."""
        bad = {g.uuid: g for g in samples if g.power_w is not None and not is_draw(g)}
        for uuid, g in bad.items():
            if uuid in self.no_draw:
                self.metrics.errors.labels("gpu_power").inc()
            else:
                self.on_error("gpu_power", f"GPU {g.index} ({uuid}) read {g.power_w} W, which is no draw: counted "
                              "at its power limit while it reads so")
        self.no_draw = set(bad)
        return [replace(g, power_w=None) if g.uuid in bad else g for g in samples] if bad else samples

    def say_unread(self, samples: list[GpuSample], unknown: frozenset[str], now: float) -> dict[str, float]:
        """Say each GPU that gave no reading while others did (one fallen off the bus) as its run starts, and count
        every tick of it: counted at its limit it holds the budget, but nothing else said the daemon was blind to it.
        Not those read as no draw (`drawing` says them), nor those of unknown limits (the limits' check does).
        Returns the GPUs that read again, each with when it stopped."""
        reading = any(g.power_w is not None for g in samples)
        unread = {g.uuid: g for g in samples if reading and g.power_w is None and not g.never_read
                  and g.uuid not in unknown and g.uuid not in self.no_draw}
        for uuid, g in unread.items():
            if uuid in self.unread:
                self.metrics.errors.labels("gpu_power").inc()
            else:
                self.on_error("gpu_power", f"GPU {g.index} ({uuid}) gave no power reading"
                              f"{f' ({g.read_error})' if g.read_error else ''}: counted at its power limit "
                              f"({g.power_limit_w:.0f} W) until it reads")
        back = {uuid: since for uuid, since in self.unread.items() if uuid not in unread}
        self.unread = {uuid: self.unread.get(uuid, now) for uuid in unread}
        return back

    def with_missing(self, samples: list[GpuSample], now: float) -> tuple[list[GpuSample], frozenset[str]]:
        """The listing with every GPU seen before and missing now added back at its last limit, unread; and which
        those are. Each is counted once as it goes, the first few said one by one (an exporter of a whole cluster
        gone: thousands of lines in a second)."""
        listed = {g.uuid for g in samples}
        missing = [replace(g, power_w=None, energy_j=None, sm_clock_mhz=None, capped_share=None)
                   for uuid, g in self.seen.items() if uuid not in listed]
        gone = [g for g in missing if g.uuid not in self.missing]
        for g in gone[:SAID_ONE_BY_ONE]:
            self.on_error("gpu_missing", f"GPU {g.uuid} ({g.index}) is missing from the listing: counted at its last "
                          f"limit, {g.power_limit_w:.0f} W")
        if len(gone) > SAID_ONE_BY_ONE:
            self.metrics.errors.labels("gpu_missing").inc(len(gone) - SAID_ONE_BY_ONE)
            log.warning("%d more GPUs missing from the listing, each at its last limit", len(gone) - SAID_ONE_BY_ONE)
        self.missing = {g.uuid for g in missing}
        self.missing_since = {uuid: self.missing_since.get(uuid, now) for uuid in self.missing}
        if self.retired and any(uuid in self.retired for uuid in listed):  # back after all (a key changed)
            self.retired = {uuid: g for uuid, g in self.retired.items() if uuid not in listed}
        self.seen.update((g.uuid, g) for g in samples)
        return samples + missing, frozenset(self.missing)

    def out_of_service(self, now: float, after_s: float = OUT_OF_SERVICE_S) -> list[GpuSample]:
        """GPUs no replica can be planned on: missing from the listing or listed and unread (one fallen off the bus
        that the driver still lists), each for `after_s` or longer (an agent's restart, a scrape that missed a series,
        a lost reading move no replica), and those gone for good. Read by the slow loop: `missing_since`, `unread`
        and `retired` are swapped whole by the fast loop, `seen` read by key."""
        retired = self.retired  # first: a GPU retired after `seen` was read is not listed twice
        since = [*self.missing_since.items(), *self.unread.items()]
        seen = self.seen
        out = [g for u, t in since if now - t >= after_s and u not in retired and (g := seen.get(u)) is not None]
        return out + list(retired.values())

    def lost_numbers(self, out: list[GpuSample]) -> frozenset[int]:
        """The numbers of GPUs out of service that no GPU listed now holds (NVML numbers by position, a cluster by
        node and local index: a GPU back under another UUID takes its number, and a placement listing it is right)."""
        missing, unread = self.missing, self.unread
        held = {g.index for g in list(self.seen.values()) if g.uuid not in missing and g.uuid not in unread}
        return frozenset(g.index for g in out) - held

    def counted_w(self, out: list[GpuSample]) -> float:
        """What the governor still counts GPUs out of service at (their last limit), but those gone for good: a plan
        that leaves them out reserves it (in the count, each had been planned at its empty draw)."""
        return sum(self.counted_by_number(out, frozenset(g.index for g in out)).values())

    def counted_by_number(self, out: list[GpuSample], numbers: frozenset[int]) -> dict[int, float]:
        """`counted_w` of those of `out` holding `numbers` (`lost_numbers`: a domain reserves them), by number."""
        retired = self.retired
        counted: dict[int, float] = {}
        for g in out:
            if g.index in numbers and g.uuid not in retired and math.isfinite(g.power_limit_w):
                counted[g.index] = counted.get(g.index, 0.0) + g.power_limit_w
        return counted

    def forget(self, uuids: frozenset[str]) -> None:
        """GPUs gone for good: no longer counted as missing, and out of service for planning (a stand-in of a GPU
        never read that departs as it reads is not: the GPU is there). All at once: a node's departure is many."""
        gone = [(u, g) for u in uuids if (g := self.seen.pop(u, None)) is not None and not g.never_read]
        if gone:
            self.retired = dict(list({**self.retired, **dict(gone)}.items())[-MAX_RETIRED:])
        self.missing = self.missing - uuids
        self.missing_since = {u: t for u, t in self.missing_since.items() if u not in uuids}
