"""Read-only check of the NVML path on a real NVIDIA GPU: what `wattscale gpus` and the `nvml` source see.

    python benchmarks/gpu_probe.py --json [--duration-s 60]

Runs `wattscale gpus --json`, samples the `nvml` GPU source at 1 Hz for --duration-s as the daemon does
(every field each second, the costly energy counter every 10 s, `EnergyCadence`, and at the window's end) and
reports its CPU cost (process CPU seconds per wall second, as a percentage of one core; target < 1 %), checks
each energy counter is monotonic and agrees with the power integrated between its reads within 5 %, decodes
the clock-event reasons seen, and lists the supported clocks and power-limit constraints. docs/gpus.md says
what each field means.

Nothing is ever set: the probe's NVML is `ReadOnlyNvml`, which exposes reads only, so no setter is there to
call. Exit status: 0 every check passed or could not apply, 1 a check failed, 2 NVML is unusable (no driver).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from actuators import ActuatorError
from actuators.nvml import EnergyCadence, GpuReading, NvmlDevices
from controller.telemetry.base import TelemetryError
from controller.telemetry.nvml import NvmlGpuSource

INTERVAL_S = 1.0  # the fast loop's sampling rate
CPU_TARGET_PCT = 1.0  # nvml sampling below this share of one core
ENERGY_TARGET = 0.05  # |counter - integrated power| / counter at most this
# NVML's clock-event (formerly throttle) reason bits, by their NVML names.
CLOCK_EVENT_REASONS = {1 << bit: name for bit, name in enumerate((  # 0x1 GpuIdle .. 0x400 Reliability
    "GpuIdle", "ApplicationsClocksSetting", "SwPowerCap", "HwSlowdown", "SyncBoost", "SwThermalSlowdown",
    "HwThermalSlowdown", "HwPowerBrakeSlowdown", "DisplayClockSetting", "BoardLimit", "Reliability"))}
NULL_MEANS = {"power_instant_w": "the driver gives no NVML_FI_DEV_POWER_INSTANT value (NotSupported on this GPU or "
              "driver)", "power_capped": "follows clock_event_reasons, NotSupported on this GPU",
              **dict.fromkeys(("capped_s", "capped_at_s"), "nvmlDeviceGetViolationStatus (the power violation time) "
                              "NotSupported on this GPU, absent from this driver or not this user's to read")}


class ReadOnlyNvml:
    """The `pynvml` module with its reads only (init, shutdown, constants, errors, nvml*Get*): whatever the
    code above does, no setter, reset or clear reaches the GPU through it."""

    READS = ("NVML_", "NVMLError", "nvmlDeviceGet", "nvmlSystemGet")

    def __init__(self, module: ModuleType | Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        if name in ("nvmlInit", "nvmlShutdown") or name.startswith(self.READS):
            return getattr(self._module, name)
        raise AttributeError(f"{name}: not exposed to the read-only GPU probe")


class Clock(Protocol):
    def wall(self) -> float: ...
    def cpu(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Monotonic wall time and this process's CPU time (all threads, not children)."""

    def wall(self) -> float:
        return time.monotonic()

    def cpu(self) -> float:
        return time.process_time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass(frozen=True)
