"""The long-running commands' logging (controller/log_writer.py): a reader of standard error that stops reading
holds up no loop and no exit."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller import log_writer

ROOT = Path(__file__).resolve().parents[1]


def test_a_stalled_reader_of_standard_error_holds_up_no_loop_and_no_exit(sim_config: Callable[..., Path],
                                                                         tmp_path: Path) -> None:
    """journald hung, a paused `| less`: with standard error a pipe nobody reads, the slow loop stopped inside a
    log call (no plan, no decision line), the budget thread waited for the handler's lock, and the daemon was
    still running long after SIGTERM."""
    path = sim_config({'log_level = "INFO"': 'log_level = "DEBUG"', "slow_interval_s = 15.0": "slow_interval_s = 1.0",
                       "[optimizer]": "[optimizer]\ntime_limit_s = 0.5"})
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # full after a few DEBUG decision records
    started = time.monotonic()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "run", "--config", str(path), "--duration",
                                 "8"], stdout=subprocess.DEVNULL, stderr=write_end, cwd=ROOT)
        os.close(write_end)
        assert proc.wait(timeout=40) == 0
    finally:
        os.close(read_end)
    assert time.monotonic() - started < 30
    lines = (tmp_path / "state" / "decisions.jsonl").read_text().splitlines()
    assert len(lines) >= 4 and json.loads(lines[-1])["t"] >= 5.0, len(lines)


def test_a_full_queue_drops_and_counts_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its bound the queue drops records rather than wait for the writer, and says how many."""
    import queue

    handler = log_writer._Enqueue(queue.Queue(2))
    log_writer.take_dropped()
    for k in range(5):
        handler.handle(logging.LogRecord("x", logging.INFO, __file__, 1, "m %d", (k,), None))
    assert log_writer.take_dropped() == 3 and log_writer.take_dropped() == 0


def test_flush_puts_what_was_logged_before_a_line_printed_after() -> None:
    """An error printed straight to standard error (`wattscale: ...`) came before the log lines logged before it,
    and could land on the same line as one of them."""
    script = """
import logging, sys
from controller import log_writer
log_writer.install("INFO", "%(message)s")
for k in range(200):
    logging.getLogger("x").warning("line %d", k)
log_writer.flush(5.0)
print("wattscale: the error", file=sys.stderr)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.stderr.splitlines() == [f"line {k}" for k in range(200)] + ["wattscale: the error"]


def test_an_exit_waits_no_longer_for_a_queue_whose_lock_was_left_held() -> None:
    """A SIGTERM that lands just as a record is queued can leave the queue's lock held (a `with` does not cover
    its own __enter__): the exit's flush waited on that lock for ever, and the stopped daemon never exited."""
    script = """
import logging, sys, time
from controller import log_writer
log_writer.install("INFO", "%(message)s")
logging.getLogger("x").warning("before")
log_writer.flush(5.0)
log_writer._records.mutex.acquire()  # as an interrupted put leaves it
started = time.monotonic()
log_writer.flush(0.5)
print(f"waited {time.monotonic() - started:.1f}", file=sys.stderr)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 0 and done.stderr.splitlines()[:2] == ["before", "waited 0.5"], done.stderr
