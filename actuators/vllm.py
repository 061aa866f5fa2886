"""Batch backend `vllm`: change a service's `--max-num-seqs` by restarting its vLLM servers, one replica at a
time, each counted done only once its `/health` answers 200.

Two ways to run a server, behind `ServerRunner`:
- `ChildRunner`: the daemon supervises the servers as child processes (argv lists, never a shell);
- `SystemdRunner`: each replica is a systemd unit whose ExecStart reads `${WATTSCALE_MAX_NUM_SEQS}`; the
  new value goes into a drop-in file (written atomically), then `systemctl daemon-reload` and `restart`.
A replica that does not come back healthy is put back at its old value, and so are those already changed,
one at a time; the change then fails permanently. A bad value never takes a whole service down. Rollouts
run in the background: `set_max_batch` returns at once, and a failure is raised on the next change.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from actuators.base import Action, ActuatorError, BatchInForce, PermanentActuatorError, TransientActuatorError

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

    def close(self) -> None: ...


def with_max_num_seqs(argv: tuple[str, ...], n: int) -> list[str]:
    """argv with any --max-num-seqs (either spelling) replaced by n."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--max-num-seqs":
            skip = True
        elif not arg.startswith("--max-num-seqs="):
            out.append(arg)
    return [*out, "--max-num-seqs", str(n)]


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
                raise PermanentActuatorError(f"{replica.name}: cannot start {replica.argv[:1]}: {exc}") from exc
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

    def close(self) -> None:
        with self._lock:
            self._closed = True
            names = list(self.procs)
        self._stop_all(names)


class SystemdRunner:
    """Drop-in `<dropin_dir>/<unit>.d/50-wattscale.conf` setting WATTSCALE_MAX_NUM_SEQS, then systemctl."""

    supervises = False  # systemd runs the units; wattscale only changes them

    def __init__(self, dropin_dir: Path, systemctl: tuple[str, ...] = ("systemctl",), timeout_s: float = 60.0) -> None:
        self.dropin_dir, self.systemctl, self.timeout_s = dropin_dir, systemctl, timeout_s

    def restart(self, replica: Replica, max_num_seqs: int) -> None:
        self._write_dropin(replica, max_num_seqs)
        for args in (("daemon-reload",), ("restart", replica.name)):
            try:
                done = subprocess.run([*self.systemctl, *args], capture_output=True, timeout=self.timeout_s)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise TransientActuatorError(f"{replica.name}: systemctl {args[0]}: {exc}", 30.0) from exc
            if done.returncode != 0:
                raise PermanentActuatorError(f"{replica.name}: systemctl {' '.join(args)} failed: "
                                             f"{done.stderr.decode(errors='replace').strip()[:200]}")

    def _write_dropin(self, replica: Replica, max_num_seqs: int) -> None:
        """The drop-in, written whole or not at all (a failed write leaves no temporary file behind)."""
        folder = self.dropin_dir / f"{replica.name}.d"
        text = f"# written by wattscale\n[Service]\nEnvironment=WATTSCALE_MAX_NUM_SEQS={max_num_seqs}\n"
        tmp: str | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".wattscale-")
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, folder / "50-wattscale.conf")
        except OSError as exc:  # permissions, a read-only or full disk: the operator must act
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise PermanentActuatorError(f"{replica.name}: cannot write its drop-in in {folder}: "
                                         f"{exc.strerror or exc}") from exc

    def exited(self, name: str) -> int | None:
        return None  # systemd restarts or reports its units; /health says whether one serves

    def close(self) -> None:
        pass


