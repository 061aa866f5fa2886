"""NVML: the device layer every GPU read and power-limit write goes through (nvidia-ml-py, `nvidia-smi`-free).

NVML errors are translated here, through one map, into the error tree sorted by recovery; nothing above
this module sees a `pynvml` class. The module is passed in (`nvml=`), so tests hand in a fake that raises
the real `pynvml` error classes.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from actuators.base import (
    ActuatorError,
    PermanentActuatorError,
    TransientActuatorError,
)

# pynvml error class name -> (transient?, what it means for the operator); what else to run instead is the
# caller's to say (the daemon's config has a "sim" source, the node agent has none). A GPU lost or a driver not
# loaded is an outage, tried again after a delay: taken as a refusal, a write that met one in the tick before the
# readings failed was held back 300 s after they came back (a review)
ERRORS: dict[str, tuple[bool, str]] = {
    "NVMLError_NoPermission": (False, "no permission: setting power limits or locked clocks needs root or "
                                      "CAP_SYS_ADMIN"),
    "NVMLError_NotSupported": (False, "not supported on this GPU"),
    "NVMLError_GpuIsLost": (True, "the GPU has fallen off the bus: reset it or reboot"),
    "NVMLError_InvalidArgument": (False, "invalid argument"),
    "NVMLError_LibraryNotFound": (False, "libnvidia-ml.so.1 not found: install the NVIDIA driver "
                                         "(or run on a GPU host)"),
    "NVMLError_DriverNotLoaded": (True, "the NVIDIA driver is not loaded: load it (modprobe nvidia)"),
    "NVMLError_Uninitialized": (True, "NVML not initialised"),
    "NVMLError_Timeout": (True, "NVML timed out"),
    "NVMLError_InUse": (True, "the GPU is busy with another operation"),
    "NVMLError_Unknown": (True, "unknown NVML error"),
}
POWER_CAP_BITING = 0x4  # nvmlClocksEventReasonSwPowerCap
MAX_DEVICES = 1024
"""More devices than any host holds (8 GPUs of 7 MIG slices each are 56): a count past it is a broken driver."""


PROC_STATUS = Path("/proc/self/status")
"""Where the kernel says this process's capabilities."""


