"""The daemon: the Controller's two loops in real time, each in its own thread; signals stop and reload it.

The fast loop (GPU samples and the governor) ticks on its period in a thread of its own, timed on the monotonic
clock (controller/ticker.py: a step of the wall clock moves no tick). The slow loop runs in a
worker thread of its own, woken on its period: it may block on the network for as long as its timeouts
allow, and the governor keeps ticking; a wake-up while it still runs is counted as an overrun. SIGTERM and
SIGINT stop within seconds whatever the slow loop is doing (its thread is not waited for past a moment);
SIGHUP reloads the config (a bad file, or a change that needs a restart, is refused by name, logged and
counted, and the running config kept). The systemd watchdog is pinged only while the fast loop ticks.
With simulated parts, the fast loop advances the plant with the clock.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from actuators import ActuatorError
from controller import log_writer
from controller.bounded_server import BoundedServer, serve_metrics
from controller.budget.assemble import combiner, resolve
from controller.budget.endpoint import serve_signals, signal_token
from controller.budget.settings import DemandResponseSettings
from controller.config_loader import ConfigError, unchecked
from controller.config_warnings import file_warnings
from controller.control import Controller
from controller.decision_log import DecisionLog
from controller.idle_floor import idle_w
from controller.own_metrics import OwnMetrics, process_registry
from controller.reload import changes, check_reload, in_running_order
from controller.sdnotify import Notifier
from controller.settings import Settings, load_settings
from controller.startup import RELOAD_ASKED, STOP_ASKED, Asked
from controller.telemetry.base import shortened
from controller.ticker import Ticker
from controller.wiring import build_parts
from tuner import Tuner, load_fitting_libraries

log = logging.getLogger("wattscale.daemon")
EXTEND_EVERY_S = 10.0
"""How often, while supervised vLLM servers start, systemd's start timeout is pushed on (by three times this)."""


