"""The control logic, stepped with an explicit time: the same object runs in the daemon and in simulation.

tick_fast(now): the fast loop (controller/fast_loop.py) samples GPUs and governs power to the latest plan.
tick_slow(now): read back -> estimate -> plan -> gate -> enforce, then publish the plan and log the decision.
The two share nothing but the published plan, the draw ledger, the governor's settings (swapped whole under
one lock with the budget sources' budget: controller/handoff.py) and two flags (the fast loop's retry record is
read through one copy, and reset only by the fast loop itself), so the daemon runs them in two threads and the
governor never waits on the slow loop's network I/O. Nothing here reads the wall clock or sleeps; every failure
is logged and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from actuators import BatchSizer, ClockLocker, PowerLimiter, ReplicaScaler
from controller.decision_log import DecisionLog, change_text, gate_held, gpus, log_decision, observed, plan_record
from controller.demands import service_demand
from controller.domain_rooms import domain_rooms, placements
from controller.empty_draw import EmptyDraw
from controller.enforce import Enforcer, InForce, draining_caps
from controller.estimate import Estimator
from controller.failures import Failures
from controller.fast_loop import FastLoop
from controller.governor import PowerGovernor
from controller.handoff import Handoff
from controller.optimizer import Assignment, Problem, Solution, get_solver, solve
from controller.own_metrics import OwnMetrics
from controller.plan import FloorAlarm, Plan, ceiling_of
from controller.settings import Settings
from controller.sizing_basis import SizingBasis
from controller.stability import Inventory, Pending, StabilityGate
from controller.telemetry.base import GpuSource, ServiceWindow, VllmSource
from queuemodels.accelerators import CATALOG
from tuner import Tuner

BUDGET_BOUND = 0.98
"""A plan predicting at least this share of the budget it plans for is budget-bound: a service it shrinks then
is on the ladder's second step (max batch and replicas), not following its load."""

log = logging.getLogger("wattscale.controller")


