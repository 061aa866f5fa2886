"""The decision log's file (controller/decision_log.py): each line whole JSON, whatever the disk did."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from controller.decision_log import DecisionLog, gpus, log_decision
from controller.plan import DrawReading

ROOT = Path(__file__).resolve().parents[1]


def test_a_decision_line_a_full_disk_cut_is_taken_back(tmp_path: Path) -> None:
    """A full disk left part of a line in decisions.jsonl, and the first line written once there was room was
    joined to it: neither was JSON. Here the file may grow to 900 bytes (RLIMIT_FSIZE: the write past it is cut
    short and then fails, as on a full disk); a file whose last line a crash tore is mended at the next write."""
    log = tmp_path / "decisions.jsonl"
    script = f"""
import resource
from pathlib import Path
from controller.decision_log import DecisionLog
path = Path({str(log)!r})
d = DecisionLog(path)
assert d.write({{"t": 1, "pad": "x" * 400}})
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (900, hard))
assert not d.write({{"t": 2, "pad": "x" * 800}})
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
assert d.write({{"t": 3}})
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["t"] for line in log.read_text().splitlines()] == [1, 3]
    with log.open("a") as f:
        f.write('{"t": 4, "torn')  # a crash mid-write
    assert DecisionLog(log).write({"t": 5})
    lines = log.read_text().splitlines()
    assert lines[-2] == '{"t": 4, "torn' and json.loads(lines[-1])["t"] == 5


def test_a_link_in_the_logs_place_is_not_written_through(tmp_path: Path) -> None:
    """decisions.jsonl linked to another file had the daemon's lines appended to that file, nothing said: the write
    is refused (said once, counted, as a full disk's) and the file the link names is left as it was."""
    outside = tmp_path / "precious.txt"
    outside.write_text("precious line\n")
    log = tmp_path / "decisions.jsonl"
    log.symlink_to(outside)
    assert not DecisionLog(log).write({"t": 1})
    assert outside.read_text() == "precious line\n"


def test_a_cycles_gpu_readings_past_any_gpu_are_left_out_of_its_means() -> None:
    """Three readings of 1e308 W summed to inf, which the log writes as null, and `status` then refused the record
    the daemon wrote itself."""
    huge = DrawReading(1e308, 1e308, False)
    assert gpus([huge] * 3) is None and gpus([]) is None
    assert gpus([huge, DrawReading(300.0, 400.0, False), DrawReading(float("nan"), 400.0, False),
                 DrawReading(500.0, 600.0, True)]) == {"draw_w": 400.0, "limit_w": 500.0}


def test_a_cycles_capped_share_is_the_mean_of_the_readings_that_have_one() -> None:
    """A source without the counter gives none (no key); a reading past [0, 1] is no share of a tick."""
    assert "capped_share" not in (gpus([DrawReading(300.0, 400.0, False)]) or {})
    shares = [0.1, 0.3, None, float("nan"), 7.0]
    assert gpus([DrawReading(300.0, 400.0, False, None, c) for c in shares]) == {
        "draw_w": 300.0, "limit_w": 400.0, "capped_share": 0.2}


def test_a_change_said_the_cycle_before_is_said_again_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """A plan the gate holds (or an actuator's lasting failure) is the same change every cycle: said once at INFO
    while it repeats, and again once it differs."""
    held = ["chat: replicas 2 -> 4 [gate held: replicas 2 not 4]"]
    with caplog.at_level(logging.DEBUG, logger="wattscale"):
        before: list[str] = []
        for changed in (held, held, held, ["chat: replicas 2 -> 3"], held):
            log_decision(changed, 2000.0, 4000.0, 0.01, before)
            before = changed
    levels = [r.levelno for r in caplog.records if r.getMessage().startswith("decision:")]
    assert levels == [logging.INFO, logging.DEBUG, logging.DEBUG, logging.INFO, logging.INFO]
