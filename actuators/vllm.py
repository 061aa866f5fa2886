"""Batch backend `vllm`: change a service's `--max-num-seqs` by restarting its vLLM servers, one replica at a
time, each counted done only once its `/health` answers 200. How a server runs (a child process, a systemd unit)
is its `ServerRunner`'s (actuators/vllm_servers.py).

A replica that does not come back healthy is put back at its old value, and so are those already changed,
one at a time; the change then fails permanently. A bad value never takes a whole service down. Rollouts
run in the background: `set_max_batch` returns at once, and a failure is raised on the next change.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

from actuators.base import Action, ActuatorError, BatchInForce, PermanentActuatorError, TransientActuatorError
from actuators.vllm_servers import Replica, ServerRunner

log = logging.getLogger(__name__)


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
        self._mixed: set[str] = set()
        """Services whose units start with different values (`_adopt`), until a rollout ends."""
        self._closing = threading.Event()

    def start(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """Bring every replica up at its initial value when the runner supervises the servers; `stopping` (polled
        while a server comes up, which takes minutes) says the daemon was asked to stop: it returns at once, and
        the daemon's exit stops what started."""
        if not self.runner.supervises:  # the units run on: what they start with is the batch files'
            self._adopt()
            return
        for service, reps in self.replicas.items():
            for r in reps:
                self.runner.restart(r, self.current[service])
                if not self._wait_healthy(r, stopping):
                    if stopping():
                        return
                    raise TransientActuatorError(f"{service}: {r.name} {self._unhealthy(r)}", 30.0)

    def _adopt(self) -> None:
        """Each service's max batch as its units were left (a restarted daemon had taken the config's initial value
        as in force: windows mislabelled, or every replica restarted for nothing); units that hold different values
        read as mixed, the least in force, until a rollout gives them one."""
        for service, reps in self.replicas.items():
            written = [self.runner.written(r) for r in reps]
            known = [w for w in written if w is not None]
            if known:
                self.current[service] = min(known)
            if known and len(set(written)) > 1:
                self._mixed.add(service)
                log.warning("%s: its units start with different max batches (%s): one value for all at the next "
                            "change", service, ", ".join("?" if w is None else str(w) for w in written))

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
                            self._targets.get(service) if running is not None and running.is_alive() else None,
                            service in self._mixed)

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
        self._mixed.discard(service)
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