class CliResult:
    command: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_gpus_command() -> CliResult:
    """`wattscale gpus --json` as an operator runs it: the entry point beside this Python, else the module."""
    exe = Path(sys.executable).with_name("wattscale")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "controller.cli"]
    command += ["gpus", "--json"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return CliResult(command, run.returncode, run.stdout, run.stderr)


@dataclass
class Window:
    """What one sampling window saw: per GPU, (time, power W, energy J, clock-event reasons) per read."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    samples: int = 0
    failed_samples: int = 0
    sample_cpu_s: list[float] = field(default_factory=list)
    sample_wall_s: list[float] = field(default_factory=list)
    series: dict[int, list[tuple[float, float | None, float | None, int | None]]] = field(default_factory=dict)
    last: dict[int, GpuReading] = field(default_factory=dict)
    read_errors: dict[int, list[str]] = field(default_factory=dict)


def sample_window(source: NvmlGpuSource, clock: Clock, duration_s: float) -> Window:
    """Reads every GPU at 1 Hz on a fixed schedule (no drift) for `duration_s`, timing each read's CPU; the
    energy counter on the daemon's cadence and at the last tick."""
    w, cadence = Window(), EnergyCadence()
    ticks = max(1, round(duration_s / INTERVAL_S))
    start_wall, start_cpu = clock.wall(), clock.cpu()
    for k in range(ticks + 1):
        delay = start_wall + k * INTERVAL_S - clock.wall()
        if delay > 0:
            clock.sleep(delay)
        t0, c0 = clock.wall(), clock.cpu()
        try:
            readings = source.readings(cadence.due(k * INTERVAL_S) or k == ticks)
        except TelemetryError:
            w.failed_samples += 1
            continue
        w.sample_cpu_s.append(clock.cpu() - c0)
        w.sample_wall_s.append(clock.wall() - t0)
        w.samples += 1
        for index, r in enumerate(readings):
            if isinstance(r, ActuatorError):
                w.read_errors.setdefault(index, []).append(str(r))
                continue
            w.last[index] = r
            w.series.setdefault(index, []).append((t0, r.power_w, r.energy_j, r.clock_event_reasons))
    w.wall_s, w.cpu_s = clock.wall() - start_wall, clock.cpu() - start_cpu
    return w


def decode_reasons(bits: int) -> list[str]:
    """The names of the clock-event reason bits set; an unknown bit as its hex value."""
    return [CLOCK_EVENT_REASONS.get(1 << b, hex(1 << b)) for b in range(bits.bit_length()) if bits >> b & 1]


def energy_check(points: Sequence[tuple[float, float | None, float | None]]) -> dict[str, Any]:
    """The energy counter's rise against the power integrated (trapezoids) over every read between its first
    and last reading: (time, W, J or None where the counter was not read) each."""
    marks = [(t, e) for t, _, e in points if e is not None]
    powered = [(t, p) for t, p, _ in points if p is not None and marks and marks[0][0] <= t <= marks[-1][0]]
    out: dict[str, Any] = {"monotonic": None, "counter_j": None, "integrated_j": None, "rel_err": None,
                           "target": f"<= {ENERGY_TARGET}", "ok": None, "note": None}
    if len(marks) < 2 or len(powered) < 2:
        out["note"] = "energy counter or power usage NotSupported on this GPU (or fewer than 2 reads)"
        return out
    counter = marks[-1][1] - marks[0][1]
    integrated = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in pairwise(powered))
    out["monotonic"] = all(b >= a for (_, a), (_, b) in pairwise(marks))
    out["counter_j"], out["integrated_j"] = round(counter, 3), round(integrated, 3)
    if counter <= 0:
        out["note"], out["ok"] = "the energy counter did not advance", False
        return out
    out["rel_err"] = round(abs(counter - integrated) / counter, 5)
    out["ok"] = out["monotonic"] and out["rel_err"] <= ENERGY_TARGET
    return out


def verdict(values: list[bool | None]) -> bool | None:
    """One check over all GPUs: False if any GPU failed it, None if it could not apply to every GPU."""
    if False in values:
        return False
    return None if not values or None in values else True


def null_fields(listing: dict[str, Any]) -> dict[str, str]:
    """Each field `wattscale gpus` left null, with why."""
    return {k: NULL_MEANS.get(k, "NotSupported on this GPU") for k, v in listing.items() if v is None}


def cli_section(cli: CliResult, uuids: list[str]) -> tuple[dict[str, Any], bool]:
    """`wattscale gpus --json` as it printed, its null fields explained, and whether it agrees with the source."""
    out: dict[str, Any] = {"command": " ".join(cli.command), "returncode": cli.returncode,
                           "stderr": cli.stderr.strip() or None, "gpus": None, "null_fields": None}
    if cli.returncode != 0:
        return out, False
    try:
        listing = json.loads(cli.stdout)
    except json.JSONDecodeError as exc:
        out["stderr"] = f"stdout is not JSON: {exc}"
        return out, False
    out["gpus"] = listing
    out["null_fields"] = {str(g["index"]): null_fields(g) for g in listing}
    return out, [g["uuid"] for g in listing] == uuids


def clocks_section(devices: NvmlDevices, index: int) -> dict[str, list[int]] | str | None:
    """Memory clock (as a JSON key) -> graphics clocks, MHz; None where the GPU lists none."""
    try:
        clocks = devices.supported_clocks_mhz(index)
    except ActuatorError as exc:
        return f"unreadable: {exc}"
    return None if clocks is None else {str(m): g for m, g in clocks.items()}


