"""Read-only: what each NVML call of a GPU's read (`NvmlDevices.read`) costs on this host's GPU 0.

    python benchmarks/nvml_calls.py [--repeat 300]

Times every call `repeat` times after one untimed call and prints one JSON object: per call its mean and p90 in
microseconds, and their sum (one read of one GPU). NVML is reached through gpu_probe's `ReadOnlyNvml`, so no
setter can be called. On an H200 the energy counter was 4.1 of the read's 4.4 ms (docs/gpus.md), which is why
the daemon reads it every `ENERGY_EVERY_S` only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from gpu_probe import ReadOnlyNvml


def calls(nv: Any, h: Any) -> dict[str, Callable[[], object]]:
    """The driver calls of one GPU's read, by name."""
    return {
        "nvmlDeviceGetCount": nv.nvmlDeviceGetCount,
        "nvmlDeviceGetName": lambda: nv.nvmlDeviceGetName(h),
        "nvmlDeviceGetUUID": lambda: nv.nvmlDeviceGetUUID(h),
        "nvmlDeviceGetPowerManagementLimitConstraints": lambda: nv.nvmlDeviceGetPowerManagementLimitConstraints(h),
        "nvmlDeviceGetPowerManagementLimit": lambda: nv.nvmlDeviceGetPowerManagementLimit(h),
        "nvmlDeviceGetPowerUsage": lambda: nv.nvmlDeviceGetPowerUsage(h),
        "nvmlDeviceGetFieldValues(POWER_INSTANT)": lambda: nv.nvmlDeviceGetFieldValues(
            h, [nv.NVML_FI_DEV_POWER_INSTANT]),
        "nvmlDeviceGetTotalEnergyConsumption": lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h),
        "nvmlDeviceGetPowerManagementDefaultLimit": lambda: nv.nvmlDeviceGetPowerManagementDefaultLimit(h),
        "nvmlDeviceGetEnforcedPowerLimit": lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h),
        "nvmlDeviceGetClockInfo(SM)": lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
        "nvmlDeviceGetClockInfo(MEM)": lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
        "nvmlDeviceGetCurrentClocksEventReasons": lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(h),
        "nvmlDeviceGetUtilizationRates": lambda: nv.nvmlDeviceGetUtilizationRates(h),
        "nvmlDeviceGetMemoryInfo": lambda: nv.nvmlDeviceGetMemoryInfo(h),
        "nvmlDeviceGetTemperature": lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
    }


def timed(nvml: ModuleType | Any, repeat: int, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    nv = ReadOnlyNvml(nvml)
    nv.nvmlInit()
    try:
        out: dict[str, Any] = {}
        for name, call in calls(nv, nv.nvmlDeviceGetHandleByIndex(0)).items():
            call()
            took = []
            for _ in range(repeat):
                t0 = clock()
                call()
                took.append(clock() - t0)
            took.sort()
            out[name] = {"mean_us": round(1e6 * sum(took) / repeat, 1),
                         "p90_us": round(1e6 * took[min(repeat - 1, int(0.9 * repeat))], 1)}
    finally:
        nv.nvmlShutdown()
    return {"calls": out, "read_us": round(sum(c["mean_us"] for c in out.values()), 1), "repeat": repeat}


def main(argv: list[str] | None = None, nvml: ModuleType | Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=300, help="timed calls of each (default 300)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error(f"--repeat: must be >= 1, got {args.repeat}")
    if nvml is None:
        import pynvml

        nvml = pynvml
    try:
        print(json.dumps(timed(nvml, args.repeat)))
    except nvml.NVMLError as exc:  # no driver, no GPU: one line, as gpu_probe.py says it
        print(f"nvml_calls: NVML: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
