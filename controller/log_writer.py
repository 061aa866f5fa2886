"""Logging that never holds up a loop, for the long-running commands (run, operator, agent).

A log call only puts its record on a bounded queue; one writer thread formats it and writes standard error's
descriptor itself. A reader that stops reading (journald hung, a paused pipe, a terminal after Ctrl-S) then
stalls that thread alone: before, the slow loop stopped inside a log call, the budget thread waited for the
handler's lock, and SIGTERM waited for the pipe. Past the queue's bound records are dropped and counted
(`take_dropped`); the writer holds no lock of Python's own stream, so the process still exits while it waits.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import threading
import time
from collections.abc import Sequence

QUEUE_RECORDS = 10_000
"""Records held while the writer waits (a few MB at most)."""
EXIT_WAIT_S = 1.0
"""How long the exit waits for the writer to write what is queued."""

_dropped = 0
_lock = threading.Lock()


def take_dropped() -> int:
    """Records dropped since the last call (the queue was full: the reader of standard error stopped)."""
    global _dropped
    with _lock:
        n, _dropped = _dropped, 0
    return n


class _Enqueue(logging.handlers.QueueHandler):
    """Puts a record on the queue without waiting; a full queue drops it."""

    def enqueue(self, record: logging.LogRecord) -> None:
        global _dropped
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with _lock:
                _dropped += 1


def _write(fd: int, text: str) -> None:
    """`text` written whole to `fd`, errors dropped (a closed standard error must not raise into logging, whose
    report of it would go to the same closed stream)."""
    data = text.encode("utf-8", "backslashreplace")
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def _drain(records: queue.Queue[logging.LogRecord], formatter: logging.Formatter, fd: int) -> None:
    """The writer: no logging.Handler, whose lock logging's exit takes (a writer waiting on the reader held it)."""
    while True:
        record = records.get()
        try:
            _write(fd, formatter.format(record) + "\n")
        finally:
            records.task_done()


_records: queue.Queue[logging.LogRecord] | None = None
"""The queue `install` made (None before)."""


def flush(timeout_s: float) -> None:
    """Wait, `timeout_s` at most, for the writer to write what is queued: before a line printed to standard error
    directly (an error's), which would otherwise come before the log lines logged before it."""
    if _records is None:
        return
    deadline = time.monotonic() + timeout_s
    done = _records.all_tasks_done
    # a signal that landed just as a record was queued can leave the queue's lock held (a `with` does not cover its
    # own __enter__): the exit's flush then goes without the last lines. Only the exit's: a log call after such a
    # signal would still wait, so no handler that raises may log (launch's prints; the daemon's only record)
    if not done.acquire(timeout=min(max(timeout_s, 0.0), threading.TIMEOUT_MAX)):
        return
    try:
        while _records.unfinished_tasks and (left := deadline - time.monotonic()) > 0:
            done.wait(left)
    finally:
        done.release()


def install(level: str | int, fmt: str, fd: int = 2, filters: Sequence[logging.Filter] = ()) -> None:
    """Route the root logger through the queue to `fd` at `level`; at exit the writer has a second to finish
    (a reader that stopped reading keeps what is queued, not the exit). Where the root logger has handlers already
    (a test's capture) nothing changes, as with logging.basicConfig, `filters` included (a test's handlers are the
    session's). The filters see each record before it is formatted, as it is queued."""
    global _records
    root = logging.getLogger()
    if root.handlers:
        return
    root.setLevel(level)
    _records = queue.Queue(QUEUE_RECORDS)
    handler = _Enqueue(_records)
    for f in filters:
        handler.addFilter(f)
    root.addHandler(handler)
    threading.Thread(target=_drain, args=(_records, logging.Formatter(fmt), fd), name="wattscale-log",
                     daemon=True).start()
    atexit.register(flush, EXIT_WAIT_S)  # before logging's own exit (registered first, run last)