class Daemon:
    def __init__(self, config_path: Path, settings: Settings, registry: CollectorRegistry | None = None,
                 kube: Any = None) -> None:
        """`kube`: the kubernetes backend's client where preflight built one (None: built here, as it names)."""
        self.config_path, self.settings = config_path, settings
        self.registry = registry or process_registry()
        self.metrics = OwnMetrics(self.registry)
        # sources report what they survive by themselves through the controller (built next, called later)
        self.parts = build_parts(settings, None, lambda kind, message: self.controller.error(kind, message), kube)
        self.tuner = Tuner(settings.state_path, queue_model=settings.optimizer.queue_model)
        p = self.parts
        self.controller = Controller(settings, p.gpus, p.vllm, p.power, p.batch, p.replicas, self.tuner, self.metrics,
                                     DecisionLog(settings.decision_log_path, config=config_path), p.clocks)
        self.budget = (None if settings.budget is None
                       else combiner(settings.budget, os.environ, base_dir=settings.base_dir,
                                     failed=self.metrics.errors.labels("budget_source").inc))
        """The budget sources (`[power.budget]`), stepped in a thread of their own: a hanging API delays no loop."""
        self.notifier = Notifier()
        self.stop_event = threading.Event()
        self.budget_due = threading.Event()
        """Set by a demand-response endpoint once it stored a signal: the budget is stepped then, not a tick later."""
        self.slow_due = threading.Event()
        self.slow_started = -math.inf
        """When the slow worker began its last cycle."""
        self.reload_planned = -math.inf
        """When a reload last asked for a cycle at once: the period's wake within half a period of it is skipped."""
        self.overrunning = False
        """Whether the slow loop has overrun its period since its last cycle began (said once a run)."""
        self.slow_running = False
        """Whether the slow worker is inside a cycle (a period that finds it so is an overrun)."""
        self.fast_failing = False
        """Whether the last fast tick failed (the first failure of a run is logged, each counted)."""
        self.refused: str | None = None
        """Why the last reload was refused, until one goes through (said in the unit's status)."""
        self.slow_failure: str | None = None
        """The last slow tick's failure (repr), None where it succeeded: the same again is counted, not logged."""
        self.budget_failure: str | None = None
        """The budget sources' last failure (repr), None where they stepped: the same again is counted, not logged."""
        self.t0 = time.monotonic()
        self.last_fast = self.t0
        """When a fast tick last ended (monotonic): the watchdog is pinged only while it is recent."""

    def now(self) -> float:
        """Controller time: wall seconds since start, scaled by the simulator's speed when simulated."""
        elapsed = time.monotonic() - self.t0
        return elapsed * self.settings.simulator.speed if self.parts.host is not None else elapsed

    def fast(self) -> None:
        now = self.now()
        try:
            if self.parts.host is not None:
                started = time.thread_time()
                with self.parts.plant_lock:
                    self.parts.host.advance_to(now)
                self.metrics.plant_cpu.inc(time.thread_time() - started)
            if self.controller.tick_fast(now):
                self.slow_due.set()  # caps at their floors over budget: plan fewer replicas now, not at the period
        except Exception as exc:  # a bug, not an input: a traceback every tick said nothing the first had not
            self.metrics.errors.labels("fast_tick").inc()
            if not self.fast_failing:
                log.exception("fast tick failed (logged once while it fails, each counted in wattscale_errors_total"
                              "{kind=\"fast_tick\"}; the watchdog is not pinged meanwhile): %r", exc)
            self.fast_failing = True
            return
        self.fast_failing = False
        self.last_fast = time.monotonic()

    def wake_slow(self) -> None:
        """The slow loop's period: wake its worker, or count an overrun if it is still at the last cycle (logged as
        a run of them starts: a slow cycle stuck on a hanging endpoint was counted and never said)."""
        period = self.settings.daemon.slow_interval_s  # a cycle the floor alarm began just now is no overrun
        if time.monotonic() - self.reload_planned < 0.5 * period:  # a reload's cycle ran just now: one more would read
            return  # windows of a fraction of a period (0.2 s of arrivals read chat at 88 rps for 15), and act on them
        if self.slow_running and time.monotonic() - self.slow_started >= 0.5 * period:
            self.metrics.errors.labels("slow_overrun").inc()
            if not self.overrunning:
                self.overrunning = True
                log.warning("slow loop: its %g-s period came round with a cycle still running (%.0f s so far: "
                            "telemetry or an actuator slow to answer?); the power governor steers on; each overrun "
                            "counted in wattscale_errors_total{kind=\"slow_overrun\"}", period,
                            time.monotonic() - self.slow_started)
        self.slow_due.set()

    def _plan_now(self) -> None:
        """A reload's cycle, at once, unless one began less than half a period ago: its windows would span that
        fraction (the next period's cycle plans with the new settings then; the governor has their budget already)."""
        now = time.monotonic()
        if now - self.slow_started >= 0.5 * self.settings.daemon.slow_interval_s:
            self.reload_planned = now
            self.slow_due.set()

    def slow_worker(self) -> None:
        load_fitting_libraries()  # a second of imports here, not inside the slow cycle that first filters
        while True:
            self.slow_due.wait()
            if self.stop_event.is_set():
                return
            self.slow_due.clear()
            self.slow_started, self.slow_running = time.monotonic(), True
            self.slow()
            self.slow_running = False
            if self.overrunning:
                self.overrunning = False
                log.info("slow loop: caught up (that cycle took %.0f s)", time.monotonic() - self.slow_started)

    def slow(self) -> None:
        """One slow tick now (the worker's; also what a test steps by hand)."""
        try:
            self.controller.tick_slow(self.now())
        except Exception as exc:  # a bug, not an input: counted, its traceback logged once a run, the loop goes on
            self.metrics.errors.labels("slow_tick").inc()
            if repr(exc) != self.slow_failure:
                log.exception("slow tick failed: %r (logged once while it repeats)", exc)
            self.slow_failure = repr(exc)
        else:
            self.slow_failure = None

    def step_budget(self) -> None:
        """Step the budget sources at the wall clock's time (schedules and forecasts are in real time); a new
        budget reaches the governor at once, and what `status` says of it stays current."""
        assert self.budget is not None
        self.budget_failure = self.controller.handoff.step_sources(self.budget, time.time(), self.now(),
                                                                   self.budget_failure)

    def budget_worker(self) -> None:
        self.step_budget()
        while True:
            self.budget_due.wait(self.settings.daemon.fast_interval_s)  # a tick, or a signal stored
            self.budget_due.clear()
            if self.stop_event.is_set():
                return
            self.step_budget()

    def signal_endpoints(self) -> list[BoundedServer]:
        """The demand-response sources' loopback endpoints, where they name a port."""
        servers, s = [], self.settings
        for name, source in s.budget.sources if s.budget is not None else ():
            if isinstance(source, DemandResponseSettings) and source.port:
                try:
                    token = signal_token(os.environ, source.token_env, f"power.budget.sources[{name}].token_env")
                    servers.append(serve_signals(resolve(s.base_dir, source.path), source.port, token,
                                                 self.metrics.errors.labels("signal_client").inc, self.budget_due.set,
                                                 lambda: idle_w(self.settings)))  # a reload may change the fleet
                except OSError as exc:
                    raise ConfigError(f"power.budget.sources[{name}].port", f"cannot listen on 127.0.0.1:"
                                      f"{source.port}: {exc.strerror or exc}") from None
                log.info("demand-response signals for %s on http://127.0.0.1:%d/signal", name, source.port)
        return servers

    def fast_alive(self) -> bool:
        """Whether the fast loop ticked recently (three periods, two seconds at least)."""
        return time.monotonic() - self.last_fast < max(3 * self.settings.daemon.fast_interval_s, 2.0)

    def reload(self) -> None:
        self.notifier.reloading(time.monotonic_ns() // 1000)
        try:
            new = in_running_order(self.settings, load_settings(self.config_path))
            check_reload(self.settings, new)
        except Exception as exc:  # a check that let a value through unchecked too: the daemon must outlive it
            self.metrics.reloads.labels("refused").inc()
            self.refused = str(exc if isinstance(exc, ConfigError) else unchecked(str(self.config_path), exc))
            log.error("reload refused, keeping the running config: %s", self.refused)
        else:
            self.refused = None
            self.controller.reconfigure(new)
            old, self.settings = self.settings, new
            if new != old:  # planned for now, not at the period: `status` read the old budget for up to a cycle;
                self._plan_now()  # but not on windows a fraction of a period long
            self.metrics.reloads.labels("ok").inc()
            log.info("config reloaded: changed %s; %s", changes(old, new), self._status())
            for warning in file_warnings(new):  # as `run` and check-config say them: a domain under its GPUs'
                log.warning("reload: %s", warning)  # floors went in with no word
        self.notifier.ready(self._status())

    def _status(self) -> str:
        """The budget in force (a budget source's, where it has lowered the configured one) and the services; and
        the last reload's refusal, until one goes through (`systemctl reload` says nothing of it: it sees READY=1)."""
        why = self.controller.budget_from  # read once: the budget thread writes it
        lowered = why is not None and why[0] < self.settings.power.budget_w
        budget, source = (why[0], f" ({why[1]})") if why is not None and lowered else (self.settings.power.budget_w, "")
        refused = f"; last reload refused: {shortened(' '.join(self.refused.split()), 200)}" if self.refused else ""
        return f"budget {budget:.0f} W{source}, {len(self.settings.services)} services{refused}"

    def run(self, duration_s: float | None = None) -> int:
        s = self.settings
        # before anything is served: a SIGTERM as the metrics came up met the default handler and killed it
        stop, reload = Asked(), Asked()  # the handlers record; the loop below acts (startup.Asked says why)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)
        STOP_ASKED.check()  # a stop before these handlers whose raise was swallowed (controller/startup.py)
        if s.metrics.port:
            try:
                serve_metrics(s.metrics.listen, s.metrics.port, self.registry, self.fast_alive,
                              lambda why: self.controller.error("metrics_client", f"a client {why}"))
            except OSError as exc:  # taken since the preflight probe looked
                raise ConfigError("metrics.port", f"cannot listen on {s.metrics.listen}:{s.metrics.port}: "
                                  f"{exc.strerror or exc}") from None
            host = f"[{s.metrics.listen}]" if ":" in s.metrics.listen else s.metrics.listen  # an IPv6 address
            log.info("metrics on http://%s:%d/metrics", host, s.metrics.port)
        if RELOAD_ASKED.take():  # asked while starting (controller/launch.py keeps it): done now
            reload()
        d, count = s.daemon, lambda kind: self.metrics.errors.labels(kind).inc()
        fast = Ticker("fast", d.fast_interval_s, self.fast, self.stop_event, count)
        if self.budget is not None:  # its first step too in its own thread: an API's timeout delays no loop
            threading.Thread(target=self.budget_worker, name="wattscale-budget", daemon=True).start()
        endpoints = self.signal_endpoints()
        self.fast()
        fast.start()  # the governor and the budget act while supervised servers start (minutes, for vLLM)
        deadline = None if duration_s is None else time.monotonic() + duration_s

        def ended() -> bool:
            return stop.asked or (deadline is not None and time.monotonic() >= deadline)

        extended = [-math.inf]

        def starting() -> bool:
            """`ended`, polled while the servers come up; systemd's start timeout is pushed on meanwhile."""
            if time.monotonic() - extended[0] >= EXTEND_EVERY_S:
                self.notifier.extend_start(3 * EXTEND_EVERY_S, "starting the vLLM servers")
                extended[0] = time.monotonic()
            return ended()

        try:
            self.parts.start(starting)  # servers the daemon supervises are up before the slow loop plans
        except ActuatorError as exc:  # one line, and the servers it did start stopped with it (not left orphaned)
            self._shut_down([fast], endpoints)
            raise ConfigError("actuators.batch", f"the vLLM servers did not start: {exc}") from None
        if ended():  # while the servers started: they stop with the rest
            self.notifier.stopping()
            log.info("stopping")
            self._shut_down([fast], endpoints)
            return 0
        worker = threading.Thread(target=self.slow_worker, name="wattscale-slow", daemon=True)
        worker.start()
        slow = Ticker("slow", d.slow_interval_s, self.wake_slow, self.stop_event, count)
        slow.start()
        self.notifier.ready(self._status())
        log.info("wattscale running: %s", self._status())
        ping = (self.notifier.watchdog_s or 10.0) / 2
        # every wake (0.2 s) while the fast loop ticks: a stall is then met WatchdogSec after it began, not up to half
        # a period sooner (pinging at half periods, a review measured 18 s of a 30-s WatchdogSec)
        while not self.stop_event.wait(min(0.2, ping)) and not stop.asked:
            if reload.take():
                self.reload()
            if self.fast_alive():
                self.notifier.watchdog()
            if dropped := log_writer.take_dropped():  # standard error's reader stopped: the loops went on
                self.metrics.errors.labels("log_dropped").inc(dropped)
            if deadline is not None and time.monotonic() >= deadline:
                break
        self.notifier.stopping()
        log.info("stopping%s", " (a reload asked with the stop is not made)" if reload.take() else "")
        self._shut_down([fast, slow], endpoints, worker)
        log.info("stopped")  # the journal's last line says the loops and parts are down, not only asked to be
        return 0

    def _shut_down(self, tickers: list[Ticker], endpoints: list[BoundedServer],
                   worker: threading.Thread | None = None) -> None:
        """Stop the loops, the signal endpoints and the parts (the servers the daemon started among them)."""
        self.controller.stopping = True  # a slow tick in flight applies no more of its plan
        self.stop_event.set()
        self.slow_due.set()  # wakes the workers to see it
        self.budget_due.set()
        for ticker in tickers:  # the fast loop's tick in flight ends; nothing waits on the network
            if not ticker.join(5.0):  # within systemd's TimeoutStopSec=10, with time left for the parts
                log.warning("the %s loop's tick has not ended in 5 s (an NVML call hung?): the parts close anyway, "
                            "and a limit it sets later may land over those restored", ticker.name)
        if worker is not None:
            worker.join(2.0)  # a slow tick blocked on I/O is left to die with the process
        for server in endpoints:
            server.shutdown()
            server.server_close()
        self.parts.close()
