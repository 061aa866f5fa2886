"""The decision log: one JSON line per slow cycle, so an operator can answer "why did it do that" (and the
shapes its records hold, which `wattscale status` reads back).

Each line holds the cycle's inputs (load and latency observed per service), the plan (what the optimizer
chose and any shortfall with its reason), what the stability gate held back, what was asked of the
actuators and what they refused, and the errors of the cycle. Lines go to a file (rotated at a size, one
old file kept) and to the log at DEBUG. Writing never stops a cycle: a failure is logged once and counted.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from controller import strict_json
from controller.optimizer import Assignment
from controller.plan import DrawReading
from controller.telemetry.base import ServiceWindow
from controller.telemetry.plausible import MAX_GPU_LIMIT_W
from tuner.own_files import open_plain

CHANGES_SAID = 10
"""Services a decision's log line names one by one (the decision log holds each): a first cycle of 100 services
wrote a 20-KB line, past what a journal keeps whole."""

log = logging.getLogger("wattscale.decisions")
said = logging.getLogger("wattscale.controller")
"""The INFO decision line's logger: the controller's, where operators read its decisions."""


def _pid_namespace() -> int | None:
    """This process's pid namespace (Linux; None elsewhere): a pid names a process only within it (a container on
    the host's network has the host's name and pids of its own)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _boot_id() -> str | None:
    """This boot's id (Linux; None elsewhere): two hosts of one name, or one host rebooted, share pid namespaces'
    numbers but not it."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read(64).strip()
    except (OSError, ValueError):
        return None


HOST, PID_NS, BOOT_ID = socket.gethostname(), _pid_namespace(), _boot_id()
"""This host's name, pid namespace and boot, in each line: `wattscale status` asks whether the writing process
runs only where all three are its own."""


class DecisionLog:
    def __init__(self, path: Path | None, max_bytes: int = 16 << 20, config: Path | None = None) -> None:
        self.path, self.max_bytes = path, max_bytes
        self.config = None if config is None else os.path.abspath(config)  # not resolved: a ConfigMap's link moves
        """The config file of the daemon writing, in each line: two configs may share a log, and status tells."""
        self.writer = {"pid": os.getpid(), "host": HOST, "pid_ns": PID_NS, "boot_id": BOOT_ID} | (
            {} if self.config is None else {"config": self.config})
        """Which process wrote each line, and by which config: the same for every line."""
        self.failed = False
        self.checked = False
        """Whether the file's last line was read for a tear (`_append`)."""

    def write(self, record: dict[str, Any]) -> bool:
        """Append one record; whether it reached the file (always True without one). A line in the file also
        says when it was written (`wall_time`, Unix seconds), by which config (`config`) and process (`pid` on
        `host`), for `wattscale status`."""
        clean = strict_json.finite(record)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s", strict_json.dumps(clean, separators=(",", ":"), sort_keys=True, default=str))
        if self.path is None:
            return True
        line = strict_json.dumps({**clean, "wall_time": round(time.time(), 3), **self.writer}, separators=(",", ":"),
                                 sort_keys=True, default=str)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._append(self.path, (line + "\n").encode("utf-8"))
        except OSError as exc:
            if not self.failed:
                log.warning("decision log %s cannot be written: %s", self.path, exc)
            self.failed = True
            return False
        if self.failed:
            log.info("decision log %s written again", self.path)
        self.failed = False
        return True

    def _append(self, path: Path, data: bytes) -> None:
        """`data` appended whole, or the file left as it was: a full disk left part of a line, and the next line
        written once there was room was joined to it (neither one JSON). A file whose last line is torn (a crash
        mid-write) is read for it at the first write and after a failed one."""
        with open_plain(path, "ab") as f:
            fd = f.fileno()
            end = os.fstat(fd).st_size
            if self.failed or not self.checked:
                if end and _last_byte(path) != b"\n":
                    data = b"\n" + data
                self.checked = True
            try:
                while data:
                    data = data[os.write(fd, data):]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise


