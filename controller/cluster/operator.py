"""The operator's control loop: the host daemon's `Controller` (the same fast loop, governor, optimizer, stability
gate and enforcer), with settings from the custom resources and parts that act through the Kubernetes API: replicas
through the scale subresource, `--max-num-seqs` through the Deployments' args, power limits through node plans.

It acts only while it holds the Lease. A new leader starts from the limits the plans hold (the previous
leader's), so a restart raises no cap; the fast loop is stepped with explicit times by `step`, which wakes the
slow loop's worker thread each slow period (controller/cluster/acting.py) and never waits for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from actuators.kubernetes import KubernetesReplicaScaler
from actuators.kubernetes_batch import KubernetesBatchSizer
from controller import log_writer
from controller.cluster.acting import GuardedBatch, GuardedReplicas, SlowWorker
from controller.cluster.budget_thread import BudgetThread
from controller.cluster.deployments import Deployments
from controller.cluster.lease import Lease
from controller.cluster.node_gpus import owner_caps
from controller.cluster.node_readings import stale_after_s
from controller.cluster.nodes import NodePlans
from controller.cluster.plan_server import PlanServer
from controller.cluster.policy_watch import generation_of, watched_budget
from controller.cluster.snapshot import Resources, read_resources
from controller.cluster.status import KeptDecisions, Reporter
from controller.config_loader import ConfigError
from controller.control import Controller
from controller.own_metrics import OwnMetrics
from controller.plan import Plan
from controller.settings import Settings
from controller.telemetry.prometheus import PrometheusVllmSource
from tuner import Tuner

log = logging.getLogger("wattscale.operator")
OWNER_TICKS = 10
"""Fast ticks between two refreshes of which pods hold which GPUs (in a worker thread: API reads)."""
MAX_UNPLANNED = 10_000
"""Nodes remembered as having asked for a plan none was made for (past it, such asks wake nothing early)."""
RELEASE_WITHIN_S = 8.0
"""How long telling the agents to restore their defaults is tried as the policy is deleted: within the 15 s kopf
gives a daemon to stop (its cancellation backoff and timeout) before it leaves the thread running, finalizer off."""


class ClusterLoop:
    def __init__(self, api_client: Any, policy_name: str, identity: str, namespace: str, state_dir: str,
                 metrics: OwnMetrics | None = None, lease_s: float = 15.0, server: PlanServer | None = None) -> None:
        from kubernetes.client import CustomObjectsApi

        self.client, self.policy_name, self.state_dir = api_client, policy_name, state_dir
        self.custom = CustomObjectsApi(api_client)
        self.lease = Lease(api_client, namespace, "wattscale-operator", identity, lease_s)
        self.metrics = metrics or OwnMetrics(CollectorRegistry())
        """The daemon's metrics (one set per operator process: a policy deleted and made again reuses them)."""
        self.reporter = Reporter(api_client, namespace, identity)
        self.controller: Controller | None = None
        self.plans: NodePlans | None = None
        self.decisions: KeptDecisions | None = None
        self.deployments = Deployments(api_client, self.metrics)
        self.next_slow = 0.0
        self.worker: SlowWorker | None = None
        self.renewer: SlowWorker | None = None
        """Renews the Lease while this operator acts, so that a slow API server holds no fast step."""
        self.owners: SlowWorker | None = None
        """Refreshes which pods hold which GPUs every `OWNER_TICKS` fast ticks, so a new replica gets its
        service's cap within seconds (not a slow period) of being scheduled."""
        self.next_owners = 0.0
        self.unowned: list[str] = []
        self.node_selector: dict[str, str] = {}
        """The policy's GPU nodes, as last read."""
        self.timeout_s = 5.0
        self.budget = BudgetThread(self.metrics, state_dir)
        self.ending: list[threading.Thread] = []
        """The last leadership's threads, stopped but maybe still in a tick as it stood down (`quiet`)."""
        self.offset = 0.0
        """Controller time less the monotonic clock (the budget thread's `now`)."""
        self.server = server
        """Serves each node agent its plan while this operator holds the Lease (None: not served here)."""
        self.unplanned: set[str] = set()
        """Nodes whose agents asked for a plan none was made for: each one's first ask wakes the owners' refresh,
        which makes the plan, at the next fast tick (a node that joined held its agent's safe caps, which no reading
        counts, for up to `OWNER_TICKS`); a node the selector leaves out asks once to no end."""
        self.plan_asked = threading.Event()
        self.watched = threading.Lock()
        """Held while a watch event or a slow tick hands settings over (kopf's thread and the slow worker's)."""
        self.generation = 0
        """The newest generation of the policy the watch has seen: a slow tick's read of an older one is not applied."""
        self.unled: dict[str, Any] | None = None
        """The policy's newest watch event while no leadership acts: the one starting read the policy before it."""

    # -- the resources -------------------------------------------------------------------------
    def read(self) -> Resources:
        return read_resources(self.custom, self.policy_name, self.deployments, self.plans, self.state_dir,
                              self.timeout_s)

    def policy_seen(self, obj: dict[str, Any]) -> None:
        """A watch event of the policy (kopf's thread; no API call): a new generation's lower budget to the governor
        at once (controller/cluster/policy_watch.py)."""
        with self.watched:
            c, generation = self.controller, generation_of(obj)
            self.unled = obj if c is None else None
            if c is None or generation <= self.generation:
                return
            self.generation = generation
            settings = watched_budget(c.handoff.latest, obj)
            if settings is not None:
                log.info("PowerPolicy %s: budget %.0f W to the governor", self.policy_name, settings.power.budget_w)
                c.reconfigure(settings)

    def _adopt(self, c: Controller, res: Resources | None, may_act: Callable[[], bool]) -> None:
        """The slow tick's read handed over, but not one older than the watch's last event (the next tick reads it), nor
        a change of queue model (refused as a host's reload refuses it: the tuner's state is the running model's)."""
        if res is None or res.settings is None or generation_of(res.policy_obj) < self.generation:
            return
        running = c.settings.optimizer.queue_model
        if res.settings.optimizer.queue_model != running:
            res.errors["policy"] = ConfigError("spec.optimizer.queue_model", f"changes with an operator restart (the "
                                               f"tuner's state is {running!r}'s); the policy as it was runs on")
            res.settings = None
            return
        if res.settings != c.settings and may_act():
            if res.settings.budget != c.settings.budget:
                self.budget.restart(res.settings, c, self._now)
            self.deployments.target(res.settings)
            if {x.name: x.model for x in res.settings.services} != {x.name: x.model for x in c.settings.services}:
                c.vllm = self._vllm(res.settings, c.error)
            c.reconfigure(res.settings)

    # -- leadership ------------------------------------------------------------------------------
    def _lead(self, res: Resources, now: float) -> Controller:
        """Become the acting operator: the Controller built on the cluster's parts, started from the limits the
        plans hold."""
        assert res.settings is not None and res.policy is not None
        s, p = res.settings, res.policy
        self.generation = generation_of(res.policy_obj)
        self.plans = plans = NodePlans(self.client, p.plan_ttl_s, p.safe_cap_share,
                                       stale_after_s(s.daemon.fast_interval_s), s.actuators.kubernetes_timeout_s,
                                       lambda node: self.metrics.errors.labels("node_status").inc(),
                                       tick_s=s.daemon.fast_interval_s)
        self.deployments.lead(s)
        self.decisions = KeptDecisions(s.decision_log_path)
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)

        def may_act() -> bool:  # this leadership's slow tick, the Lease still held
            return self.lease.valid() and self.controller is c

        consents = self.deployments.consents
        replicas = GuardedReplicas(KubernetesReplicaScaler(self.client, self.deployments.replica_targets,
                                                           s.actuators.kubernetes_timeout_s), may_act, consents)
        batch = GuardedBatch(KubernetesBatchSizer(self.client, self.deployments.batch_targets,
                                                  {x.name: x.initial_max_batch for x in s.services}), may_act, consents)
        tuner = Tuner(s.state_path, queue_model=s.optimizer.queue_model)
        vllm = self._vllm(s)
        c = Controller(s, plans, vllm, plans, batch, replicas, tuner, self.metrics, self.decisions)
        vllm.on_error = c.error  # its lost figures counted by the controller they feed
        self.node_selector = dict(p.node_selector)
        plans.ensure(p.node_selector)
        pods = self.deployments.pods()
        if pods is not None:
            plans.refresh_owners(pods)
        held = owner_caps(plans.owners, plans.adopt())
        self.unplanned.clear()  # this leadership's plans: a node that asked under an earlier one may ask again
        if self.server is not None:  # served from the plans as adopted: the agents see no renewal until one
            self.server.attach(lambda node: self._plan_of(plans, node), self.lease.valid)
        for name, a in list(c.assignments.items()):
            if (name, a.accelerator) in held:
                c.assignments[name] = replace(a, power_cap_w=held[name, a.accelerator])
        c.fast.plan = Plan.of(0, {n: {a.accelerator: a.power_cap_w} for n, a in c.assignments.items()},
                              {x.name: x.priority for x in s.services})
        log.info("acting operator: %d services, budget %.0f W, starting from the caps the plans hold %s",
                 len(s.services), s.power.budget_w, {f"{k[0]}@{k[1]}": v for k, v in held.items()})
        self.next_slow = now + s.daemon.slow_interval_s
        self.budget.restart(s, c, self._now)
        self.worker = SlowWorker(lambda: self._slow(c, plans, may_act, self._now()),
                                 lambda: self.metrics.errors.labels("slow_overrun").inc(), self._slow_failed)
        self.owners = SlowWorker(lambda: self._refresh_owners(c, plans, may_act),
                                 lambda: self.metrics.errors.labels("owners_overrun").inc(), self._slow_failed)
        self.renewer = SlowWorker(self.lease.hold, lambda: None, self._slow_failed)
        self.next_owners = now + OWNER_TICKS * s.daemon.fast_interval_s
        return c

    def _plan_of(self, plans: NodePlans, node: str) -> dict[str, Any] | None:
        """The spec `node`'s agent is served from this leadership's `plans` (the plan server's thread; they are
        served as a deleted policy stands down too: its release); a first ask for none wakes the plans' making."""
        spec = plans.spec_of(node)
        if spec is None and node not in self.unplanned and len(self.unplanned) < MAX_UNPLANNED:
            self.unplanned.add(node)
            self.plan_asked.set()
        return spec

    def _refresh_owners(self, c: Controller, plans: NodePlans, may_act: Callable[[], bool]) -> None:
        """A plan for each node the selector picks, while this leadership may act (one that joined gets it within
        `OWNER_TICKS`, not a slow period: its agent holds its safe caps, which no reading counts), and the owners."""
        try:
            if may_act():
                plans.ensure(self.node_selector)
        except Exception as exc:
            c.error("node_plans", str(exc))
        pods = self.deployments.pods()
        if pods is None:
            return
        plans.refresh_owners(pods)
        unowned = plans.unowned()
        if unowned != self.unowned:
            log.info("GPUs no LLMService's pod holds (held at their minimum limit): %s", unowned or "none")
        self.unowned = unowned

    def _slow_failed(self, exc: Exception, repeated: bool) -> None:
        """Counted each time; its traceback logged the first time of a run of the same failure, not every tick."""
        self.metrics.errors.labels("slow_tick").inc()
        if not repeated:
            log.warning("slow tick failed: %r (logged once while it repeats)", exc, exc_info=exc)

    def _stop_worker(self) -> None:
        for worker in (self.worker, self.owners, self.renewer):
            if worker is not None:
                worker.stop()
                if (thread := getattr(worker, "thread", None)) is not None:
                    self.ending.append(thread)
        self.worker = self.owners = self.renewer = None

    def _now(self) -> float:
        return time.monotonic() + self.offset

    def _vllm(self, s: Settings, on_error: Callable[[str, str], None] | None = None) -> PrometheusVllmSource:
        t = s.telemetry
        return PrometheusVllmSource(t.prometheus_url, {x.name: x.model for x in s.services}, t.window_s, t.timeout_s,
                                    on_error=on_error)

    def stand_down(self, release: bool, now: float) -> None:
        """Stop acting: on the policy's deletion the agents are told to restore default limits; on an exit or a
        lost Lease the plans stay as they are (the agents hold them until their TTL, then the safe caps).
        A release is served while the Lease, no longer renewed, stays valid (its duration: the agents fetch
        it within that), so the Lease is not given back then: a successor waits for it to expire."""
        if self.controller is not None:  # its slow tick in flight applies no more of its plan
            self.controller.stopping = True
        self.budget.stop()
        self._stop_worker()
        plans = self.plans
        if release and plans is not None and plans.release(now, RELEASE_WITHIN_S):
            log.warning("release: not every agent was told to restore its default limits; those fall to their "
                        "safe caps at their plan's TTL")
        self.controller = self.plans = None
        if self.budget.thread is not None:
            self.ending.append(self.budget.thread)
        self.metrics.stand_down()  # its page says nothing a leader would (again once `ending` has: `quiet`)
        self.deployments.forget()  # a standby reads no label: the next leadership reads them again
        if not (release and plans is not None):
            if self.server is not None:
                self.server.detach()
            self.lease.give_back()

    # -- one step ------------------------------------------------------------------------------
    def step(self, now: float) -> float:
        """One fast tick if this operator holds the Lease, waking the slow worker when its period is due (not
        waiting for it); returns the seconds to the next step."""
        self.offset = now - time.monotonic()
        if self.controller is not None and not self.lease.valid():
            return self._lost(now)
        if self.controller is None:  # nothing is governed here yet: this step may wait on the API
            self.quiet()
            if not self.lease.hold():
                return 2.0
            res = self.read()
            self.reporter.resources(res, acting=False)
            if res.settings is None:
                return 5.0
            self.controller = self._lead(res, now)
            if (unled := self.unled) is not None:  # an event while it started (its read may be older)
                self.policy_seen(unled)
        c, plans = self.controller, self.plans
        assert plans is not None
        if self.lease.due() and self.renewer is not None:
            self.renewer.wake()  # a renewal in flight takes the wake-up as its next try
        early = c.tick_fast(now)  # limits at their floors over budget: the slow worker plans fewer replicas now
        if not self.lease.valid():  # leading took past the Lease's term (a slow API): no plan is written now
            return self._lost(now)
        power = c.governor.settings
        domains = [(power.line_w(d.limit_w), d.gpus) for d in power.domains]
        failed = plans.flush(now, c.governor.threshold_w(), domains)  # the plans' retry book logs each run once
        c.metrics.errors.labels("node_plan").inc(len(failed))  # and every failure is counted
        if dropped := log_writer.take_dropped():  # standard error's reader stopped: the governor went on
            c.metrics.errors.labels("log_dropped").inc(dropped)
        if now >= self.next_slow and self.worker is not None:
            self.next_slow = now + c.settings.daemon.slow_interval_s
            self.worker.wake()
        elif early and self.worker is not None:
            self.worker.wake(early=True)
        asked = self.plan_asked.is_set()  # an agent with no plan: its node's plan made now, not in `OWNER_TICKS`
        if (asked or now >= self.next_owners) and self.owners is not None:
            self.plan_asked.clear()
            self.next_owners = now + OWNER_TICKS * c.settings.daemon.fast_interval_s
            self.owners.wake(early=asked)  # an ask while a refresh is still due is no overrun
        return c.settings.daemon.fast_interval_s

    def quiet(self) -> None:
        """A standby's gauges cleared again once the last leadership's threads have ended: a slow tick or a budget
        step in flight as it stood down set them after the first clearing (a lost Lease is often a slow API)."""
        if self.ending and not any(t.is_alive() for t in self.ending):
            self.ending = []
            self.metrics.stand_down()

    def _lost(self, now: float) -> float:
        log.warning("the Lease was lost: this operator stops acting")
        self.lease.lapse()
        self.stand_down(False, now)  # its give_back is a no-op: the Lease is not held
        return 2.0

    def _slow(self, c: Controller, plans: NodePlans, may_act: Callable[[], bool], now: float) -> None:
        """One slow tick (the worker's): the resources read, the settings reconfigured, the optimizer's cycle,
        the status written; nothing written once the Lease is not held."""
        try:
            res = self.read()
        except Exception as exc:
            c.error("custom_resources", str(exc))
            res = None
        with self.watched:  # a watch event may not land between this generation's check and its settings' handover
            self._adopt(c, res, may_act)
        self.deployments.prune()  # a label read for a service then left out, or not adopted, is no consent
        if res is not None and res.policy is not None and may_act():
            plans.configure(res.policy.plan_ttl_s, res.policy.safe_cap_share,
                            (res.settings or c.settings).daemon.fast_interval_s)
            self.node_selector = dict(res.policy.node_selector)  # plans made for it by the owners' worker
        solution = c.tick_slow(now)  # on the owners the owners worker keeps fresh
        record = self.decisions.last if self.decisions is not None else None
        if res is not None and may_act():
            self.reporter.resources(res, record, solution, self.unowned)