class VllmBatchSizer:
    """Rolls changes out in a background thread per service, so a slow restart never holds up the control
    loops (the power governor keeps running); a failed rollout is raised on the service's next change."""

    name = "vllm"

    def __init__(self, runner: ServerRunner, replicas: dict[str, tuple[Replica, ...]], initial: dict[str, int],
                 probe: Callable[[str, float], bool], health_timeout_s: float = 300.0, poll_s: float = 1.0) -> None:
        """`probe(url, timeout_s)`: whether a server's /health answers 200 within the time (the daemon's reads the
        whole answer within it: controller.http_fetch.healthy_within)."""
        self.runner, self.replicas = runner, replicas
        self.current = dict(initial)
        self.health_timeout_s, self.poll_s, self.probe = health_timeout_s, poll_s, probe
        self.actions: list[Action] = []
        self._rollouts: dict[str, threading.Thread] = {}
        self._targets: dict[str, int] = {}
        self._failures: dict[str, ActuatorError] = {}
        self._closing = threading.Event()

    def start(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """Bring every replica up at its initial value when the runner supervises the servers; `stopping` (polled
        while a server comes up, which takes minutes) says the daemon was asked to stop: it returns at once, and
        the daemon's exit stops what started."""
        if not self.runner.supervises:
            return
        for service, reps in self.replicas.items():
            for r in reps:
                self.runner.restart(r, self.current[service])
                if not self._wait_healthy(r, stopping):
                    if stopping():
                        return
                    raise TransientActuatorError(f"{service}: {r.name} {self._unhealthy(r)}", 30.0)

    def _wait_healthy(self, replica: Replica, stopping: Callable[[], bool] = lambda: False) -> bool:
        """Whether its /health answers within the timeout; False at once where its server has exited (a command
        that fails as it starts waited out the whole timeout), or the sizer closes or `stopping` says so."""
        deadline = time.monotonic() + self.health_timeout_s
        while time.monotonic() < deadline and not self._closing.is_set() and not stopping():
            try:
                if self.probe(replica.health_url, min(5.0, self.poll_s * 5)):
                    return True
            except Exception as exc:  # a probe's own failure (a URL it cannot read) is no answer: not healthy
                log.debug("%s: health probe failed: %r", replica.name, exc)
            if self.runner.exited(replica.name) is not None:
                return False
            self._closing.wait(self.poll_s)
        return False

    def _unhealthy(self, replica: Replica) -> str:
        """Why `_wait_healthy` gave up on a replica, as a sentence's predicate."""
        code = self.runner.exited(replica.name)
        if code is not None and code < 0:
            return f"was killed by {signal.Signals(-code).name} before its /health answered"
        if code is not None:
            return f"exited with status {code} before its /health answered"
        return f"did not become healthy within {self.health_timeout_s:.0f} s"

    def get_max_batch(self, service: str) -> BatchInForce:
        """The value every replica runs (a rollout's value only once all are back healthy; a rolled-back one
        never), and the value in flight while a rollout runs."""
        if service not in self.replicas:
            raise PermanentActuatorError(f"{service}: no vLLM servers configured")
        running = self._rollouts.get(service)
        return BatchInForce(self.current[service],
                            self._targets.get(service) if running is not None and running.is_alive() else None)

    def set_max_batch(self, service: str, max_num_seqs: int) -> None:
        if service not in self.replicas:
            raise PermanentActuatorError(f"{service}: no vLLM servers configured")
        if max_num_seqs < 1:
            raise PermanentActuatorError(f"{service}: max_num_seqs must be >= 1, got {max_num_seqs}")
        running = self._rollouts.get(service)
        if running is not None and running.is_alive():
            raise TransientActuatorError(f"{service}: a restart is still rolling out", self.poll_s * 10)
        failure = self._failures.pop(service, None)
        if failure is not None:
            raise failure
        thread = threading.Thread(target=self._rollout, args=(service, max_num_seqs), daemon=True,
                                  name=f"vllm-rollout-{service}")
        self._rollouts[service] = thread
        self._targets[service] = max_num_seqs
        thread.start()

    def wait(self, timeout_s: float | None = None) -> None:
        """Until every rollout in flight has finished (tests, and callers that must know)."""
        for thread in list(self._rollouts.values()):
            thread.join(timeout_s)

    def close(self) -> None:
        """Stop rolling (no new restarts) and stop the servers the runner owns: the runner first, so that a rollout
        in flight starts (and puts back) nothing while its servers drain."""
        self._closing.set()
        self.runner.close()
        self.wait(10.0)

    def _rollout(self, service: str, max_num_seqs: int) -> None:
        """A rollout's thread: whatever fails is logged and raised on the service's next change, never lost with
        the thread."""
        try:
            self._roll(service, max_num_seqs)
        except ActuatorError as exc:
            log.warning("%s", exc)
            self._failures[service] = exc
        except Exception as exc:  # a runner's bug must not end the thread unrecorded
            log.error("%s: the rollout to --max-num-seqs %d failed: %r", service, max_num_seqs, exc)
            self._failures[service] = PermanentActuatorError(f"{service}: the rollout to --max-num-seqs "
                                                             f"{max_num_seqs} failed: {exc!r}")

    def _roll(self, service: str, max_num_seqs: int) -> None:
        old = self.current[service]
        changed: list[Replica] = []
        for r in self.replicas[service]:  # one at a time: the others keep serving
            if self._closing.is_set():
                return
            changed.append(r)
            try:
                self.runner.restart(r, max_num_seqs)
            except Exception as exc:  # an actuator error or a runner's bug: the replicas changed go back, never a
                why = str(exc) if isinstance(exc, ActuatorError) else repr(exc)  # service half at each value
                retry_s = exc.delay_s if isinstance(exc, TransientActuatorError) else None
            else:
                retry_s = None
                if self._wait_healthy(r):
                    log.info("%s: %s restarted with --max-num-seqs %d", service, r.name, max_num_seqs)
                    continue
                why = f"{r.name} {self._unhealthy(r)} with --max-num-seqs {max_num_seqs}"
            unhealthy = self._put_back(changed, old)
            message = f"{service}: {why}; rolled back to {old}" + (
                f", but {', '.join(unhealthy)} is not healthy" if unhealthy else "")
            # a restart that may work later (systemctl timed out) is tried again after its delay; the rest wait for
            # the service's config to change
            raise PermanentActuatorError(message) if retry_s is None else TransientActuatorError(message, retry_s)
        self.current[service] = max_num_seqs
        self.actions.append(Action("max_num_seqs", service, max_num_seqs))

    def _put_back(self, changed: list[Replica], old: int) -> list[str]:
        """Restart the replicas changed so far at the old value, the last first; the names of those that do not
        come back healthy (each is tried, whatever another does)."""
        unhealthy = []
        for back in reversed(changed):
            try:
                self.runner.restart(back, old)
            except Exception as exc:
                log.warning("%s: putting it back at %d failed: %r", back.name, old, exc)
                unhealthy.append(back.name)
                continue
            if not self._wait_healthy(back):
                unhealthy.append(back.name)
        return unhealthy
