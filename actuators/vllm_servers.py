"""How a vLLM server is run, behind `ServerRunner`: as a child process the daemon supervises (`ChildRunner`: argv
lists, never a shell), or as a systemd unit that starts through `wattscale vllm-exec` (`SystemdRunner`: the new
value goes into the unit's batch file, written atomically, then `systemctl restart`)."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from actuators.base import PermanentActuatorError, TransientActuatorError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Replica:
    name: str
    """Child: a label; systemd: the unit name (e.g. vllm-chat@0.service)."""
    health_url: str
    """The server's /health URL."""
    argv: tuple[str, ...] = ()
    """Child: the server's command line without --max-num-seqs."""


class ServerRunner(Protocol):
    supervises: bool
    """The daemon owns the servers: it brings them up at start and stops them on exit."""

    def restart(self, replica: Replica, max_num_seqs: int) -> None: ...

    def exited(self, name: str) -> int | None:
        """The exit status of a replica's server that has ended (None: running, or not the runner's to see)."""

    def written(self, replica: Replica) -> int | None:
        """The max batch a replica's server starts with, where the runner keeps it outside the daemon (None: it
        does not, or none was written): what a restarted daemon finds in force."""

    def close(self) -> None: ...


MAX_BATCH = 4096
"""The largest `--max-num-seqs` a config, a batch file or a tune input may name."""
MAX_FILE_BYTES = 32
"""The most of a batch file read: a number is a few bytes, and a file that is not one is not read whole."""


