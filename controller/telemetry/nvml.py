"""GPU source `nvml`: every GPU NVML sees, as `GpuSample`s for the governor and metrics."""

from __future__ import annotations

import logging
import math

from actuators import ActuatorError
from actuators.nvml import EnergyCadence, GpuReading, NvmlDevices
from controller.telemetry.base import GpuSample, TelemetryError
from controller.telemetry.capped import CappedShares

log = logging.getLogger(__name__)


class NvmlGpuSource:
    """Reads all GPUs each fast tick; `owners` maps a GPU index to the service and variant whose replica runs
    there.

    A GPU whose read fails is reported with `power_w=None` at its last known limits (the governor then
    counts it at its cap). One never read stands in the listing as `unread-<index>`, of unknown limits (NaN): the
    fast loop counts it at the most it may draw and never sets it, nor steers its clock (telemetry/plausible.py);
    logged once. Left out, it had counted for nothing: two 550-W GPUs read as 550 W under a 1,000-W budget. Once it
    reads, its stand-in is reported departed (`departed`). A failure to enumerate the GPUs, or a listing none of
    whose GPUs has ever been read, fails the whole sample (a lost sample: the governor cuts blind, then sets safe
    caps). The energy counter is read on an `EnergyCadence` of the sample's time, `energy_j` None between.
    A GPU out of the listing is counted at its last limit by the fast loop while it may still draw (fallen off the
    bus, the count one short); once NVML counts as many GPUs as it ever did, each of them known and none of them that
    one, it has departed (a GPU back under another UUID, a MIG layout made again): counted on, it had held every GPU
    at its floor for good. A count that changed forgets the last readings by index (the indices moved with it)."""

    def __init__(self, devices: NvmlDevices, owners: dict[int, tuple[str, str]]) -> None:
        self.devices = devices
        self.owners = owners
        self._last: dict[int, GpuReading] = {}
        self._unread: set[int] = set()
        """GPUs never read, by index: each stands in the listing as `unread-<index>` until it reads."""
        self._departed: set[str] = set()
        self._most = 0
        """The most GPUs NVML has counted at once."""
        self._count = 0
        """The GPUs NVML counted at the last sample."""
        self._listed: set[str] = set()
        """The UUIDs listed at the last sample that counted that many."""
        self._energy = EnergyCadence()
        self._capped = CappedShares()

    def readings(self, energy: bool = True) -> list[GpuReading | ActuatorError]:
        try:
            n = self.devices.count()
        except ActuatorError as exc:
            raise TelemetryError(str(exc)) from exc
        out: list[GpuReading | ActuatorError] = []
        for index in range(n):
            try:
                out.append(self.devices.read(index, energy))
            except ActuatorError as exc:
                out.append(exc)
        return out

    def sample(self, now: float) -> list[GpuSample]:
        samples, unread = [], []
        readings = self.readings(self._energy.due(now))
        if len(readings) != self._count:  # the indices moved: one GPU's last reading is not another's at its index
            self._last, self._count = {}, len(readings)
        for index, r in enumerate(readings):
            if isinstance(r, GpuReading):
                self._last[index] = r
                if index in self._unread:
                    self._unread.discard(index)
                    self._departed.add(f"unread-{index}")
                samples.append(GpuSample(r.index, r.uuid, r.name, r.power_w, r.energy_j, r.power_limit_w,
                                         r.min_limit_w, r.max_limit_w, r.sm_clock_mhz, *self._owner(index),
                                         capped_share=self._capped.share(r.uuid, r.capped_at_s, r.capped_s)))
                continue
            last = self._last.get(index)
            if last is None:
                unread.append((index, r))
                continue
            samples.append(GpuSample(index, last.uuid, last.name, None, None, last.power_limit_w, last.min_limit_w,
                                     last.max_limit_w, None, *self._owner(index), read_error=str(r)))
        if unread and not self._last:
            raise TelemetryError(f"none of the {len(readings)} GPUs has been read: {unread[0][1]}")
        # every GPU the host has known by its UUID (one whose read failed by its index's last, the count unmoved):
        # one seen before and not now is gone
        if len(readings) >= self._most and not unread:
            listed = {g.uuid for g in samples}
            self._departed |= self._listed - listed
            self._most, self._listed = len(readings), listed
        for index, error in unread:
            if index not in self._unread:
                log.warning("%s; never read, so counted as a GPU of unknown limits until it reads", error)
            self._unread.add(index)
            samples.append(GpuSample(index, f"unread-{index}", "", None, None, math.nan, math.nan, math.nan, None,
                                     *self._owner(index), never_read=True))
        return samples

    def departed(self) -> frozenset[str]:
        """The stand-ins of GPUs that have read since the last call, and the GPUs no longer on the host."""
        out, self._departed = frozenset(self._departed), set()
        return out

    def _owner(self, index: int) -> tuple[str | None, str | None]:
        return self.owners.get(index, (None, None))
