"""The unit file passes systemd-analyze verify and rates 2.5 or lower on exposure; the example vLLM unit verifies."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "wattscale.service"
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def installed_copy(tmp_path: Path) -> Path:
    """The unit as installed, with ExecStart pointing at this environment's entry point."""
    exe = Path(sys.executable).with_name("wattscale")
    unit = tmp_path / "wattscale.service"
    unit.write_text(UNIT.read_text().replace("/opt/wattscale/bin/wattscale", str(exe)))
    return unit


def test_verify(tmp_path: Path) -> None:
    res = subprocess.run(["systemd-analyze", "verify", str(installed_copy(tmp_path))], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_the_example_vllm_unit_loads_cleanly(tmp_path: Path) -> None:
    """systemd/vllm-example.service, its ExecStart pointed at a program that is there, is read without a warning."""
    unit = tmp_path / "vllm-chat-0.service"
    exe = Path(sys.executable).with_name("wattscale")
    unit.write_text(UNIT.with_name("vllm-example.service").read_text().replace("/opt/wattscale/bin/wattscale",
                                                                                str(exe)))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


def test_security_exposure(tmp_path: Path) -> None:
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", str(installed_copy(tmp_path))],
                         capture_output=True, text=True)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    assert match, res.stdout[-500:]
    assert float(match.group(1)) <= 2.5


def syscalls(group: str) -> set[str]:
    """A syscall group's calls, its nested groups expanded, as this systemd lists them."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, check=True)
    names: set[str] = set()
    for line in out.stdout.splitlines()[1:]:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        names |= syscalls(entry) if entry.startswith("@") else {entry}
    return names


def test_the_syscall_filter_lets_the_daemon_load_and_refuses_with_eperm() -> None:
    """The unit's filter read as systemd reads it (the first line's kind sets the default, later lines add to or take
    from the set): NumPy's OpenBLAS calls mbind as it loads, one of @resources, which the unit filtered out with no
    SystemCallErrorNumber, so every start ended in SIGSYS before a line was printed (a new user's trial)."""
    lines = [line.split("=", 1)[1].split() for line in UNIT.read_text().splitlines()
             if line.startswith("SystemCallFilter=")]
    assert lines and lines[0][0] != "~"  # an allow list: what it leaves out is refused
    allowed: set[str] = set()
    for entries in lines:
        deny = entries[0].startswith("~")
        names: set[str] = set()
        for entry in [entries[0].lstrip("~"), *entries[1:]]:
            names |= syscalls(entry) if entry.startswith("@") else {entry}
        allowed = allowed - names if deny else allowed | names
    assert "mbind" in allowed and {"setrlimit", "reboot", "init_module"}.isdisjoint(allowed)
    assert "SystemCallErrorNumber=EPERM" in UNIT.read_text().splitlines()
    assert not any(line.startswith("ProcSubset=") for line in UNIT.read_text().splitlines())  # /proc/driver/nvidia
