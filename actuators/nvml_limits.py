"""Power limits through NVML (`NvmlPowerLimiter`), and the per-GPU gate that spaces out raises of a limit or a
clock (`RaiseGate`, shared with actuators/nvml_clocks.py). The device calls and their errors' translation are
actuators/nvml.py's; this module decides what to ask of them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from actuators.base import LEAST_FALL_W, ActuatorError, TransientActuatorError, worth_setting
from actuators.nvml import NvmlDevices


class RaiseGate:
    """Per GPU, a setting that raises (a limit, a clock) waits `min_interval_s` after the last one; a lowering
    always goes through (the budget never waits). Shared by the power limiter and the clock locker."""

    def __init__(self, min_interval_s: float, clock: Callable[[], float]) -> None:
        self.min_interval_s, self.clock = min_interval_s, clock
        self._last: dict[int, float] = {}

    def may_set(self, gpu_index: int, raising: bool) -> bool:
        """Whether to set now; when so, the time is recorded."""
        now = self.clock()
        last = self._last.get(gpu_index)
        if raising and last is not None and now - last < self.min_interval_s:
            return False
        self._last[gpu_index] = now
        return True


class NvmlPowerLimiter:
    """Power limits through NVML: clamped to the GPU's constraints, read back and verified, and rate-limited
    per GPU (an unchanged limit is not rewritten). Can restore every GPU's default limit on exit."""

    name = "nvml"

    def __init__(self, devices: NvmlDevices, min_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.devices = devices
        self.gate = RaiseGate(min_interval_s, clock)

    def set_power_limit(self, gpu_index: int, watts: float) -> float:
        if not math.isfinite(watts):  # min/max let NaN through, and round(nan) raised out of the tick
            raise TransientActuatorError(f"GPU {gpu_index}: a power limit of {watts} W is no number of watts", 1.0)
        current, low, high = self.devices.limits_w(gpu_index)
        # whole watts, rounded down (never past a line the governor fitted; a driver that keeps whole watts would apply
        # the same), within the device's own limits
        target = max(low, min(float(math.floor(watts + 1e-6)), high))
        if not worth_setting(current, target) or not self.gate.may_set(gpu_index, target > current):
            return current
        applied = self.devices.set_limit_w(gpu_index, target)
        # the v2 setter can ignore its return code: trust the read-back only; one above the target, however little, is
        # a failed set (the governor fits the limits' sum to a line exactly: a driver applying more had it over by
        # that every tick, set again each one), and the GPU is counted at what it holds while the others fit around it
        if applied > target + LEAST_FALL_W or applied < target - 1.0:
            raise TransientActuatorError(f"GPU {gpu_index}: asked {round(target, 3):g} W, {round(applied, 3):g} W in "
                                         "force")
        return applied

    def restore_defaults(self) -> list[str]:
        """Every GPU back at its default limit; returns what failed (for the exit log), never raises."""
        failed: list[str] = []
        try:
            count = self.devices.count()
        except ActuatorError as exc:
            return [str(exc)]
        for index in range(count):
            try:
                default = self.devices.default_limit_w(index)
                if default is not None:
                    self.devices.set_limit_w(index, default)
            except ActuatorError as exc:
                failed.append(str(exc))
        return failed