def _last_byte(path: Path) -> bytes:
    with open_plain(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return bytes(f.read(1))


def observed(w: ServiceWindow) -> dict[str, Any]:
    """A window as the decision log records it."""
    return {"rate_rps": w.rate_rps, "ttft_ms": w.ttft_ms, "itl_ms": w.itl_ms, "ttft_p95_ms": w.ttft_p95_ms,
            "itl_p95_ms": w.itl_p95_ms, "waiting": w.waiting, "replicas": w.replicas, "steady": w.steady,
            "tokens_per_step": w.tokens_per_step, "draft_tokens": w.draft_tokens}


def gpus(readings: list[DrawReading]) -> dict[str, float] | None:
    """A service's GPUs over the cycle as the decision log records them: their mean draw and the mean limit they ran
    under (the governor's, tick by tick: under a budget that binds, below the plan's cap), and where their source
    reads it the mean share of a tick those limits held their clocks down (`capped_share`: bursts a limit clips
    while the mean draw sits under it); None without a reading a GPU can make."""
    kept = [r for r in readings if 0 <= r.draw_w <= MAX_GPU_LIMIT_W and 0 <= r.limit_w <= MAX_GPU_LIMIT_W]
    if not kept:  # none, or none a GPU draws (a source's 1e308 W summed to inf, which the log writes as null)
        return None
    out = {"draw_w": round(math.fsum(r.draw_w for r in kept) / len(kept), 1),
           "limit_w": round(math.fsum(r.limit_w for r in kept) / len(kept), 1)}
    capped = [c for r in kept if (c := r.capped_share) is not None and 0.0 <= c <= 1.0]
    if capped:
        out["capped_share"] = round(math.fsum(capped) / len(capped), 3)
    return out


def shape(a: Assignment) -> dict[str, Any]:
    out = {"accelerator": a.accelerator, "replicas": a.replicas, "max_batch": a.max_batch,
           "cap_w": round(a.power_cap_w, 1)}
    if a.sm_clock_fraction is not None:
        out["sm_clock_share"] = round(a.sm_clock_fraction, 3)
    return out


def plan_record(current: Assignment, planned: Assignment, applied: Assignment, short_rps: float,
                reason: str | None) -> dict[str, Any]:
    """A service's plan as the decision log records it: in force, planned and applied, and any shortfall."""
    return {"in_force": shape(current), "applied": shape(applied), "planned": shape(planned),
            "short_rps": round(short_rps, 3), "reason": reason}


def text(a: Assignment) -> str:
    """An assignment as the INFO decision line says it."""
    clock = "" if a.sm_clock_fraction is None else f" clock {a.sm_clock_fraction:.0%}"
    return f"{a.replicas}x{a.accelerator} batch {a.max_batch} cap {a.power_cap_w:.0f} W{clock}"


def gate_held(planned: Assignment, admitted: Assignment) -> list[str]:
    """What of the plan the stability gate held back this cycle."""
    return [f"{f} {getattr(admitted, f)} not {getattr(planned, f)}" for f in ("replicas", "max_batch", "power_cap_w")
            if getattr(admitted, f) != getattr(planned, f)]


def change_text(name: str, current: Assignment, planned: Assignment, applied: Assignment, short_rps: float,
                reason: str | None, held: dict[str, list[str]]) -> str:
    """One service's change as the INFO decision line says it: in force, planned, applied, any shortfall, and
    what each holder (the gate, the actuator) held back."""
    short = f" short {short_rps:.2f} rps ({reason})" if reason else ""
    return (f"{name}: {text(current)} -> planned {text(planned)}, applied {text(applied)}{short}"
            + "".join(f" [{who} held: {'; '.join(what)}]" for who, what in held.items() if what))


def log_decision(changed: list[str], predicted_w: float, budget_w: float, solve_s: float,
                 before: list[str] | None = None) -> None:
    """The cycle's decision line: at INFO where a service changed (the first CHANGES_SAID named) and the cycle
    before (`before`, its changes) did not say the same, else DEBUG: a plan the gate or an actuator's lasting failure
    holds is the same change every cycle, and was logged every cycle for as long as it held."""
    more = f"; {len(changed) - CHANGES_SAID} more services changed (the decision log has each)" \
        if len(changed) > CHANGES_SAID else ""
    said.log(logging.INFO if changed and changed != before else logging.DEBUG, "decision: %s%s | predicted %.0f W of "
             "%.0f W budget | solve %.1f ms", "; ".join(changed[:CHANGES_SAID]) or "no change", more, predicted_w,
             budget_w, 1000 * solve_s)
