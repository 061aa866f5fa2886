"""The control logic, stepped with an explicit time: the same object runs in the daemon and in simulation.

tick_fast(now): sample GPUs, let the governor keep draw under the budget.
tick_slow(now): observe services, tune their models, optimize, gate, actuate.
Nothing here reads the wall clock or sleeps; every failure of a source or actuator is logged and counted.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import NamedTuple

from actuators import ActuatorError, BatchSizer, PowerLimiter, ReplicaScaler
from controller.governor import PowerGovernor
from controller.optimizer import Assignment, Problem, ServiceDemand, Solution, get_solver, solve
from controller.own_metrics import OwnMetrics
from controller.settings import ServiceSettings, Settings
from controller.sizing_basis import SizingBasis, TokenMix
from controller.stability import StabilityGate
from controller.telemetry.base import GpuSample, GpuSource, ServiceWindow, VllmSource
from queuemodels import Load, ServiceParams, Targets
from queuemodels.accelerators import CATALOG
from queuemodels.power import natural_draw_w
from tuner import Observation, Tuner, pair_key

log = logging.getLogger("wattscale.controller")


class DrawReading(NamedTuple):
    """A service's GPUs at one fast tick: mean draw, mean limit in force, and whether the governor held a cut
    on any of them."""

    draw_w: float
    limit_w: float
    cut: bool


@dataclass
class ServiceState:
    """What the controller believes is in place for a service (its cap is the governor's target) and the
    load it estimates."""

    assignment: Assignment
    load: Load


class Controller:
    def __init__(self, settings: Settings, gpus: GpuSource, vllm: VllmSource, power: PowerLimiter,
                 batch: BatchSizer, replicas: ReplicaScaler, tuner: Tuner, metrics: OwnMetrics) -> None:
        self.gpus, self.vllm = gpus, vllm
        self.power, self.batch, self.replicas = power, batch, replicas
        self.tuner, self.metrics = tuner, metrics
        self.samples: list[GpuSample] = []
        self.state: dict[str, ServiceState] = {}
        self.mix = TokenMix()
        self.settling: set[str] = set()
        """Services whose last window spanned a restart: the next one still completes what it held up."""
        self.short: set[str] = set()
        """Services the last plan could not serve in full."""
        self.draws: dict[str, list[DrawReading]] = {}
        """Per service, its GPUs' readings at each fast tick since the last slow one: the window's draw the tuner
        fits the draw curve to (one tick is a 1-s reading of a load that swings), and the caps it ran under."""
        self.reconfigure(settings)

    def reconfigure(self, settings: Settings) -> None:
        """Adopt new settings (a reload); what is in place is kept and re-planned from."""
        self.settings = settings
        self.governor = PowerGovernor(settings.power)
        self.gate = StabilityGate(settings.stability)
        self.solver = get_solver(settings.optimizer.solver, settings.optimizer.time_limit_s, settings.optimizer.mip_gap)
        self.basis = SizingBasis(settings.optimizer.resize_tolerance)
        acc = settings.accelerators[0].name
        for svc in settings.services:
            cap = CATALOG[acc].max_power_w
            if svc.name not in self.state:
                current = self._read_replicas(svc.name, svc.min_replicas)
                self.state[svc.name] = ServiceState(Assignment(acc, current, svc.initial_max_batch, cap),
                                                    svc.load(0.0, svc.in_tokens, svc.out_tokens))
            for a in settings.accelerators:
                self.tuner.ensure(svc.model, a.name, svc.prior.params(), CATALOG[a.name])
        for gone in set(self.state) - {s.name for s in settings.services}:
            del self.state[gone]
            self.draws.pop(gone, None)
        self.metrics.budget.set(settings.power.budget_w)

    def _read_replicas(self, service: str, default: int) -> int:
        try:
            return self.replicas.get_replicas(service)
        except ActuatorError as exc:
            self.error("replicas_read", f"{service}: {exc}")
            return default

    def error(self, kind: str, message: str) -> None:
        """Log and count a failure that was survived (also what sources report of themselves)."""
        self.metrics.errors.labels(kind).inc()
        log.warning("%s: %s", kind, message)

    # -- fast loop -------------------------------------------------------------------------------
    def tick_fast(self, now: float) -> None:
        started = time.perf_counter()
        try:
            self.samples = self.gpus.sample(now)
        except Exception as exc:  # any source failure is survived; the governor keeps the last caps
            self.error("gpu_source", str(exc))
            return
        m = self.metrics
        total = 0.0
        for g in self.samples:
            m.gpu_limit.labels(str(g.index)).set(g.power_limit_w)
            if g.power_w is not None:
                m.gpu_power.labels(str(g.index), g.service or "").set(g.power_w)
            if g.energy_j is not None:
                m.gpu_energy.labels(str(g.index)).set(g.energy_j)
            if g.sm_clock_mhz is not None:
                m.gpu_clock.labels(str(g.index)).set(g.sm_clock_mhz)
            total += PowerGovernor.accounted_w(g)
        m.draw.set(total)
        self._record_draws()
        priorities = {s.name: s.priority for s in self.settings.services}
        plan_caps = {name: st.assignment.power_cap_w for name, st in self.state.items()}
        for index, watts in self.governor.step(self.samples, plan_caps, priorities).items():
            try:
                applied = self.power.set_power_limit(index, watts)
                m.actuations.labels(self.power.name, "power_limit", "ok").inc()
                if abs(applied - watts) > 1.0:
                    log.info("GPU %d limit %.0f W asked, %.0f W in force", index, watts, applied)
            except ActuatorError as exc:
                m.actuations.labels(self.power.name, "power_limit", "error").inc()
                self.error("power_actuator", f"GPU {index}: {exc}")
        m.emergency.set(1.0 if self.governor.emergency else 0.0)
        m.cycle.labels("fast").observe(time.perf_counter() - started)

    def _record_draws(self) -> None:
        """Per service, its GPUs' mean draw and mean limit at this tick, and whether a cut of the governor's was
        in force on them (read before this tick's step: the cuts the reading ran under)."""
        by_service: dict[str, list[GpuSample]] = {}
        for g in self.samples:
            if g.service is not None and g.power_w is not None and math.isfinite(g.power_w):
                by_service.setdefault(g.service, []).append(g)
        for service, gpus in by_service.items():
            n = len(gpus)
            self.draws.setdefault(service, []).append(DrawReading(
                sum(g.power_w or 0.0 for g in gpus) / n, sum(g.power_limit_w for g in gpus) / n,
                any(self.governor.cut_w.get(g.index, 0.0) > 0 for g in gpus)))

    # -- slow loop -------------------------------------------------------------------------------
    def tick_slow(self, now: float) -> Solution | None:
        started = time.perf_counter()
        names = [s.name for s in self.settings.services]
        try:
            windows = self.vllm.observe(now, names)
        except Exception as exc:
            self.error("vllm_source", str(exc))
            windows = {}
        for svc in self.settings.services:
            self._observe(svc, windows.get(svc.name))
        try:
            solution = solve(self._problem(), self.solver)
        except Exception as exc:
            self.error("optimizer", str(exc))
            return None
        self._apply(now, solution)
        self.metrics.cycle.labels("slow").observe(time.perf_counter() - started)
        return solution

    def _observe(self, svc: ServiceSettings, window: ServiceWindow | None) -> None:
        state = self.state[svc.name]
        m = self.metrics
        draws = self.draws.pop(svc.name, [])  # this window's, whatever it turns out to teach
        if window is None:
            return
        m.rate_obs.labels(svc.name).set(window.rate_rps)
        if window.replicas < 1:
            return  # nothing was serving (every replica restarting): no word on demand, keep the estimate
        # A restart's queue is the restart's, not demand: only a steady window's backlog is sized for. Nor is the
        # queue of a service the last plan left short: sized as demand, it would only grow its shortfall.
        sized = window.steady and svc.name not in self.short
        backlog = window.waiting / self.settings.optimizer.drain_s if sized else 0.0
        in_tokens, out_tokens = state.load.in_tokens, state.load.out_tokens
        if window.in_tokens and window.out_tokens:
            in_tokens, out_tokens = self.mix.update(svc.name, window.rate_rps * window.window_s, window.in_tokens,
                                                    window.out_tokens)
        state.load = svc.load(window.rate_rps + backlog, in_tokens, out_tokens)
        stats = (("mean", window.ttft_ms, window.itl_ms), ("p95", window.ttft_p95_ms, window.itl_p95_ms))
        for stat, ttft, itl in stats:
            if ttft is not None:
                m.ttft_obs.labels(svc.name, stat).set(ttft)
            if itl is not None:
                m.itl_obs.labels(svc.name, stat).set(itl)
        a = state.assignment
        steady = window.steady and svc.name not in self.settling
        if window.steady:
            self.settling.discard(svc.name)
        else:
            self.settling.add(svc.name)
        if window.ttft_ms is None or window.itl_ms is None:
            return
        obs = Observation(
            rate_rps=window.rate_rps / window.replicas,
            in_tokens=window.in_tokens or svc.in_tokens,
            out_tokens=window.out_tokens or svc.out_tokens,
            max_batch=a.max_batch,
            max_queue=svc.max_queue,
            ttft_ms=window.ttft_ms,
            itl_ms=window.itl_ms,
            power_cap_w=self._window_cap_w(draws, a.power_cap_w),
            power_w=self._window_draw_w(draws),
            waiting=window.waiting / window.replicas,
            preemptions=window.preemptions,
            in_cv=svc.in_tokens_cv,
            out_cv=svc.out_tokens_cv,
            steady=steady,
        )
        key = pair_key(svc.model, a.accelerator)
        verdict = self.tuner.update(svc.model, a.accelerator, obs)
        m.tuner_updates.labels(key, "accepted" if verdict.accepted else verdict.reason).inc()
        pair = self.tuner.filters[key]
        names = ["alpha_ms", "beta_ms", "gamma_ms", "delta_ms", "prefill_sensitivity"]
        for name, value in zip(names, pair.x, strict=False):
            m.tuner_param.labels(key, name).set(float(value))
        if pair.draw.busy_share is not None and pair.draw.batch_half is not None:
            m.tuner_param.labels(key, "busy_share").set(pair.draw.busy_share)
            m.tuner_param.labels(key, "batch_half").set(pair.draw.batch_half)
        m.tuner_trace.labels(key).set(float(pair.p.trace()))
        if not math.isnan(verdict.nis):
            m.tuner_nis.labels(key).set(verdict.nis)

    @staticmethod
    def _window_cap_w(draws: list[DrawReading], planned_w: float) -> float:
        """The mean limit the window's GPUs ran under (the plan's cap where none was read)."""
        return sum(r.limit_w for r in draws) / len(draws) if draws else planned_w

    @staticmethod
    def _window_draw_w(draws: list[DrawReading]) -> float | None:
        """The window's mean draw; None where there is none, or where the governor held a cut in it: a draw
        held down tick by tick is no steady state of any cap, and would teach the curve too low."""
        if not draws or any(r.cut for r in draws):
            return None
        return sum(r.draw_w for r in draws) / len(draws)

    def _problem(self) -> Problem:
        s = self.settings
        accs = tuple(a.offer() for a in s.accelerators)
        demands = []
        for svc in s.services:
            params, profiles = {}, {}
            for a in s.accelerators:
                key = pair_key(svc.model, a.name)
                fitted = self.tuner.params(svc.model, a.name)
                p = fitted[0] if fitted else svc.prior.params()
                params[a.name] = ServiceParams.from_vector(p.family, self.basis.hold(key, p.as_vector()))
                if fitted is not None and fitted[1] is not None:
                    # The pair's draw curve (and cap sensitivity) as fitted, held while what it predicts holds.
                    prof = fitted[1]
                    signature = (*(natural_draw_w(prof, float(b)) for b in (16, 64, 256)), prof.prefill_sensitivity)
                    profiles[a.name] = self.basis.keep(f"{key}|power", signature, prof)
            st = self.state[svc.name]
            in_tokens, out_tokens = self.basis.hold(svc.name, (st.load.in_tokens, st.load.out_tokens))
            demands.append(ServiceDemand(svc.name, svc.priority, Targets(svc.ttft_ms, svc.itl_ms, svc.statistic),
                                         svc.load(st.load.rate_rps, in_tokens, out_tokens), params, svc.min_replicas,
                                         svc.max_replicas, svc.max_queue, st.assignment, profiles))
        o = s.optimizer
        return Problem(tuple(demands), accs, s.power.planned_w(), o.objective, s.power.mode, o.batch_sizes,
                       o.power_levels, o.transition_penalty, o.queue_model)

    def _apply(self, now: float, solution: Solution) -> None:
        m = self.metrics
        m.predicted_draw.set(solution.power_w)
        parts = []
        for result, svc in zip(solution.services, self.settings.services, strict=True):
            state = self.state[svc.name]
            current = state.assignment
            planned = result.assignment
            if planned is None:
                # No shape meets the SLO at all (the model says so): starving it would only make that
                # worse, so what runs stays. Shed for budget or inventory: the least it may have.
                planned = current if result.reason == "slo" else Assignment(
                    current.accelerator, svc.min_replicas, current.max_batch, CATALOG[current.accelerator].min_power_w)
            m.desired_replicas.labels(svc.name).set(planned.replicas)
            m.short.labels(svc.name, result.reason or "none").set(result.short_rps)
            if result.short_rps > 0:
                self.short.add(svc.name)
            else:
                self.short.discard(svc.name)
            admitted = self.gate.admit(now, svc.name, current, planned)
            state.assignment = self._actuate(svc.name, current, admitted)
            a = state.assignment
            m.replicas.labels(svc.name).set(a.replicas)
            m.max_batch.labels(svc.name).set(a.max_batch)
            m.cap.labels(svc.name).set(a.power_cap_w)
            if result.performance is not None:
                perf = result.performance
                m.ttft_pred.labels(svc.name, "mean").set(perf.ttft_ms)
                m.itl_pred.labels(svc.name, "mean").set(perf.itl_ms)
                m.ttft_pred.labels(svc.name, "p95").set(perf.ttft_p95_ms)
                m.itl_pred.labels(svc.name, "p95").set(perf.itl_p95_ms)
            short = f" short {result.short_rps:.2f} rps ({result.reason})" if result.reason else ""
            parts.append(f"{svc.name}: {a.replicas}x{a.accelerator} batch {a.max_batch} cap {a.power_cap_w:.0f} W"
                         f" load {state.load.rate_rps:.2f} rps{short}")
        log.info("decision: %s | predicted %.0f W of %.0f W budget | solve %.1f ms", "; ".join(parts),
                 solution.power_w, self.settings.power.budget_w, 1000 * (solution.solve_s + solution.candidates_s))

    def _actuate(self, service: str, current: Assignment, target: Assignment) -> Assignment:
        """Apply replica and batch changes; on failure keep what is known to be in place."""
        done = current
        m = self.metrics
        if target.replicas != current.replicas:
            try:
                done = replace(done, replicas=self.replicas.set_replicas(service, target.replicas))
                m.actuations.labels(self.replicas.name, "replicas", "ok").inc()
            except ActuatorError as exc:
                m.actuations.labels(self.replicas.name, "replicas", "error").inc()
                self.error("replica_actuator", f"{service}: {exc}")
        if target.max_batch != current.max_batch:
            try:
                self.batch.set_max_batch(service, target.max_batch)
                done = replace(done, max_batch=target.max_batch)
                m.actuations.labels(self.batch.name, "max_batch", "ok").inc()
            except ActuatorError as exc:
                m.actuations.labels(self.batch.name, "max_batch", "error").inc()
                self.error("batch_actuator", f"{service}: {exc}")
        return replace(done, power_cap_w=target.power_cap_w)
