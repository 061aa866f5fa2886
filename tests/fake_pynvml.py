"""A fake `pynvml` module for tests: GPUs with state, the real error classes, constants and structs.

Behaves as NVML does where the code under test depends on it: limits in mW within constraints (else
InvalidArgument), setting needs privilege (else NoPermission), draw never above the limit, the SW power
cap clock-event reason while the limit bites and its violation time (a second's bursts over the limit counted
though its mean draw is under it), unsupported fields, and errors injected per call and GPU.
Locked clocks as on Volta and later: a lock within the supported table (else InvalidArgument), needing
privilege, holding the SM clock at or below it, with the applications-clocks event reason set; a GPU
without them (`unsupported` holds "lock") raises NotSupported. A lock lowers the draw where a GPU's demand has a
part that follows the clock (`clock_mw`), at once, as a lock does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pynvml

NVMLError = pynvml.NVMLError
NVMLError_NotSupported = pynvml.NVMLError_NotSupported
NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM
NVML_CLOCK_MEM = pynvml.NVML_CLOCK_MEM
NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
NVML_FI_DEV_POWER_INSTANT = pynvml.NVML_FI_DEV_POWER_INSTANT


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    limit_mw: int = 700_000
    min_mw: int = 200_000
    max_mw: int = 700_000
    default_mw: int = 700_000
    demand_mw: int = 450_000
    energy_mj: int = 0
    unsupported: set[str] = field(default_factory=set)
    graphics_clocks: list[int] = field(default_factory=lambda: list(range(345, 1981, 15)))
    locked_mhz: tuple[int, int] | None = None
    lock_ignored: bool = False
    """The driver answers success but leaves the clock unlocked (what the read-back must catch)."""
    clock_mw: int = 0
    """The part of `demand_mw` that falls with a locked clock, as its share squared (compute: the rest, memory and
    idle, does not); 0: a lock leaves the draw as it is."""
    memory_used_b: int = 70 * 2**30
    """Memory in use (of 80 GiB): a vLLM engine's, by default; an idle GPU holds its driver's few MiB."""
    burst_mw: int = 0
    burst_share: float = 0.0
    """For this share of each second the GPU wants `burst_mw` (a prompt's compute-bound steps), the rest
    `demand_mw`: the second's mean draw may sit under a limit its bursts hit."""
    uuid: str | None = None
    """The UUID the driver gives (None: one made from the GPU's index)."""
    reads_mw: int | None = None
    """What the power reading says whatever the GPU draws (a driver's garbage: 0, an unsigned -1); None: its draw."""
    clock_us: int = 0
    capped_ns: int = 0
    """The driver's time stamp and power violation time, advanced a second each power read (as the energy is)."""

    def want_mw(self) -> int:
        """What the GPU would draw without its limit: its demand at the clock it is locked at."""
        if self.locked_mhz is None:
            return self.demand_mw
        return self.demand_mw - self.clock_mw + int(self.clock_mw * (self.locked_mhz[1] / 1980) ** 2)

    def phases(self) -> list[tuple[float, int]]:
        """(share of a second, what the GPU wants then): the rest of the second, and its bursts (a lock lowers
        both alike)."""
        return [(1 - self.burst_share, self.want_mw()), (self.burst_share, self.want_mw() - self.demand_mw +
                                                          self.burst_mw)]


class FakeNvml:
    def __init__(self, gpus: list[FakeGpu], privileged: bool = True, library: bool = True) -> None:
        self.gpus = gpus
        self.privileged = privileged
        self.library = library
        self.initialised = False
        self.fail: dict[tuple[str, int], type[Exception]] = {}
        self.sets: list[tuple[int, int]] = []
        self.locks: list[tuple[int, int, int]] = []
        # The real error classes and constants, so `nvml.NVMLError...` resolves as on the real module.
        for name in dir(pynvml):
            if name.startswith(("NVMLError", "NVML_")):
                setattr(self, name, getattr(pynvml, name))

    def _gpu(self, call: str, handle: Any) -> FakeGpu:
        if not self.initialised:
            raise pynvml.NVMLError_Uninitialized()
        index = int(handle)
        for key in ((call, index), ("*", index)):  # ("*", i): every call on GPU i
            if key in self.fail:
                raise self.fail[key]()
        gpu = self.gpus[index]
        if call in gpu.unsupported:
            raise pynvml.NVMLError_NotSupported()
        return gpu

    def nvmlInit(self) -> None:
        if not self.library:
            raise pynvml.NVMLError_LibraryNotFound()
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        if ("count", -1) in self.fail:
            raise self.fail[("count", -1)]()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError_InvalidArgument()
        return index

    def nvmlDeviceGetName(self, h: int) -> str:
        return self._gpu("name", h).name

    def nvmlDeviceGetUUID(self, h: int) -> str:
        g = self._gpu("uuid", h)
        return g.uuid or f"GPU-0000000{h}-fake-4000-8000-000000000000"

    def nvmlDeviceGetPowerManagementLimitConstraints(self, h: int) -> list[int]:
        g = self._gpu("constraints", h)
        return [g.min_mw, g.max_mw]

    def nvmlDeviceGetPowerManagementLimit(self, h: int) -> int:
        return self._gpu("limit", h).limit_mw

    def nvmlDeviceGetPowerManagementDefaultLimit(self, h: int) -> int:
        return self._gpu("default", h).default_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        return self._gpu("enforced", h).limit_mw

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        g = self._gpu("power", h)
        mean = int(sum(share * min(want, g.limit_mw) for share, want in g.phases()))
        g.energy_mj += mean  # one second at this draw
        g.clock_us += 1_000_000
        g.capped_ns += int(1e9 * sum(share for share, want in g.phases() if want > g.limit_mw))
        return mean if g.reads_mw is None else g.reads_mw

    def nvmlDeviceGetViolationStatus(self, h: int, policy: int) -> Any:
        g = self._gpu("violation", h)
        if policy != pynvml.NVML_PERF_POLICY_POWER:
            raise pynvml.NVMLError_InvalidArgument()
        v = pynvml.c_nvmlViolationTime_t()
        v.referenceTime, v.violationTime = g.clock_us, g.capped_ns
        return v

    def nvmlDeviceGetFieldValues(self, h: int, fields: list[int]) -> list[Any]:
        g = self._gpu("fields", h)
        out = []
        for f in fields:
            v = pynvml.c_nvmlFieldValue_t()
            v.fieldId = f
            v.nvmlReturn = 0 if f == pynvml.NVML_FI_DEV_POWER_INSTANT else pynvml.NVML_ERROR_NOT_SUPPORTED
            v.value.uiVal = min(g.want_mw(), g.limit_mw) + 5_000
            out.append(v)
        return out

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        return self._gpu("energy", h).energy_mj

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        g = self._gpu("clock", h)
        if kind == pynvml.NVML_CLOCK_MEM:
            return 2619
        free = 1980 if g.want_mw() <= g.limit_mw else int(1980 * (g.limit_mw / g.want_mw()) ** 0.5)
        return free if g.locked_mhz is None else min(free, g.locked_mhz[1])

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        g = self._gpu("reasons", h)
        locked = pynvml.nvmlClocksEventReasonApplicationsClocksSetting if g.locked_mhz is not None else 0x0
        return (0x4 if g.want_mw() > g.limit_mw else 0x0) | locked

    def nvmlDeviceGetSupportedMemoryClocks(self, h: int) -> list[int]:
        self._gpu("supported", h)
        return [2619, 1593]

    def nvmlDeviceGetSupportedGraphicsClocks(self, h: int, memory_mhz: int) -> list[int]:
        g = self._gpu("supported", h)
        return sorted(g.graphics_clocks, reverse=True) if memory_mhz == 2619 else [c for c in g.graphics_clocks
                                                                                   if c <= 1410]

    def nvmlDeviceSetGpuLockedClocks(self, h: int, min_mhz: int, max_mhz: int) -> None:
        g = self._gpu("lock", h)
        if not self.privileged:
            raise pynvml.NVMLError_NoPermission()
        if min_mhz > max_mhz or not min(g.graphics_clocks) <= min_mhz <= max(g.graphics_clocks):
            raise pynvml.NVMLError_InvalidArgument()
        self.locks.append((int(h), min_mhz, max_mhz))
        if not g.lock_ignored:
            g.locked_mhz = (min_mhz, max_mhz)

    def nvmlDeviceResetGpuLockedClocks(self, h: int) -> None:
        g = self._gpu("lock", h)
        if not self.privileged:
            raise pynvml.NVMLError_NoPermission()
        g.locked_mhz = None

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        self._gpu("util", h)
        u = pynvml.c_nvmlUtilization_t()
        u.gpu, u.memory = 87, 41
        return u

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        self._gpu("memory", h)
        m = pynvml.c_nvmlMemory_t()
        used = self.gpus[int(h)].memory_used_b
        m.total, m.used, m.free = 80 * 2**30, used, 80 * 2**30 - used
        return m

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        self._gpu("temperature", h)
        return 61

    def nvmlDeviceSetPowerManagementLimit(self, h: int, limit_mw: int) -> None:
        g = self._gpu("set", h)
        if not self.privileged:
            raise pynvml.NVMLError_NoPermission()
        if not g.min_mw <= limit_mw <= g.max_mw:
            raise pynvml.NVMLError_InvalidArgument()
        self.sets.append((int(h), limit_mw))
        g.limit_mw = limit_mw
