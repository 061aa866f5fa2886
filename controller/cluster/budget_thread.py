"""The PowerPolicy's budget sources (the config's `[power.budget]`), stepped at the wall clock's time in a
thread of their own, as the host daemon steps them: a carbon API that hangs delays no loop, and a new budget
reaches the governor at once through `Controller.set_budget`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from controller.budget.assemble import combiner
from controller.budget.combiner import BudgetCombiner
from controller.config_loader import ConfigError
from controller.control import Controller
from controller.own_metrics import OwnMetrics
from controller.settings import Settings


class BudgetThread:
    def __init__(self, metrics: OwnMetrics, state_dir: str) -> None:
        self.metrics, self.state_dir = metrics, state_dir
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        """The sources' thread, the last started (a step in flight ends after `stop`, on its timeouts)."""

    def restart(self, s: Settings, c: Controller, now: Callable[[], float]) -> None:
        """Stop the sources running, start these settings' (none where the policy names none); `now` is the
        controller's clock. A source that cannot be built (a missing API key) is the controller's error."""
        self.stop()
        if s.budget is None:
            return
        try:
            sources = combiner(s.budget, os.environ, where="spec.budget", base_dir=self.state_dir,
                               failed=self.metrics.errors.labels("budget_source").inc)
        except ConfigError as exc:
            c.error("budget_source", str(exc))
            return
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(sources, c, self.stopped, s.daemon.fast_interval_s,
                                                               now), name="wattscale-budget", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _run(self, sources: BudgetCombiner, c: Controller, stopped: threading.Event, period_s: float,
             now: Callable[[], float]) -> None:
        failure = None
        while True:
            failure = c.handoff.step_sources(sources, time.time(), now(), failure)
            if stopped.wait(period_s):
                return
