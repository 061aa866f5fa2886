"""GPU source `nvml`: every GPU NVML sees, as `GpuSample`s for the governor and metrics."""

from __future__ import annotations

import logging

from actuators import ActuatorError
from actuators.nvml import EnergyCadence, GpuReading, NvmlDevices
from controller.telemetry.base import GpuSample, TelemetryError

log = logging.getLogger(__name__)


class NvmlGpuSource:
    """Reads all GPUs each fast tick; `owners` maps a GPU index to the service and variant whose replica runs
    there.

    A GPU whose read fails is reported with `power_w=None` at its last known limits (the governor then
    counts it at its cap); one never read is left out, logged once (its limits are unknown: a lost GPU at start
    failed every sample, and the governor set no limit on the others); only a failure to enumerate the GPUs
    fails the whole sample. The energy counter is read on an `EnergyCadence` of the sample's time, `energy_j` None
    between."""

    def __init__(self, devices: NvmlDevices, owners: dict[int, tuple[str, str]]) -> None:
        self.devices = devices
        self.owners = owners
        self._last: dict[int, GpuReading] = {}
        self._unread: set[int] = set()
        self._energy = EnergyCadence()

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
        samples = []
        for index, r in enumerate(self.readings(self._energy.due(now))):
            if isinstance(r, GpuReading):
                self._last[index] = r
                samples.append(GpuSample(r.index, r.uuid, r.name, r.power_w, r.energy_j, r.power_limit_w,
                                         r.min_limit_w, r.max_limit_w, r.sm_clock_mhz, *self._owner(index)))
                continue
            last = self._last.get(index)
            if last is None:
                if index not in self._unread:
                    log.warning("%s; never read, so left out of the governor's sample until it reads", r)
                self._unread.add(index)
                continue
            samples.append(GpuSample(index, last.uuid, last.name, None, None, last.power_limit_w, last.min_limit_w,
                                     last.max_limit_w, None, *self._owner(index)))
        return samples

    def _owner(self, index: int) -> tuple[str | None, str | None]:
        return self.owners.get(index, (None, None))
