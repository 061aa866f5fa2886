"""The slow loop's first stage: each service's window read into a load estimate and a tuner observation.

A window teaches the tuner only if it was steady (no restart in it, nor in the one before: a restart's
requests drain into the next window) and the max batch read back held still through it; its latencies
are labelled with the batch and the limits really in force, and its draw with the share of it the governor held
down (a bound on what the load would draw, not a reading: tuner/draw.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from controller.optimizer import Assignment
from controller.own_metrics import OwnMetrics
from controller.plan import DrawReading
from controller.settings import OptimizerSettings, ServiceSettings
from controller.sizing_basis import TokenMix
from controller.slo_margin import MARGINS_FILE, SloMargins, slo_met
from controller.telemetry.base import ServiceWindow
from controller.window_figures import (
    MAX_WINDOW_RPS,
    held_share,
    offered_rps,
    window_cap_w,
    window_clock,
    window_draw_w,
    window_problem,
)
from queuemodels import Load
from queuemodels.params import NAMES
from tuner import Observation, Tuner, pair_key

log = logging.getLogger("wattscale.controller")
REFUSED = "window refused: "
"""How a verdict on a window that cannot be a load begins."""
ENGINES_PER_REPLICA = 2
"""Engines a window may count per replica the service may run or runs, before the count is no count of its engines: a
rollout's surge and the old pods still draining read over one (a review)."""
HOLD_CYCLES = 2
"""Slow cycles without a window a service is held through at the start (`Estimator.untold`)."""


