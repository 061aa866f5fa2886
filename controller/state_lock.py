"""One daemon to a state folder. Two `wattscale run` on one `daemon.state_dir` overwrote each other's tuner state
and decision log (each read the other's fit as another prior's and started over), and nothing said so but
`status`. `run` holds an exclusive lock on the folder itself for its whole life (flock on its descriptor: the
kernel drops it when the process ends, however it ends, so a killed daemon leaves nothing to clean up; a FIFO, a link
or a folder put where a lock file was had hung the start or turned the lock off); a second finds it held and stops
with one line naming the first's pid, which the holder writes into `<state_dir>/daemon.lock` where that is a plain
file."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from controller.config_loader import ConfigError

LOCK_FILE = "daemon.lock"
LOCK_WAIT_S = 1.0
"""How long `run` tries for a lock held by someone else before it stops: a probe's moment, not a daemon's life."""
log = logging.getLogger("wattscale.daemon")


@contextlib.contextmanager
def held(folder: Path) -> Iterator[None]:
    """The folder's lock, held by this process inside the block. Where the folder cannot hold one (a state dir
    that cannot be written, another user's lock file, a file system without flock) the block runs without it, and
    says so: the power governor is not held back for want of a lock."""
    fd = _take(folder)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # the lock goes with it (a later `run` in this process takes it again)


def _take(folder: Path) -> int | None:
    """The folder's descriptor, locked, with this pid in its lock file; None (said once) where no lock can be had."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        _unlocked(folder, exc)
        return None
    try:
        _lock_within(fd, LOCK_WAIT_S)
    except BlockingIOError:
        error = _in_use(folder)
        os.close(fd)
        raise error from None
    except OSError as exc:
        os.close(fd)
        _unlocked(folder, exc)
        return None
    _write_pid(folder)
    return fd


def _pid_file(folder: Path, flags: int) -> int | None:
    """The lock file's descriptor where it is a plain file (opened without following a link or waiting on a FIFO),
    else None."""
    try:
        fd = os.open(folder / LOCK_FILE, flags | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def _write_pid(folder: Path) -> None:
    """This pid into the lock file, for a second run's message only: a full disk, or something else in its place,
    does not stop the daemon (said once)."""
    fd = _pid_file(folder, os.O_RDWR | os.O_CREAT)
    if fd is None:
        log.warning("daemon.state_dir: %s is not a plain file this process may write: a second daemon is refused "
                    "all the same, without this one's pid", folder / LOCK_FILE)
        return
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)


def _lock_within(fd: int, wait_s: float) -> None:
    """The exclusive lock, tried again for up to `wait_s` (BlockingIOError past it): a check-config's probe holds it
    for a moment, and a `run` started in that moment was refused as if a daemon held the folder."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def check_free(folder: Path) -> None:
    """Raise the ConfigError `run` would where another daemon holds the folder's lock (check-config's probe: it takes
    the lock for a moment where it is free, and creates nothing)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:  # no folder yet (nothing ran there), or one `run` cannot open either: it says so itself
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(folder) from None
    except OSError:
        return
    finally:
        os.close(fd)  # and the lock with it, where it was taken


def _in_use(folder: Path) -> ConfigError:
    """The refusal, naming the pid the holder wrote into the lock file (unknown where there is none to read)."""
    fd = _pid_file(folder, os.O_RDONLY)
    holder = ""
    if fd is not None:
        with contextlib.suppress(OSError):
            holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
    shown = holder if holder.isdigit() else "unknown"  # what the file holds is shown only as a pid
    shown_dir = os.path.normpath(folder)  # as written, config/../var/state read oddly
    return ConfigError("daemon.state_dir", f"{shown_dir} is in use by another wattscale run (pid {shown}); give each "
                       "daemon its own state_dir")


def _unlocked(folder: Path, exc: OSError) -> None:
    log.warning("daemon.state_dir: %s cannot be locked (%s): a second daemon on it would go unnoticed",
                folder / LOCK_FILE, exc.strerror or exc)