class Controller:
    def __init__(self, settings: Settings, gpus: GpuSource, vllm: VllmSource, power: PowerLimiter,
                 batch: BatchSizer, replicas: ReplicaScaler, tuner: Tuner, metrics: OwnMetrics,
                 decisions: DecisionLog | None = None, clocks: ClockLocker | None = None) -> None:
        self.vllm, self.tuner, self.metrics = vllm, tuner, metrics
        self.failures = Failures(metrics.errors)
        self.fast = FastLoop(settings.power, settings.daemon.failsafe_after_ticks, gpus, power, metrics,
                             self.failures.report, settings.daemon.fast_interval_s, clocks)
        self.enforcer = Enforcer(replicas, batch, metrics)
        self.estimator, self.empty = Estimator(tuner, metrics, self.failures.report), EmptyDraw(metrics.empty_power)
        self.gate = StabilityGate(settings.stability)
        self.basis = SizingBasis(settings.optimizer.resize_tolerance)
        self.decisions = decisions or DecisionLog(None)
        self.assignments: dict[str, Assignment] = {}
        """What is in force per service on its planned variant (read back each cycle); its cap is the governor's
        target for that variant's GPUs."""
        self.alarm = FloorAlarm()
        """When the fast tick asks for an early slow tick."""
        self.variants: dict[str, tuple[str, ...]] = {}
        """The accelerator types each service may run on."""
        self.kv_tokens: dict[str, dict[str, float]] = {}
        """Per service and variant, the KV-cache tokens of one replica its config gives (0: not known)."""
        self.said_changes: list[str] = []
        """The last cycle's changes as its decision line said them: the same again is said at DEBUG."""
        self.draining: dict[str, dict[str, float]] = {}
        """Per service, the cap of each variant still running besides the planned one (an old one, until drained);
        the planned variant's cap is its assignment's."""
        self.ceilings: dict[str, tuple[str, float]] = {}
        """Service -> (accelerator, how far a GPU its cap in force holds down may grow): the cap chosen before the
        plan's caps were fitted within the limits' sum, or the plan's where the gate holds a lower one in force."""
        self.stopping = False
        """Set by the daemon as it stops (another thread): a slow tick in flight then changes nothing on the hosts
        (a trial's scale-up went out after "stopping" was logged, and outlives the daemon on a kubernetes or systemd
        backend); an actuator call already under way ends as it may."""
        self.settings = settings
        self.handoff = Handoff(settings, self.fast.governor, metrics)
        self.tick_power = self.handoff.power(settings)  # what a slow tick plans, checks and records against
        self._adopt(settings)
        self._publish(0)

    @property
    def governor(self) -> PowerGovernor:
        return self.fast.governor

    @property
    def budget_from(self) -> tuple[float, str] | None:
        """The budget sources' budget and why; None: `power.budget_w` alone."""
        return self.handoff.budget_from

    def reconfigure(self, settings: Settings) -> None:
        """Adopt new settings (a reload checked by controller/reload.py): the governor's budget at once, the
        rest at the start of the next slow tick, so a tick in flight keeps one config throughout. Cuts,
        streaks, cooldowns, retry records and tuner state are kept."""
        self.handoff.reconfigure(settings)

    def set_budget(self, budget_w: float, why: str, now: float) -> None:
        """The budget sources moved the budget (another thread may call this): the governor takes it at once."""
        self.handoff.set_budget(budget_w, why, now)

    def _adopt(self, settings: Settings) -> None:
        old = self.settings
        self.settings = settings
        self.gate.settings = settings.stability
        self.basis.tolerance = settings.optimizer.resize_tolerance
        o = settings.optimizer
        self.solver = get_solver(o.solver, o.time_limit_s, o.mip_gap, lambda m: self.error("optimizer", m))
        before = {s.name: s for s in old.services}
        for svc in settings.services:
            if before.get(svc.name) != svc:  # its config changed: a target given up on may be tried again
                self.enforcer.retry.forget(f"replicas:{svc.name}")
                self.enforcer.retry.forget(f"max_batch:{svc.name}")
            variants = tuple(v.accelerator for v in settings.variants_of(svc))
            self.variants[svc.name] = variants
            self.kv_tokens[svc.name] = {v.accelerator: float(v.kv_cache_tokens) for v in settings.variants_of(svc)}
            if svc.name not in self.assignments:
                acc = variants[0]
                self.assignments[svc.name] = Assignment(acc, svc.min_replicas, svc.initial_max_batch,
                                                        CATALOG[acc].max_power_w)
        # every pair's filter, restored from one read of the state file (the cache's size is read off each window)
        self.tuner.ensure_all((svc.model, acc, svc.prior.params(), CATALOG[acc])
                              for svc in settings.services for acc in self.variants[svc.name])
        if old.power != settings.power:
            self.fast.retry_afresh = True
        for gone in set(self.assignments) - {s.name for s in settings.services}:
            del self.assignments[gone]
            for table in (self.draining, self.variants, self.kv_tokens, self.ceilings):
                table.pop(gone, None)

    def error(self, kind: str, message: str) -> None:
        """Report a failure the loops survived (also what sources and the operator report: controller/failures.py)."""
        self.failures.report(kind, message)

    def tick_fast(self, now: float) -> bool:
        """One fast tick; True where the slow loop should plan now rather than at its period (`FloorAlarm`: the
        governor has cut every limit to its floor over budget, a drop below what the replicas running draw at
        their floors)."""
        self.fast.tick(now)
        due = self.alarm.ring(now, self.governor.exhausted, self.settings.daemon.slow_interval_s)
        if due:
            self.metrics.errors.labels("over_budget_at_floor").inc()
            log.warning("power: over the %.0f-W threshold with every limit at its floor; planning fewer replicas "
                        "now", self.governor.threshold_w())
        return due

    # -- slow loop -------------------------------------------------------------------------------
    def tick_slow(self, now: float) -> Solution | None:
        started = time.perf_counter()
        settings, changes = self.handoff.take()
        old_w = self.settings.power.budget_w
        if settings is not None:
            self._adopt(settings)
        s = self.settings
        budget_w, why = self.handoff.budget(s.power.budget_w)
        if s.power.budget_w != old_w and budget_w != self.tick_power.budget_w:  # the budget in force, as a source's
            changes = [*changes, {"t": round(now, 3), "budget_w": budget_w,
                                  "why": f"reload: power.budget_w {old_w:g} -> {s.power.budget_w:g} W"}]
        self.tick_power = replace(s.power, budget_w=budget_w)  # one read a tick: the budget thread may move it
        record: dict[str, Any] = {"t": round(now, 3), "budget_w": budget_w, "services": {}}
        if changes or why is not None:
            record["budget"] = {"why": why, "changes": changes}
        in_force = {}
        for svc in s.services:
            got, self.draining[svc.name] = self.enforcer.in_force(svc.name, self.variants[svc.name],
                                                                  self.assignments[svc.name],
                                                                  self.draining.get(svc.name, {}))
            in_force[svc.name], self.assignments[svc.name] = got, got.assignment
        try:
            windows = self.vllm.observe(now, [svc.name for svc in s.services])
        except Exception as exc:
            self.error("vllm_source", str(exc))
            windows = {}
        try:
            for svc in s.services:
                window = windows.get(svc.name)
                now_on = self.assignments[svc.name]
                verdict = self.estimator.observe(svc, window, readings := self.fast.ledger.take(svc.name), now_on,
                                                 in_force[svc.name].still, s.optimizer,
                                                 self.kv_tokens[svc.name].get(now_on.accelerator, 0.0),
                                                 sum(in_force[svc.name].live.values()))
                record["services"][svc.name] = {"observed": None if window is None else observed(window),
                                                "tuner": verdict, "gpus": gpus(readings)}
        finally:  # the cycle's fits in one write, those before a service that failed too
            self.estimator.save_tuner()
        try:
            problem = self._problem(now)
            solution = solve(problem, self.solver)
        except Exception as exc:
            self.error("optimizer", str(exc))
            problem, solution = None, None  # the draw and any emergency are recorded all the same (status reads them)
            record["degradation"] = self._degradation()
        record["draw_w"] = None if self.fast.draw_w is None else round(self.fast.draw_w, 1)
        for svc in s.services:
            record["services"][svc.name]["slo_margin"] = self.estimator.margins.planned.get(svc.name, 0.0)
        self.estimator.save_margins()
        for demand in problem.services if problem is not None else ():
            if demand.untried:
                record["services"][demand.name]["untried"] = sorted(demand.untried)
        if self.stopping:
            record["stopping"] = True  # planned, not applied
        elif solution is not None and problem is not None:
            self._apply(now, solution, in_force, windows, record, problem.budget_w)
        self._publish(self.fast.plan.version + 1)
        for name, tops in self.fast.plan.ceilings_w.items():  # as published, a cycle whose plan failed too
            if name in record["services"]:
                record["services"][name]["ceiling_w"] = max(tops.values())
        record["errors"] = self.failures.take()
        record["blocked"] = self.enforcer.retry.blocked() + self.fast.retry.blocked()
        if not self.decisions.write(record):
            self.metrics.errors.labels("decision_log").inc()
        self.metrics.cycle.labels("slow").observe(time.perf_counter() - started)
        return solution

    def _degradation(self) -> dict[str, Any]:
        """What holds the site below its plan at this instant (the fast loop's), for the decision log."""
        return {"gpus_held_below_plan": self.fast.held_gpus, "urgent": self.governor.exhausted,
                "emergency": self.governor.emergency, "ramp_bound": self.governor.ramp_bound}

    def _publish(self, version: int) -> None:
        """Hand the governor the caps now in force, the planned variant's first, in one reference."""
        caps = {name: {a.accelerator: a.power_cap_w, **self.draining.get(name, {})}
                for name, a in self.assignments.items()}
        clocks = {name: {a.accelerator: a.sm_clock_fraction} for name, a in self.assignments.items()
                  if a.sm_clock_fraction is not None}
        ceilings = {name: {acc: w} for name, (acc, w) in self.ceilings.items()
                    if name in self.assignments and self.settings.power.mode != "caps"}  # caps mode: none grows
        self.fast.plan = Plan.of(version, caps, {s.name: s.priority for s in self.settings.services}, clocks,
                                 ceilings)
        self.metrics.plan_version.set(version)

    def _problem(self, now: float) -> Problem:
        s, o = self.settings, self.settings.optimizer
        self.empty.observe(self.fast.ledger.take_free(), self.fast.samples, [a.name for a in s.accelerators])
        out = self.fast.listing.out_of_service(now)  # off the inventory, placed on by none, their watts reserved
        accs, lost = self.empty.offers(s.accelerators, self.fast.samples, out), self.fast.listing.lost_numbers(out)
        demands = []
        for svc in s.services:
            load = self.estimator.load.get(svc.name) or svc.load(0.0, svc.in_tokens, svc.out_tokens)
            margin = self.estimator.margins.margin(svc.name, o.slo_margin_step, o.slo_margin_max)
            self.metrics.slo_margin.labels(svc.name).set(margin)
            demands.append(service_demand(svc, load, margin, self.assignments[svc.name], self.variants[svc.name],
                                          self.kv_tokens[svc.name], self.tuner, self.basis, placements(s, svc, lost),
                                          self.estimator.serving.get(svc.name)))
        budget_w = max(0.0, self.tick_power.planned_w() - self.fast.listing.counted_w(out))
        return Problem(tuple(demands), accs, budget_w, o.objective, s.power.mode, o.batch_sizes,
                       o.power_levels, o.transition_penalty, o.queue_model, clock_levels=self.clock_levels(),
                       clock_min_saving=o.clock_min_saving,
                       domains=domain_rooms(s, self.empty.learnt_w(), self.fast.listing.counted_by_number(out, lost)),
                       energy_weight=o.energy_weight, untried_margin=o.slo_margin_max)

    def clock_levels(self) -> tuple[float, ...]:
        """The clock levels to plan among: the settings', while a clock backend runs and has not fallen back."""
        steer = self.fast.clocks
        return self.settings.optimizer.clock_levels if steer is not None and steer.off is None else (1.0,)

    def _apply(self, now: float, solution: Solution, in_force: dict[str, InForce],
               observed_windows: Mapping[str, ServiceWindow | None], record: dict[str, Any],
               budget_w: float) -> None:
        """Gate and enforce the plan (`budget_w`: the budget it was made against, GPUs out of service reserved). The
        gate and the shed services' floors take the config's inventory: a count cut while an agent is silent had
        floored a shed service on that type at 0, scaling down replicas that still serve."""
        m = self.metrics
        m.predicted_draw.set(solution.power_w)
        record["predicted_w"] = round(solution.power_w, 1)
        degradation: dict[str, Any] = self._degradation()  # the fast loop's, read once
        urgent = degradation["urgent"]  # over budget with every limit at its floor: shrinks pass the gate at once
        # no window has told their demand yet: what runs stays, unless the site is over budget at the floors
        untold = [svc.name for svc in self.settings.services if not urgent and self.estimator.untold(svc.name)]
        shed = [r.name for r in solution.services if r.reason in ("budget", "domain") and r.name not in untold]
        bound = bool(shed) or solution.power_w >= BUDGET_BOUND * budget_w
        m.degradation.labels("shed").set(len(shed))
        degradation.update(shrunk_for_budget=[], shed_for_budget=shed)
        record["degradation"] = degradation
        if untold:
            record["held_untold"] = untold  # predicted_w is still the plan's, these at no load
        changed = []
        pending = []
        most = {a.name: a.count // a.gpus_per_replica for a in self.settings.accelerators}
        for result, svc in zip(solution.services, self.settings.services, strict=True):
            current = self.assignments[svc.name]
            planned = current if svc.name in untold else result.planned(current, svc.min_replicas,
                                                                        most.get(current.accelerator))
            m.desired_replicas.labels(svc.name).set(planned.replicas)
            if bound and svc.name not in shed and (planned.replicas < current.replicas
                                                   or planned.max_batch < current.max_batch):
                degradation["shrunk_for_budget"].append(svc.name)
            m.show_short(svc.name, result.reason, result.short_rps)
            self.estimator.planned_short(svc.name, result.short_rps)
            # past its max_replicas (a reload lowered it), a service is back within them at once, not confirm_cycles
            # later: the operator's bound is no load's guess
            at_once = urgent or current.replicas > svc.max_replicas
            pending.append(Pending(svc.name, svc.priority, current, planned, self.gate.admit(
                now, svc.name, current, planned, result.reason if result.short_rps > 0 else None, at_once,
                svc.min_replicas, in_force[svc.name].one_variant)))
        m.degradation.labels("shape").set(len(degradation["shrunk_for_budget"]))
        degradation["step"] = ("shed" if shed else "shape" if degradation["shrunk_for_budget"] else
                               "caps" if self.fast.held_gpus else "none")
        admitted = self.gate.make_room(Inventory.of(self.settings.accelerators,
                                                        (got.live for got in in_force.values())), pending)
        by_name = {svc.name: (svc, result) for result, svc in zip(solution.services, self.settings.services,
                                                                  strict=True)}
        # Shrinks first, so the GPUs they free are there for the scale-ups of the same cycle.
        for p in sorted(pending, key=lambda p: admitted[p.name].replicas >= p.current.replicas):
            if self.stopping:  # asked while this cycle applies: the services after it are left as they run
                record["stopping"] = True
                break
            (svc, result), current, planned = by_name[p.name], p.current, p.planned
            window = observed_windows.get(svc.name)
            a, enforced = self.enforcer.apply(now, svc.name, in_force[svc.name], admitted[svc.name],
                                              None if window is None else window.replicas, planned, urgent)
            if enforced.asked:
                self.gate.note_change(now, svc.name)
            # A lock never lets the draw past the cap, so the planned clock goes at once, on the variant it is for.
            a = replace(a, sm_clock_fraction=planned.sm_clock_fraction if a.accelerator == planned.accelerator
                        else None)
            self.assignments[svc.name] = a
            top = None if self.settings.power.mode == "caps" else ceiling_of(  # caps mode: the caps are the budget's
                (a.accelerator, a.power_cap_w), (planned.accelerator, planned.power_cap_w),
                None if svc.name in untold else solution.ceilings_w.get(svc.name))
            if top is None:
                self.ceilings.pop(svc.name, None)
            else:
                self.ceilings[svc.name] = (a.accelerator, top)
            self.draining[svc.name] = draining_caps(self.draining.get(svc.name, {}), current, a, planned)
            m.show_applied(svc.name, a.replicas, a.max_batch, a.power_cap_w, result.performance)
            load = self.estimator.load.get(svc.name)
            record["services"][svc.name].update(
                plan_record(current, planned, a, result.short_rps, result.reason),
                load_rps=None if load is None else round(load.rate_rps, 3), running=in_force[svc.name].running,
                gate_held=(gated := gate_held(planned, admitted[svc.name])), asked=enforced.asked,
                actuator_held=enforced.held)
            if planned != current or enforced.asked or enforced.held:
                changed.append(change_text(svc.name, current, planned, a, result.short_rps, result.reason,
                                           {"gate": gated, "actuator": list(enforced.held)}))
        log_decision(changed, solution.power_w, self.tick_power.budget_w,
                     solution.solve_s + solution.candidates_s, self.said_changes)
        self.said_changes = changed