class Estimator:
    def __init__(self, tuner: Tuner, metrics: OwnMetrics, report: Callable[[str, str], None]) -> None:
        self.tuner, self.metrics = tuner, metrics
        self.report = report
        """Where a window's failure is reported (the controller's failure book: counted, recorded, logged once)."""
        self.load: dict[str, Load] = {}
        self.mix = TokenMix()
        self.settling: set[str] = set()
        """Services whose last window spanned a restart: the next one still completes what it held up."""
        self.short: set[str] = set()
        """Services the last plan could not serve in full."""
        self.sized_backlog: dict[str, float] = {}
        """Per service, the queue the last window sized as demand (0: none)."""
        self.held: dict[str, float] = {}
        """Services whose queue, sized, left the plan short: it is not sized again until it has drained by half (the
        queue at the time here). Left out only while the plan was short, the next plan, sized without it, was not,
        and the one after sized it, short again: plans that swapped accelerators every other cycle."""
        # saved beside the tuner's state, wherever it is saved
        saved = None if tuner.state_path is None else tuner.state_path.with_name(MARGINS_FILE)
        self.margins, problem = SloMargins.restored(saved)
        if problem is not None:
            log.warning("%s", problem)
        self.observed: set[str] = set()
        """Services whose demand a window has told (a replica served in it)."""
        self.serving: dict[str, int] = {}
        """Per service, the replicas that served this cycle's window (a replica loading its model serves none);
        absent where none was read or it was refused."""
        self.silent: dict[str, int] = {}
        """Per service not yet told, the cycles it has had no window in (or one no replica served in)."""

    def untold(self, name: str) -> bool:
        """Whether the plan should hold what runs for this service: no window has told its demand yet, and it has
        been silent for at most HOLD_CYCLES (a start's first cycle has no window: a rate takes two scrapes). A first
        cycle had planned the unread load as none and cut every cap to its lowest level on a host that may be busy;
        a service whose metrics never come is planned on the estimate after (its configured mix at no load)."""
        return name not in self.observed and self.silent.get(name, 0) <= HOLD_CYCLES

    def observe(self, svc: ServiceSettings, window: ServiceWindow | None, draws: list[DrawReading],
                in_force: Assignment, batch_still: bool, o: OptimizerSettings, kv_tokens: float,
                running: int = 0) -> str:
        """Update the service's load, its SLO margin and its pair's tuner (`kv_tokens`: the cache of the replicas
        in force; `running`: the replicas on every variant); returns the tuner's verdict (or why none). A window
        refused is reported, in words that stay the same while it repeats (the figure's value is in the verdict,
        which the decision log keeps): the last estimate is held."""
        m = self.metrics
        load = self.load.setdefault(svc.name, svc.load(0.0, svc.in_tokens, svc.out_tokens))
        if (window is None or window.replicas < 1) and svc.name not in self.observed:  # no word on demand yet
            self.silent[svc.name] = self.silent.get(svc.name, 0) + 1
        problem = None if window is None else window_problem(window, ENGINES_PER_REPLICA * max(running,
                                                                                              svc.max_replicas))
        if window is None or problem is not None:  # no count of those serving now: an old one held the fit off;
            self.serving.pop(svc.name, None)  # the observed gauges read no number (they had held the last window's
            self._observed(svc.name, None)  # through minutes of outage, as if live)
        if window is None:
            return "no window"  # keep the estimate
        if problem is not None:  # the estimate holds; the verdict (in the decision record) says why
            self.report("bad_window", f"{svc.name}: its window is refused for its {problem[0]}, its last load estimate "
                        f"held (the value: the decision log's services.{svc.name}.tuner, or the DEBUG log)")
            return f"{REFUSED}{problem[1]}"
        m.rate_obs.labels(svc.name).set(window.rate_rps)
        if window.tokens_per_step is not None:
            m.tokens_per_step.labels(svc.name).set(window.tokens_per_step)
        self.serving[svc.name] = window.replicas
        if window.replicas < 1:  # every replica restarting: its latencies (none) shown as none
            self._observed(svc.name, window)
            return "no replica served"
        # What was served is not what arrived: a queue or a batch that grew through a steady window took the
        # difference (arrivals = completions + growth; a burst the batch takes shows in no queue), and a saturated
        # replica's completions read its capacity, not the demand. A restart's queue is the restart's, not demand:
        # only a steady window's growth and backlog are sized for (nor the growth of the window after one, which
        # still completes what the restart held up). Nor is the backlog of a service the last plan left short: sized
        # as demand, it would only grow its shortfall (its arrivals still count).
        growth, offered, served, grew = 0.0, window.rate_rps, None, None
        if window.waiting_before is not None and window.running_before is not None:  # (not read: no growth known)
            offered = offered_rps(window.rate_rps, window.waiting_before + window.running_before,
                                  window.waiting + window.running, window.window_s)
            # a queue grown out of the batch (preempted) is no growth: only as far as the system's count grew too
            joined = min(window.waiting - window.waiting_before,
                         window.waiting + window.running - window.waiting_before - window.running_before)
            served, grew = window.rate_rps / window.replicas, joined / window.replicas
            if window.steady and svc.name not in self.settling:
                growth = max(0.0, joined / window.window_s, offered - window.rate_rps)
        if (queued := self.held.get(svc.name)) is not None and window.waiting <= queued / 2.0:
            del self.held[svc.name]  # drained by half: sized again
        sized = window.steady and svc.name not in self.short and svc.name not in self.held
        backlog = window.waiting / o.drain_s if sized else 0.0
        self.sized_backlog[svc.name] = window.waiting if sized else 0.0
        in_tokens, out_tokens = load.in_tokens, load.out_tokens
        if window.in_tokens and window.out_tokens:  # a mean under one token (requests that ended at once): one
            in_tokens, out_tokens = self.mix.update(svc.name, window.rate_rps * window.window_s,
                                                    max(window.in_tokens, 1.0), max(window.out_tokens, 1.0))
        demand = min(window.rate_rps + growth + backlog, MAX_WINDOW_RPS)  # a rate past it took the sizing minutes
        # the tokens a step gives, from a steady window (a series unread at one end, a restart, reads askew)
        per_step = load.tokens_per_step if window.tokens_per_step is None or not window.steady else (
            window.tokens_per_step)
        # the drafts likewise, and none where a steady window's decodes came without the counter (no longer drafting)
        drafts = load.draft_tokens if not window.steady or window.tokens_per_step is None else (
            window.draft_tokens or 0.0)
        if window.draft_tokens is not None or drafts != load.draft_tokens:  # read, or no longer drafting: 0
            m.draft_tokens.labels(svc.name).set(drafts if window.draft_tokens is None else window.draft_tokens)
        self.load[svc.name] = svc.load(demand, in_tokens, out_tokens, per_step, drafts)
        self.observed.add(svc.name)
        self._observed(svc.name, window)
        steady = window.steady and batch_still and svc.name not in self.settling
        if window.steady and batch_still:
            self.settling.discard(svc.name)
        else:
            self.settling.add(svc.name)
        if window.ttft_ms is None or window.itl_ms is None:
            return "no latency"
        met = slo_met(svc, window.ttft_ms, window.itl_ms, window.ttft_p95_ms, window.itl_p95_ms) if steady else None
        # A miss counts against the plan only where it ran as planned: not where the plan left it short, and only in
        # the share of the window's ticks the governor did not hold its GPUs below the plan (a window held
        # throughout, a power emergency, teaches nothing; a tick or two of the ramp limiter's hold excuses nothing:
        # heavy-tailed prompts' draw spikes meet it in every window they miss in). A met window always counts, so
        # a margin that itself left a service short still decays.
        held = held_share(draws)
        if met is not None and (met or svc.name not in self.short):
            self.margins.observe(svc.name, met, o.slo_margin_step, o.slo_miss_share, o.slo_margin_max, 1.0 - held)
        # What the model takes is the rate offered; the completions beside it judge the window steady: a ramp or a
        # filling batch reads far apart.
        obs = Observation(
            rate_rps=offered / window.replicas,
            served_rps=served,
            in_tokens=window.in_tokens or svc.in_tokens,
            out_tokens=window.out_tokens or svc.out_tokens,
            max_batch=in_force.max_batch,
            max_queue=svc.max_queue,
            ttft_ms=window.ttft_ms,
            itl_ms=window.itl_ms,
            power_cap_w=window_cap_w(draws, in_force.power_cap_w),
            power_w=window_draw_w(draws),
            sm_clock_fraction=window_clock(draws),
            waiting=window.waiting / window.replicas,
            preemptions=window.preemptions,
            in_cv=svc.in_tokens_cv,
            out_cv=svc.out_tokens_cv,
            steady=steady,
            # a queue that grew through the window is a ramp or an overload, not a steady state, whatever marks it
            queue_growth=grew,
            queue_ms=window.queue_ms,
            tokens_per_step=per_step,
            draft_tokens=drafts,
            kv_tokens=kv_tokens,
            power_held_share=held,
        )
        key = pair_key(svc.model, in_force.accelerator)
        verdict = self.tuner.update(svc.model, in_force.accelerator, obs, save=False)  # saved once a cycle
        result = "accepted" if verdict.accepted else verdict.reason
        m.tuner_updates.labels(key, result).inc()
        self._export(key, verdict.nis)
        return result

    def _observed(self, name: str, window: ServiceWindow | None) -> None:
        """The window's latencies on the observed gauges, NaN where it has none (and its rate too where there is no
        window): a dashboard tells no reading from the last one."""
        if window is None:
            self.metrics.rate_obs.labels(name).set(math.nan)
        read = (("mean", None, None), ("p95", None, None)) if window is None else (
            ("mean", window.ttft_ms, window.itl_ms), ("p95", window.ttft_p95_ms, window.itl_p95_ms))
        for stat, ttft, itl in read:
            self.metrics.ttft_obs.labels(name, stat).set(math.nan if ttft is None else ttft)
            self.metrics.itl_obs.labels(name, stat).set(math.nan if itl is None else itl)

    def save_tuner(self) -> None:
        """Write the fits a cycle's windows changed, once for all of them (a failure is logged once by the store,
        counted every time)."""
        if not self.tuner.save_pending():
            self.metrics.errors.labels("tuner_state").inc()

    def save_margins(self) -> None:
        """Write the margins a cycle changed (a failure is logged once by the margins, counted every time)."""
        if not self.margins.save():
            self.metrics.errors.labels("slo_margins").inc()

    def planned_short(self, name: str, short_rps: float) -> None:
        """What the plan left a service short by: its misses are not the model's while it is, and a queue sized that
        left it short is held out of its demand (`held`)."""
        if short_rps <= 0.0:
            self.short.discard(name)
            return
        self.short.add(name)
        if queue := self.sized_backlog.get(name):
            self.held[name] = queue

    def _export(self, key: str, nis: float) -> None:
        m = self.metrics
        pair = self.tuner.filters[key]
        names = (*NAMES[pair.prior.family], "prefill_sensitivity")
        for name, value in zip(names, pair.x, strict=False):
            m.tuner_param.labels(key, name).set(float(value))
        if pair.draw.busy_share is not None and pair.draw.batch_half is not None:
            m.tuner_param.labels(key, "busy_share").set(pair.draw.busy_share)
            m.tuner_param.labels(key, "batch_half").set(pair.draw.batch_half)
        m.tuner_trace.labels(key).set(float(pair.p.trace()))
        if not math.isnan(nis):
            m.tuner_nis.labels(key).set(nis)
