"""The daemon's own files, as it reads and writes them: regular files only (a FIFO or a device would block a loop
for ever), written atomically, JSON read within a size, and a bad one set aside for a look, never read again.
Shared by the tuner's state, the SLO margins, the decision log, the budget sources' files and the node agent's."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

_save_failures: dict[Path, str] = {}
"""The last save error per path, so that a dir that stays unwritable is one warning, not one per cycle."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_plain(path: str | os.PathLike[str], mode: str = "rb", encoding: str | None = None,
               newline: str | None = None) -> IO[Any]:
    """`open` for the daemon's own files that refuses a FIFO (reading one, or appending to one, blocks until
    another process opens its end: a loop would wait for ever), to read anything but a regular file (a device reads
    without end), and to append, a link or anything but a regular file (the decision log was appended through a
    link to any file the daemon's user may write): OSError naming the path."""
    flags = os.O_RDONLY if mode in ("r", "rb") else os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)  # a FIFO opens without waiting, or fails
    try:
        kind = os.fstat(fd).st_mode
        if not stat.S_ISREG(kind):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode, encoding=encoding, newline=newline)
    except BaseException:
        os.close(fd)
        raise


def write_json(path: Path, doc: object, what: str, lost: str) -> bool:
    """Write a state document atomically; False, with one warning per new error saying what is `lost`, where not."""
    try:
        atomic_write_text(path, json.dumps(doc))  # compact: with an indent json falls back to its Python encoder
    except OSError as exc:
        message = f"{path}: cannot save {what} ({exc.strerror or exc}); running on, {lost}"
        if _save_failures.get(path) != message:
            log.warning("%s", message)
        _save_failures[path] = message
        return False
    _save_failures.pop(path, None)
    return True


def read_json(path: Path, max_bytes: int, what: str, then: str) -> tuple[Any, str | None]:
    """A state document and None, or None and the warning to log (none: no file): one too large, not JSON, or that
    cannot be read (its permissions, a link to nothing, not a regular file) is set aside, since the next save would
    replace it unsaid (a tuner state left to an old owner's mode 000 was overwritten by the priors' first fit); the
    daemon goes on as `then` says."""
    if not os.path.lexists(path):
        return None, None
    try:
        with open_plain(path, "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            return None, set_aside(path, f"{what} larger than {max_bytes >> 20} MiB, left unread", then)
        return json.loads(data.decode("utf-8")), None
    except OSError as exc:
        why = "a link to nothing" if path.is_symlink() and not path.exists() else exc.strerror or str(exc)
        return None, set_aside(path, f"cannot read {what} ({why})", then)
    except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors
        return None, set_aside(path, f"unreadable {what} ({str(exc)[:80]})", then)


MAX_ASIDE_COPIES = 10
"""Bad copies of one state file kept for a look (`<name>.bad`, `.bad.1` .. `.bad.9`): a second set aside had
replaced the first unsaid; past them the last is replaced."""


def set_aside(path: Path, problem: str, then: str = "starting from priors") -> str:
    """Rename a bad state file out of the way (kept for a look, never read again) to the first of its bad copies'
    names not taken; the warning to log, and `then`."""
    names = [path.with_name(f"{path.name}.bad" + (f".{k}" if k else "")) for k in range(MAX_ASIDE_COPIES)]
    aside = next((n for n in names if not os.path.lexists(n)), names[-1])
    try:
        os.replace(path, aside)
    except OSError as exc:
        return f"{path}: {problem}; could not set it aside ({exc.strerror}); {then}"
    return f"{path}: {problem}; set aside as {aside.name}, {then}"
