"""Locked SM clocks through NVML (`nvmlDeviceSetGpuLockedClocks`), beside the power limiter.

A lock is snapped to a clock the GPU lists for its highest memory clock, read back (the SM clock now may not
exceed it: a busy GPU runs at the lock, an idle one below), rate-limited per GPU as the power limiter is (a
lower clock always goes through: it only lowers the draw), and not rewritten when unchanged. Errors come out
through the one NVML error map: NotSupported (GPUs before Volta, some boards) and NoPermission are
permanent, and the daemon then runs on caps alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from actuators.base import ActuatorError, PermanentActuatorError, TransientActuatorError, snap_clock_mhz
from actuators.nvml import NvmlDevices
from actuators.nvml_limits import RaiseGate

READ_BACK_SLACK_MHZ = 15.0
"""How far above the lock the SM clock may read (one step of the GPU's clock table)."""


class NvmlClockLocker:
    """Locked graphics clocks per GPU; remembers what it locked so it can unlock it on exit."""

    name = "nvml"

    def __init__(self, devices: NvmlDevices, min_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.devices = devices
        self.gate = RaiseGate(min_interval_s, clock)
        self.locked: dict[int, int] = {}
        """GPU -> the lock in force, as this process set and read it back."""
        self._touched: set[int] = set()
        """GPUs this process asked to lock and has not reset since (what `reset_all` unlocks)."""
        self._supported: dict[int, tuple[int, ...]] = {}

    def supported_clocks_mhz(self, gpu_index: int) -> tuple[int, ...]:
        if gpu_index not in self._supported:
            table = self.devices.supported_clocks_mhz(gpu_index)
            if not table:
                raise PermanentActuatorError(f"GPU {gpu_index} supported clocks: not supported on this GPU")
            self._supported[gpu_index] = tuple(sorted(set(table[max(table)])))
        return self._supported[gpu_index]

    def lock_clock(self, gpu_index: int, mhz: int) -> int:
        target = snap_clock_mhz(self.supported_clocks_mhz(gpu_index), mhz)
        current = self.locked.get(gpu_index)
        if current == target:
            return target
        if not self.gate.may_set(gpu_index, current is not None and target > current) and current is not None:
            return current  # a raise within the interval waits; a lower clock, or a first lock, goes through
        self._touched.add(gpu_index)
        self.locked.pop(gpu_index, None)
        self.devices.lock_clocks_mhz(gpu_index, target)
        running = self.devices.sm_clock_mhz(gpu_index)
        if running > target + READ_BACK_SLACK_MHZ:
            raise TransientActuatorError(f"GPU {gpu_index}: locked at {target} MHz, SM clock reads {running:.0f} MHz")
        self.locked[gpu_index] = target
        return target

    def reset_clock(self, gpu_index: int) -> None:
        self.devices.reset_clocks(gpu_index)
        self.locked.pop(gpu_index, None)
        self._touched.discard(gpu_index)

    def reset_all(self) -> list[str]:
        """Unlock every GPU this process locked; returns what failed (for the exit log), never raises."""
        failed: list[str] = []
        for index in sorted(self._touched):
            try:
                self.reset_clock(index)
            except ActuatorError as exc:
                failed.append(str(exc))
        return failed


APPLICATIONS_CLOCKS_SETTING = 0x2
"""nvmlClocksEventReasonApplicationsClocksSetting: the clocks are held by a setting (a lock, application clocks)."""


def clock_listing(devices: NvmlDevices, index: int, reasons: int | None, sm_clock_mhz: float | None) -> dict[str, Any]:
    """What `wattscale gpus` shows of a GPU's clocks: the graphics clocks a lock may name (at the highest memory
    clock), and whether a setting holds the clock now. NVML has no getter for a lock: while the event reason
    says a setting holds the clock, the SM clock read is the lock (under load; an idle GPU runs below it)."""
    try:
        table = devices.supported_clocks_mhz(index)
    except ActuatorError:
        table = None
    graphics = sorted(table[max(table)]) if table else []
    held = None if reasons is None else bool(reasons & APPLICATIONS_CLOCKS_SETTING)
    return {"supported_mhz": {"min": graphics[0], "max": graphics[-1], "count": len(graphics)} if graphics else None,
            "held_by_setting": held, "sm_clock_mhz": sm_clock_mhz}


def clock_text(listing: dict[str, Any]) -> str:
    """`clock_listing` as `wattscale gpus` prints it."""
    supported = listing["supported_mhz"]
    table = "no lockable clocks" if supported is None else f"clocks {supported['min']}-{supported['max']} MHz"
    held = {None: "unknown", True: "held by a setting (locked)", False: "not held"}[listing["held_by_setting"]]
    sm = "-" if listing["sm_clock_mhz"] is None else f"{listing['sm_clock_mhz']:.0f} MHz"
    return f"SM clock {sm}, {held}; {table}"