def may_administer() -> bool:
    """Whether this process holds CAP_SYS_ADMIN (bit 21 of its effective set), which NVML asks of every power
    limit and clock lock it sets; True where the kernel does not say (no /proc: the writes will tell)."""
    try:
        lines = PROC_STATUS.read_text().splitlines()
        effective = next(int(line.split()[1], 16) for line in lines if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return True
    return bool(effective >> 21 & 1)


def _text(read: Callable[[], Any], instead: str) -> str:
    """A name or UUID as printable text: pynvml decodes the driver's bytes itself and raised UnicodeDecodeError out
    of every read of a GPU whose UUID is not UTF-8; control characters (terminal escapes) are written escaped."""
    try:
        value = read()
        text = value.decode() if isinstance(value, bytes) else str(value)  # older pynvml returns the bytes
    except UnicodeDecodeError:
        return instead
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def translate(exc: Exception, what: str) -> ActuatorError:
    """One NVML error as transient (retry after a delay) or permanent, with the operator's fix."""
    transient, meaning = ERRORS.get(type(exc).__name__, (True, str(exc)))
    message = f"{what}: {meaning}"
    return TransientActuatorError(message, delay_s=5.0) if transient else PermanentActuatorError(message)


ENERGY_EVERY_S = 10.0
"""Seconds between reads of the energy counter. Nothing steers by it: the daemon and the node agent export it
for Prometheus (scraped every 15 s or so), and on an H200 it was 4.1 ms of the 4.4 a GPU's read takes
(docs/gpus.md): 3.4 % of a core for 8 GPUs read at the fast tick's 1 Hz."""


class EnergyCadence:
    """When a reader of every GPU at `now` (its own clock) also reads the energy counter: every ENERGY_EVERY_S,
    and at once where the clock went back."""

    def __init__(self) -> None:
        self._due = float("-inf")

    def due(self, now: float) -> bool:
        if self._due - ENERGY_EVERY_S <= now < self._due:
            return False
        self._due = now + ENERGY_EVERY_S
        return True


@dataclass(frozen=True)
class GpuReading:
    """Everything the `nvml` source reads from one GPU; None where the GPU does not support a field."""

    index: int
    name: str
    uuid: str
    power_w: float | None
    """NVML's power usage: a 1 s average on Ampere and later (except GA100)."""
    power_instant_w: float | None
    energy_j: float | None
    power_limit_w: float
    default_limit_w: float | None
    min_limit_w: float
    max_limit_w: float
    enforced_limit_w: float | None
    sm_clock_mhz: float | None
    mem_clock_mhz: float | None
    clock_event_reasons: int | None
    power_capped: bool | None
    """The cap is biting: the SW power cap clock-event reason is set."""
    gpu_util_pct: float | None
    mem_util_pct: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_c: float | None
    capped_s: float | None = None
    """Seconds, since the driver started, that the power limit held the clocks down (the power violation time)."""
    capped_at_s: float | None = None
    """The CPU time stamp NVML gave that counter, in seconds: the share of a tick is its rise over this one's."""


class NvmlDevices:
    """The GPUs NVML sees. Reads tolerate unsupported fields; failures come out as `ActuatorError`s."""

    def __init__(self, nvml: ModuleType | Any = None) -> None:
        if nvml is None:
            import pynvml  # nvidia-ml-py

            nvml = pynvml
        self.nvml: Any = nvml
        self._handles: dict[int, Any] = {}  # valid until shutdown: looked up once per GPU
        self._init_lock = threading.Lock()
        self._stale = False
        """NVML said it is not initialised (shut down under us: a driver reloaded): initialised again before the next
        call that needs it (`_ready`), every handle looked up again. Otherwise every read failed for good, and the
        limits stayed frozen."""
        with self._errors("NVML init"):
            self.nvml.nvmlInit()

    def close(self) -> None:
        with self._errors("NVML shutdown"):
            self.nvml.nvmlShutdown()

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except self.nvml.NVMLError as exc:
            self._stale = self._stale or type(exc).__name__ == "NVMLError_Uninitialized"
            raise translate(exc, what) from exc

    def _ready(self) -> None:
        """NVML initialised again where it said it was not (`_stale`), before the next call that needs it; once,
        whatever threads (the reads', the limit writes') find it out."""
        if not self._stale:
            return
        with self._init_lock:
            if self._stale:
                with self._errors("NVML init again"):
                    self.nvml.nvmlInit()
                self._handles = {}  # before the flag: no thread takes an old handle as good
                self._stale = False

    def count(self) -> int:
        self._ready()
        with self._errors("device count"):
            n = int(self.nvml.nvmlDeviceGetCount())
        if not 0 <= n <= MAX_DEVICES:  # a million were read one by one, for minutes and gigabytes
            raise PermanentActuatorError(f"device count: NVML reports {n} GPUs, past the {MAX_DEVICES} any host holds")
        return n

    def _handle(self, index: int) -> Any:
        self._ready()
        handles = self._handles  # one table throughout: a re-init swaps it for an empty one
        handle = handles.get(index)
        if handle is None:
            with self._errors(f"GPU {index}"):
                handle = handles[index] = self.nvml.nvmlDeviceGetHandleByIndex(index)
        return handle

    def _optional(self, fn: Callable[[], Any], telemetry: bool = False) -> Any:
        """A field the GPU may not support: None then; any other error is raised translated. A `telemetry` reading
        is also absent where the driver lacks the function (an older one) or this user may not read it: one such
        field must not lose the GPU's whole reading."""
        nv = self.nvml
        absent = ((nv.NVMLError_NotSupported, nv.NVMLError_FunctionNotFound, nv.NVMLError_NoPermission) if telemetry
                  else (nv.NVMLError_NotSupported,))
        try:
            return fn()
        except absent:
            return None

    def limits_w(self, index: int) -> tuple[float, float, float]:
        """(current, min, max) power limit in W."""
        nv, h = self.nvml, self._handle(index)
        with self._errors(f"GPU {index} power limits"):
            low, high = nv.nvmlDeviceGetPowerManagementLimitConstraints(h)
            return nv.nvmlDeviceGetPowerManagementLimit(h) / 1000.0, low / 1000.0, high / 1000.0

    def read(self, index: int, energy: bool = True) -> GpuReading:
        """Every field; the energy counter only where `energy` asks (on an H200 it costs 4.1 ms, 13 x the rest)."""
        nv, h = self.nvml, self._handle(index)
        opt = functools.partial(self._optional, telemetry=True)
        with self._errors(f"GPU {index}"):
            name = _text(lambda: nv.nvmlDeviceGetName(h), f"GPU {index}")
            uuid = _text(lambda: nv.nvmlDeviceGetUUID(h), f"GPU-undecodable-{index}")
            limit, low, high = self.limits_w(index)
            power = opt(lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0)
            instant = self._field_w(h, nv.NVML_FI_DEV_POWER_INSTANT)
            joules = opt(lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0) if energy else None
            default = opt(lambda: nv.nvmlDeviceGetPowerManagementDefaultLimit(h) / 1000.0)
            enforced = opt(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0)
            sm = opt(lambda: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)))
            mem_clock = opt(lambda: float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)))
            reasons = opt(lambda: int(nv.nvmlDeviceGetCurrentClocksEventReasons(h)))
            util = opt(lambda: nv.nvmlDeviceGetUtilizationRates(h))
            memory = opt(lambda: nv.nvmlDeviceGetMemoryInfo(h))
            temp = opt(lambda: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)))
            capped = self._capped_time(h)
        return GpuReading(
            index, name, uuid, power, instant, joules, limit, default, low,
            high, enforced, sm, mem_clock, reasons, None if reasons is None else bool(reasons & POWER_CAP_BITING),
            None if util is None else float(util.gpu), None if util is None else float(util.memory),
            None if memory is None else int(memory.used), None if memory is None else int(memory.total), temp,
            *((None, None) if capped is None else (capped.violationTime / 1e9, capped.referenceTime / 1e6)))

    def _capped_time(self, handle: Any) -> Any:
        """The power violation time (NVML's struct), or None where the read fails in any way: a figure only shown and
        logged, whose error is no reason to lose the GPU's reading (and, on a node, the limit its plan sets)."""
        try:
            return self.nvml.nvmlDeviceGetViolationStatus(handle, self.nvml.NVML_PERF_POLICY_POWER)
        except self.nvml.NVMLError:
            return None

    def _field_w(self, handle: Any, field_id: int) -> float | None:
        """A power field (mW) through nvmlDeviceGetFieldValues; None when the driver has no value for it, or the
        read fails (a second reading beside the power usage: its error is no reason to lose the GPU's)."""
        try:
            (value,) = self.nvml.nvmlDeviceGetFieldValues(handle, [field_id])
        except self.nvml.NVMLError:
            return None
        if value.nvmlReturn != 0:
            return None
        return float(value.value.uiVal) / 1000.0

    def default_limit_w(self, index: int) -> float | None:
        h = self._handle(index)
        with self._errors(f"GPU {index} default power limit"):
            default_mw = self._optional(lambda: self.nvml.nvmlDeviceGetPowerManagementDefaultLimit(h))
        return None if default_mw is None else float(default_mw) / 1000.0

    def supported_clocks_mhz(self, index: int) -> dict[int, list[int]] | None:
        """Memory clock -> the graphics clocks NVML allows with it (MHz); None where the GPU lists none."""
        nv, h = self.nvml, self._handle(index)
        with self._errors(f"GPU {index} supported clocks"):
            memory = self._optional(lambda: nv.nvmlDeviceGetSupportedMemoryClocks(h))
            if memory is None:
                return None
            return {int(m): sorted(int(g) for g in nv.nvmlDeviceGetSupportedGraphicsClocks(h, m)) for m in memory}

    def sm_clock_mhz(self, index: int) -> float:
        """The SM clock now (MHz): at or below a lock in force."""
        h = self._handle(index)
        with self._errors(f"GPU {index} SM clock"):
            return float(self.nvml.nvmlDeviceGetClockInfo(h, self.nvml.NVML_CLOCK_SM))

    def lock_clocks_mhz(self, index: int, mhz: int) -> None:
        """Lock the graphics clock at `mhz` (min = max)."""
        h = self._handle(index)
        with self._errors(f"GPU {index} lock clocks"):
            self.nvml.nvmlDeviceSetGpuLockedClocks(h, int(mhz), int(mhz))

    def reset_clocks(self, index: int) -> None:
        h = self._handle(index)
        with self._errors(f"GPU {index} reset locked clocks"):
            self.nvml.nvmlDeviceResetGpuLockedClocks(h)

    def set_limit_w(self, index: int, watts: float) -> float:
        """Set a power limit (already clamped by the caller) and return the limit read back."""
        h = self._handle(index)
        with self._errors(f"GPU {index} set power limit"):
            # down to the milliwatt (never up past a line), but not under a bound through float error (123.457 W)
            self.nvml.nvmlDeviceSetPowerManagementLimit(h, math.floor(watts * 1000 + 1e-6))
            return float(self.nvml.nvmlDeviceGetPowerManagementLimit(h)) / 1000.0