def gpu_section(devices: NvmlDevices, index: int, w: Window) -> dict[str, Any]:
    """One GPU: its limits, supported clocks, clock-event reasons over the window and the energy check."""
    last = w.last[index]
    seen: Counter[str] = Counter()
    for *_, bits in w.series[index]:
        seen.update(decode_reasons(bits) if bits is not None else [])
    return {
        "index": index, "name": last.name, "uuid": last.uuid, "reads": len(w.series[index]),
        "read_errors": w.read_errors.get(index, []),
        "limits_w": {"current": last.power_limit_w, "min": last.min_limit_w, "max": last.max_limit_w,
                     "default": last.default_limit_w, "enforced": last.enforced_limit_w},
        "supported_clocks_mhz": clocks_section(devices, index),
        "clock_event_reasons": {"last": None if last.clock_event_reasons is None
                                else decode_reasons(last.clock_event_reasons),
                                "last_bits": last.clock_event_reasons, "reads_with": dict(sorted(seen.items()))},
        "energy": energy_check([(t, p, e) for t, p, e, _ in w.series[index]]),
    }


def probe(nvml: ModuleType | Any, clock: Clock, run_cli: Callable[[], CliResult], duration_s: float) -> dict[str, Any]:
    """The whole report. NVML is wrapped read-only here, before anything else sees it. A first read (handles
    looked up) comes before the window, so the window measures the fast loop's steady state."""
    devices = NvmlDevices(ReadOnlyNvml(nvml))
    try:
        source = NvmlGpuSource(devices, {})
        first = source.readings()
        cli, cli_ok = cli_section(run_cli(), [r.uuid for r in first if isinstance(r, GpuReading)])
        w = sample_window(source, clock, duration_s)
        gpus = [gpu_section(devices, i, w) for i in sorted(w.last)]
    finally:
        devices.close()
    cpu_pct = 100.0 * w.cpu_s / w.wall_s if w.wall_s > 0 else None
    checks = {
        "cli_lists_the_gpus_the_source_reads": cli_ok,
        "every_gpu_read_every_sample": w.failed_samples == 0 and not w.read_errors and len(gpus) == len(first),
        "nvml_sampling_under_target": None if cpu_pct is None else cpu_pct < CPU_TARGET_PCT,
        "energy_monotonic": verdict([g["energy"]["monotonic"] for g in gpus]),
        "energy_agreement_within_target": verdict([g["energy"]["ok"] for g in gpus]),
    }
    n = len(w.sample_wall_s)
    return {
        "ok": False not in checks.values(), "checks": checks,
        "targets": {"nvml_sampling_cpu_percent_of_core": f"< {CPU_TARGET_PCT}",
                    "energy_agreement_rel_err": f"<= {ENERGY_TARGET}"},
        "window": {"duration_s": round(w.wall_s, 3), "interval_s": INTERVAL_S, "samples": w.samples,
                   "failed_samples": w.failed_samples},
        "nvml_sampling": {
            "cpu_percent_of_core": None if cpu_pct is None else round(cpu_pct, 4),
            "target": f"< {CPU_TARGET_PCT}",
            "sample_cpu_ms_mean": round(1000 * sum(w.sample_cpu_s) / n, 3) if n else None,
            "sample_wall_ms_mean": round(1000 * sum(w.sample_wall_s) / n, 3) if n else None,
            "sample_wall_ms_max": round(1000 * max(w.sample_wall_s), 3) if n else None,
        },
        "wattscale_gpus": cli,
        "gpus": gpus,
    }


def summary(report: dict[str, Any]) -> str:
    """A few lines for a person; --json has everything."""
    s = report["nvml_sampling"]
    lines = [f"ok {report['ok']}: nvml sampling {s['cpu_percent_of_core']} % of a core (target {s['target']}), "
             f"{s['sample_wall_ms_mean']} ms a read, {report['window']['samples']} samples"]
    for g in report["gpus"]:
        e = g["energy"]
        lines.append(f"GPU {g['index']} {g['name']}: limits {g['limits_w']}, energy rel_err {e['rel_err']} "
                     f"(target {e['target']}), reasons seen {g['clock_event_reasons']['reads_with']}")
    lines += [f"check {k}: {v}" for k, v in report["checks"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None, nvml: ModuleType | Any = None, clock: Clock | None = None,
         run_cli: Callable[[], CliResult] = run_gpus_command) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration-s", type=float, default=60.0, help="sampling window (default 60)")
    ap.add_argument("--json", action="store_true", help="print one JSON object with every field")
    args = ap.parse_args(argv)
    if args.duration_s <= 0:
        ap.error(f"--duration-s: must be > 0, got {args.duration_s}")
    if nvml is None:
        import pynvml  # nvidia-ml-py, a dependency of wattscale

        nvml = pynvml
    try:
        report = probe(nvml, clock or SystemClock(), run_cli, args.duration_s)
    except (ActuatorError, TelemetryError) as exc:
        print(f"gpu_probe: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else summary(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