def batch_from(path: Path) -> tuple[int | None, str]:
    """The max batch the file holds, or None and why not ("" where none was written yet). A plain file only, not
    followed through a link (one to a file the unit's user may read, a token, would be read as if written), opened
    without waiting (a FIFO held the start for good); what it holds is not repeated (it may be such a file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"{path}: {exc.strerror or exc}"
    try:
        raw = os.read(fd, MAX_FILE_BYTES + 1) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError as exc:
        return None, f"{path}: {exc.strerror or exc}"
    finally:
        os.close(fd)
    if raw is None:
        return None, f"{path}: not a plain file"
    text = raw.decode("ascii", errors="replace").strip()
    if len(raw) > MAX_FILE_BYTES or not (text.isdecimal() and 1 <= int(text) <= MAX_BATCH):
        return None, f"{path}: not a max batch in 1..{MAX_BATCH} ({len(raw)} bytes)"
    return int(text), ""


def with_max_num_seqs(argv: tuple[str, ...], n: int | None) -> list[str]:
    """argv with any --max-num-seqs (either spelling) replaced by n (None: removed, the server's own default)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--max-num-seqs":
            skip = True
        elif not arg.startswith("--max-num-seqs="):
            out.append(arg)
    return out if n is None else [*out, "--max-num-seqs", str(n)]


MAX_SHUTDOWN_S = 3600.0
"""Longest drain waited for on a server's stop, whatever its argv says (an `inf` would hold the daemon's exit)."""


def shutdown_timeout_s(argv: tuple[str, ...]) -> float:
    """vLLM's `--shutdown-timeout` in argv (either spelling): how long it drains on SIGTERM; 0 where absent or
    not a number, at most MAX_SHUTDOWN_S."""
    for k, arg in enumerate(argv):
        if arg.startswith("--shutdown-timeout="):
            value = arg.split("=", 1)[1]
        elif arg == "--shutdown-timeout" and k + 1 < len(argv):
            value = argv[k + 1]
        else:
            continue
        try:
            seconds = float(value)
        except ValueError:
            return 0.0
        return min(seconds, MAX_SHUTDOWN_S) if seconds > 0 else 0.0  # NaN is not > 0
    return 0.0


def startable(path: Path) -> bool:
    """Whether exec(2) starts `path`: a regular file, an ELF binary or a script with a #! line (an unreadable one is
    exec's to say): what `ChildRunner` can start. A FIFO is never opened: the open waited for a writer, and
    check-config with it."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return False
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return True
    return head.startswith((b"#!", b"\x7fELF"))


class ChildRunner:
    """Starts, stops and restarts servers as children of the daemon. A server started with vLLM's
    `--shutdown-timeout` is given that long to drain what it holds, beyond `stop_timeout_s`, before it is killed."""

    supervises = True

    def __init__(self, stop_timeout_s: float = 10.0) -> None:
        self.stop_timeout_s = stop_timeout_s
        self.procs: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
        """Per replica, its process and how long it is given to stop."""
        self._lock = threading.Lock()
        self._closed = False
        """Closed: no server starts again (a rollout thread still in a drain's stop would leave one running)."""

    def restart(self, replica: Replica, max_num_seqs: int) -> None:
        self._stop(replica.name)
        with self._lock:
            if self._closed:
                raise PermanentActuatorError(f"{replica.name}: not started again: the daemon is stopping")
            try:
                proc = subprocess.Popen(with_max_num_seqs(replica.argv, max_num_seqs), stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            except OSError as exc:
                raise PermanentActuatorError(f"{replica.name}: cannot start {replica.argv[0]!r}: "
                                             f"{exc.strerror or exc}") from exc
            self.procs[replica.name] = (proc, self.stop_timeout_s + shutdown_timeout_s(replica.argv))

    def exited(self, name: str) -> int | None:
        with self._lock:
            proc = self.procs.get(name, (None, 0.0))[0]
        return None if proc is None else proc.poll()

    def _stop(self, name: str) -> None:
        self._stop_all([name])

    def _stop_all(self, names: list[str]) -> None:
        """SIGTERM to each, then each waited for until its own time is up (together: a drain each, not one after
        another), then killed."""
        with self._lock:
            taken = [self.procs.pop(n, (None, 0.0)) for n in names]
        running = [(proc, time.monotonic() + wait_s) for proc, wait_s in taken
                   if proc is not None and proc.poll() is None]
        for proc, _ in running:
            proc.send_signal(signal.SIGTERM)
        for proc, until in running:
            try:
                proc.wait(max(0.0, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:  # stuck in the kernel: the others are still seen to
                    log.warning("vLLM server pid %d did not exit after SIGKILL", proc.pid)

    def written(self, replica: Replica) -> int | None:
        return None  # its children start from the daemon's own value

    def close(self) -> None:
        with self._lock:
            self._closed = True
            names = list(self.procs)
        self._stop_all(names)


UNIT_TYPES = frozenset({"service", "socket", "device", "mount", "automount", "swap", "target", "path", "timer",
                        "slice", "scope"})


def unit_file(name: str) -> str:
    """A unit's full name, as systemctl reads a name without a type suffix: a service (what `%n` gives in the unit's
    own ExecStart line, so the file the unit reads is the one written)."""
    return name if name.rpartition(".")[2] in UNIT_TYPES and "." in name else f"{name}.service"


class SystemdRunner:
    """`<batch_dir>/<unit>.service.batch` (`unit_file`) holding the max batch, then `systemctl restart`: the unit
    starts through `wattscale vllm-exec --batch-file <batch_dir>/%n.batch -- vllm ...` (controller/vllm_exec.py), so
    the daemon writes one number, nothing under /etc, and asks for no daemon-reload."""

    supervises = False  # systemd runs the units; wattscale only changes them

    def __init__(self, batch_dir: Path, systemctl: tuple[str, ...] = ("systemctl",), timeout_s: float = 60.0) -> None:
        self.batch_dir, self.systemctl, self.timeout_s = batch_dir, systemctl, timeout_s

    def restart(self, replica: Replica, max_num_seqs: int) -> None:
        self._write_batch(replica, max_num_seqs)
        try:
            done = subprocess.run([*self.systemctl, "restart", replica.name], capture_output=True,
                                  timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TransientActuatorError(f"{replica.name}: systemctl restart: {exc}", 30.0) from exc
        if done.returncode != 0:
            raise PermanentActuatorError(f"{replica.name}: systemctl restart {replica.name} failed: "
                                         f"{done.stderr.decode(errors='replace').strip()[:200]}")

    def _write_batch(self, replica: Replica, max_num_seqs: int) -> None:
        """The unit's file, written whole or not at all (a failed write leaves no temporary file), readable by the
        unit's own user, as the folders it makes are (the daemon's umask made them its own alone)."""
        folder, tmp = self.batch_dir, None
        try:
            missing = [p for p in (folder, *folder.parents) if not p.exists()]
            for made in reversed(missing):  # each one it makes, enterable by the units' users (the umask is 0077);
                made.mkdir(exist_ok=True)  # one an operator made keeps its mode
                os.chmod(made, 0o755)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".wattscale-")
            with os.fdopen(fd, "w") as f:
                f.write(f"{max_num_seqs}\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, folder / f"{unit_file(replica.name)}.batch")
        except OSError as exc:  # permissions, a read-only or full disk: the operator must act
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise PermanentActuatorError(f"{replica.name}: cannot write its max batch in {folder}: "
                                         f"{exc.strerror or exc}") from exc

    def exited(self, name: str) -> int | None:
        return None  # systemd restarts or reports its units; /health says whether one serves

    def written(self, replica: Replica) -> int | None:
        return batch_from(self.batch_dir / f"{unit_file(replica.name)}.batch")[0]

    def close(self) -> None:
        pass
