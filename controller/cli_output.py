"""How the commands write their output: standard output for what they print, nothing of a solver's own."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import IO

MAX_NATIVE_BYTES = 65536
"""The most of the solver's own output said (the rest of it dropped)."""


@contextlib.contextmanager
def native_output_to_stderr() -> Iterator[None]:
    """What native code (HiGHS) writes itself to descriptor 1 goes to standard error as one line at the end, while
    Python's prints still reach standard output: a command's JSON stays whole whatever its solver prints, and a debug
    print of HiGHS's without a newline no longer runs into the command's text. A name of non-UTF-8 bytes prints as
    those bytes (escaped where the output is not UTF-8); a closed standard output prints nothing."""
    if sys.stdout is not None:
        sys.stdout.flush()
    try:
        on_fd_1 = sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # captured in memory (a test), or closed: prints are not on it
        on_fd_1 = False
    saved_out = sys.stdout
    try:  # at 3 or above: with standard error closed, a plain dup took descriptor 2, and stderr's writes with it
        saved_fd: int | None = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    except OSError:  # closed: a file opened now would take descriptor 1, and native output with it
        saved_fd = None
    native: IO[bytes] | None = None
    try:
        native = tempfile.TemporaryFile()  # noqa: SIM115  (it lives across the yield: closed in the finally)
        os.dup2(native.fileno(), 1)
    except OSError:  # nowhere to keep it: nowhere at all rather than into the JSON
        if native is not None:
            native.close()
        native = None
        os.dup2(null := os.open(os.devnull, os.O_WRONLY), 1)
        os.close(null)
    if on_fd_1 and saved_fd is not None:
        encoding = saved_out.encoding or "utf-8"
        own = "surrogateescape" if encoding.lower().replace("-", "") == "utf8" else "backslashreplace"
        sys.stdout = os.fdopen(fcntl.fcntl(saved_fd, fcntl.F_DUPFD_CLOEXEC, 3), "w", encoding=encoding,
                               errors=own)  # a name's own bytes where UTF-8 can
    try:
        yield
    finally:
        if sys.stdout is not None:
            sys.stdout.flush()
        if on_fd_1 and saved_fd is not None:
            sys.stdout.close()
            sys.stdout = saved_out
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)
        if native is not None:
            native.seek(0)
            said = _once_each(native.read(MAX_NATIVE_BYTES).decode(errors="replace"))
            native.close()
            if said and sys.stderr is not None:  # (print to None would write it to standard output)
                with contextlib.suppress(OSError, ValueError):
                    print(f"wattscale: native code (the HiGHS solver) printed, not an error of this command: "
                          f"{said}", file=sys.stderr)


def _once_each(text: str) -> str:
    """Native output on one line, each line of it once with its count (HiGHS printed one debug line 12 times over)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if words := " ".join(line.split()):
            counts[words] = counts.get(words, 0) + 1
    return " ".join(line if n == 1 else f"{line} ({n} times)" for line, n in counts.items())


def drop_output() -> None:
    """What is left unwritten goes to /dev/null (the interpreter's flush at exit would fail again)."""
    with contextlib.suppress(OSError, ValueError):  # (a test's captured stdout has no descriptor)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
