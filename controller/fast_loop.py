"""The fast loop: it alone samples the GPUs and owns the governor and the power limits.

It reads the slow loop's latest plan (one reference) and never waits on it. Without readings it still holds
the budget (controller/blind.py): a budget that falls meanwhile is cut at once, and after `failsafe_after_ticks`
lost ticks limits whose sum fits it by construction go to the GPUs it last saw, until readings come back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import cast

from actuators import ActuatorError, ClockLocker, LaterLimiter, PowerLimiter
from controller.blind import Blind, limit_key
from controller.clock_steer import ClockSteer
from controller.governor import PowerGovernor
from controller.gpu_listing import GpuListing
from controller.limit_pressure import accounted_w, presses
from controller.own_metrics import GpuSeries, OwnMetrics
from controller.plan import DrawLedger, DrawReading, Plan
from controller.retry import PERMANENT_RETRY_S, RetryBook
from controller.settings import PowerSettings
from controller.telemetry.base import DepartingGpus, GpuSample, GpuSource
from controller.telemetry.plausible import LimitCheck, envelope_ok

log = logging.getLogger("wattscale.governor")


class FastLoop:
    def __init__(self, power_settings: PowerSettings, failsafe_after_ticks: int, gpus: GpuSource,
                 power: PowerLimiter, metrics: OwnMetrics, on_error: Callable[[str, str], None],
                 interval_s: float = 1.0, clocks: ClockLocker | None = None) -> None:
        self.gpus, self.power, self.metrics, self.on_error = gpus, power, metrics, on_error
        self.read_back = not getattr(power, "applied_later", False)
        """Whether a limit the limiter returns is in force (actuators.base.PowerLimiter), so the metrics say it."""
        self.later = None if self.read_back else cast(LaterLimiter, power)
        """The limiter, where its limits are applied later: what each GPU may hold, and which are not yet in force."""
        self.governor = PowerGovernor(power_settings, interval_s)
        self.plan = Plan(0)
        """The slow loop's latest plan, swapped whole."""
        self.ledger = DrawLedger()
        self.retry = RetryBook(1.0, 10.0, lambda said: on_error("power_actuator", said), PERMANENT_RETRY_S)
        """Per GPU: one in backoff is pinned (the others fit around it; PowerGovernor.tried_anyway), at most 10 s, or
        PERMANENT_RETRY_S where its driver refused it for good."""
        self.samples: list[GpuSample] = []
        """The last good listing: the GPUs safe caps go to when readings fail."""
        self.blind = Blind(failsafe_after_ticks)
        """What it does while it cannot read the GPUs (controller/blind.py)."""
        self.held_gpus = 0
        """GPUs the governor held below the plan's cap at the last tick: the ladder's first step, in seconds."""
        self.draw_w: float | None = None
        """The site's draw the last tick read (each GPU as the governor counts it); None where it read none."""
        self.listing = GpuListing(metrics, on_error)
        """The GPUs listed so far: which are missing now, which read no draw."""
        self.departing = gpus if isinstance(gpus, DepartingGpus) else None
        """The source, where it tells which GPUs are gone for good (the others' are only ever missing)."""
        self.under_floors = False
        """Whether the GPUs' lowest limits summed above the threshold at the last tick (said as it starts and ends)."""
        self.limits = LimitCheck()
        """Each GPU's last plausible limits: a source's NaN, negative or reversed pair never reaches the governor."""
        self.unknown: frozenset[str] = frozenset()
        """GPUs of unknown limits at the last good tick: counted at the most they may draw, never set (blind too)."""
        self.series: dict[int, GpuSeries] = {}
        """GPU index -> its exported series, looked up once (a label lookup per GPU and series each tick cost more
        than the governor's step)."""
        self.cycle = metrics.cycle.labels("fast")
        self.held_series = metrics.degradation.labels("caps")
        self.clocks = None if clocks is None else ClockSteer(clocks, metrics, on_error)
        """Locks each GPU's SM clock at the plan's share after the limits are set (None: caps alone)."""
        self.retry_afresh = False
        """Set by the slow loop when the power settings changed: the next tick forgets given-up GPUs (the retry
        record is this thread's own, so another thread only raises the flag)."""

    def tick(self, now: float) -> None:
        started = time.perf_counter()
        if self.retry_afresh:
            self.retry_afresh = False
            self.retry.forget()
        try:
            samples = self.listing.drawing(self.gpus.sample(now))
            gone = self.departing.departed() if self.departing is not None else frozenset()
            if gone:  # gone for good, unless listed now (a node renamed, a key changed)
                self._retire(gone - {g.uuid for g in samples}, samples)
            if not samples and self.listing.seen:  # every GPU seen before gone at once: the source lost them
                raise ValueError("the listing holds none of the GPUs seen before")
            if samples and all(g.power_w is None for g in samples):
                if not self.samples:  # never read: the fail-safe starts from this listing (`LimitCheck`'s limits)
                    self.samples, self.unknown, problems = self.limits.check(samples)
                    for problem in problems:
                        self.on_error("gpu_limits", problem)
                raise ValueError("no GPU returned a power reading")
            samples, unknown, problems = self.limits.check(samples)
        except Exception as exc:  # any source failure is survived: a budget cut held, after a few, safe caps
            self.draw_w = None  # nothing read: no draw to report, and no floor the governor saw reached
            self.metrics.draw.set(math.nan)  # a gap in the series, not the last draw read held as if measured
            for series in self.series.values():  # each GPU's too (they had kept their last reading)
                if series.power is not None:
                    series.power.set(math.nan)
            self.governor.exhausted = False
            if self.blind.lost == 0:
                self.on_error("gpu_source", str(exc))
            else:
                self.metrics.errors.labels("gpu_source").inc()
            self.blind.step(self, now)
        else:
            if self.blind.lost:  # what writes said while no GPU could be read ("GPU lost") is tried again at once
                self.retry.forget(since=self.blind.since)
            self.blind.read()
            self.metrics.failsafe.set(0.0)
            for problem in problems:
                self.on_error("gpu_limits", problem)
            for uuid, since in self.listing.say_unread(samples, unknown, now).items():  # a GPU that reads again
                self.retry.forget(limit_key(uuid), since)
            if self.limits.implausible > len(problems):
                self.metrics.errors.labels("gpu_limits").inc(self.limits.implausible - len(problems))
            samples, missing = self._with_missing(samples, now)
            self.samples, self.unknown = samples, unknown
            # one plan for the whole tick, whatever the slow loop swaps
            self._govern(now, samples, missing | unknown, self.plan)
        self.cycle.observe(time.perf_counter() - started)

    def _say_floors(self, samples: list[GpuSample], untouched: frozenset[str]) -> None:
        """Say once, as it starts and as it ends, that the GPUs' lowest limits sum above the threshold (a source's
        drop, a reload): every GPU is held at its floor, no cap above it applies (check-config says so). GPUs that
        are not set (missing, of unknown limits) count at what they count for; where no GPU can be set, none is held
        at a floor (their limits' problems are said)."""
        settable = [g for g in samples if g.uuid not in untouched]
        floors_w = sum(g.min_limit_w for g in settable) + sum(accounted_w(g) for g in samples if g.uuid in untouched)
        threshold_w = self.governor.threshold_w()
        if (bool(settable) and floors_w > threshold_w) == self.under_floors:
            return
        self.under_floors = not self.under_floors
        if self.under_floors:
            log.warning("power: the GPUs' lowest limits, %.0f W, sum above the %.0f-W threshold: every GPU is held at "
                        "its lowest limit, and a cap planned above it does not apply", floors_w, threshold_w)
        else:
            log.info("power: the %.0f-W threshold is above the GPUs' lowest limits, %.0f W, again", threshold_w,
                     floors_w)

    def _with_missing(self, samples: list[GpuSample], now: float) -> tuple[list[GpuSample], frozenset[str]]:
        """The listing with the GPUs missing from it (`GpuListing.with_missing`); the series of a number no GPU holds
        now (a node renamed) dropped."""
        samples, missing = self.listing.with_missing(samples, now)
        numbers = {g.index for g in samples}
        for index in [i for i in self.series if i not in numbers]:
            self._drop_series(index)
        return samples, missing

    def _retire(self, gone: frozenset[str], listing: list[GpuSample]) -> None:
        """Forget GPUs gone for good: not counted as missing, records dropped (series: `_with_missing`), no safe cap;
        but one `listing` holds at a retired GPU's number (a stand-in's, read at last) is kept in their place until
        a good tick lists it (a tick failing after its first read had left it out of every blind cut)."""
        self.listing.forget(gone)
        self.limits.forget(gone)
        for uuid in gone:
            self.governor.cut_w.pop(uuid, None)
            self.retry.forget(limit_key(uuid))
            log.info("GPU %s left the site: no longer counted", uuid)
        listed = {g.index: g for g in listing if envelope_ok(g.min_limit_w, g.max_limit_w) and g.power_limit_w > 0}
        self.samples = [listed.get(g.index, g) if g.uuid in gone else g for g in self.samples
                        if g.uuid not in gone or g.index in listed]

    def _drop_series(self, index: int) -> None:
        """The exported series of a GPU number no GPU holds any more."""
        series = self.series.pop(index, None)
        if series is None:
            return
        m, gpu = self.metrics, str(index)
        for family in (m.gpu_limit, m.gpu_energy, m.gpu_clock, m.gpu_capped):
            family.remove(gpu)
        if series.owner is not None:
            m.gpu_power.remove(gpu, series.owner)

    def _govern(self, now: float, samples: list[GpuSample], untouched: frozenset[str], plan: Plan) -> None:
        """Count, govern and set the limits; `untouched` GPUs are not set: those missing from the listing count at
        their last limit, those of unknown limits at the most they may draw (controller.telemetry.plausible)."""
        m, total = self.metrics, 0.0
        held = self.later.held_w() if self.later is not None else {}  # node plans: each GPU at the most it may hold
        counted = [replace(g, power_limit_w=most) if (most := held.get(g.index, 0.0)) > g.power_limit_w else g
                   for g in samples]
        for g, c in zip(samples, counted, strict=True):
            series = self.series.get(g.index)
            if series is None:
                gpu = str(g.index)
                series = self.series[g.index] = GpuSeries(m.gpu_limit.labels(gpu), m.gpu_energy.labels(gpu),
                                                           m.gpu_clock.labels(gpu), m.gpu_capped.labels(gpu))
            series.limit.set(self._shown_limit(g))
            # a GPU that gave no reading shows a gap, not its last draw held as if measured
            power = series.power_of(m.gpu_power, str(g.index), g.service or "")
            power.set(math.nan if g.power_w is None else g.power_w)
            if g.energy_j is not None:
                series.energy.set(g.energy_j)
            if g.sm_clock_mhz is not None:
                series.clock.set(g.sm_clock_mhz)
            series.capped.set(math.nan if g.capped_share is None else g.capped_share)  # unknown: a gap, not 0
            total += accounted_w(c)
        m.draw.set(total)
        self.draw_w = total
        self._record_draws(samples, plan)
        lagging = {c.uuid: g.power_limit_w for g, c in zip(samples, counted, strict=True) if c is not g}
        samples = counted
        late = self.later.unapplied() if self.later is not None else set()
        fixed = untouched | {g.uuid for g in samples if g.index in late}
        waiting = frozenset(g.uuid for g in samples if not self.retry.may_try(limit_key(g.uuid), now)) - fixed
        forced = self.governor.tried_anyway(samples, fixed, frozenset(  # a decrease, twice a run of failures at most
            u for u in waiting if self.retry.forceable(limit_key(u))))
        pinned = fixed | (waiting - forced)
        limits = self.governor.step(samples, plan, pinned, lagging)
        self._say_floors(samples, untouched)
        by_index = {g.index: g for g in samples if g.uuid not in untouched}
        lower = [(by_index[i], w) for i, w in limits.items() if w < by_index[i].power_limit_w]
        higher = [(by_index[i], w) for i, w in limits.items() if w > by_index[i].power_limit_w
                  and by_index[i].uuid not in forced]
        # Decreases first: the rises were fitted around them, so none is made where a decrease failed.
        applied = {g.uuid: self.set_limit(now, g, w, g.uuid in forced) for g, w in lower}
        if None not in applied.values():
            applied.update((g.uuid, self.set_limit(now, g, w)) for g, w in higher)
        if applied:  # the limits in force now, which a failsafe that follows starts from (not those read before),
            # and the metric says (it said the limits read before for a tick: a false "limits over budget" each cut)
            self.samples = [replace(g, power_limit_w=w) if (w := applied.get(g.uuid)) is not None else g
                            for g in self.samples]
            self.export_limits()
        if self.clocks is not None:  # the lever steers each GPU's draw under the limit now in force on it, or
            # under the one a cut that failed wanted (the clock may still shed what the limit could not)
            cuts = {g.uuid: w for g, w in lower}
            after = {g.uuid: applied.get(g.uuid) or cuts.get(g.uuid) or g.power_limit_w for g in samples}
            self.clocks.step(now, samples, plan, after, frozenset(u for u, w in self.governor.cut_w.items() if w > 0),
                             untouched)
        m.emergency.set(1.0 if self.governor.emergency else 0.0)

    def _held_down(self, g: GpuSample, limit_w: float, plan: Plan) -> bool:
        """Whether the governor holds a GPU below its plan's cap (a cut, or a limit the budget squeezes under it)."""
        cap = plan.cap_w(g.service, g.variant) if g.service else None
        return self.governor.cut_w.get(g.uuid, 0.0) > 0 or (cap is not None and limit_w < cap - 1.0)

    def export_limits(self) -> None:
        """Each GPU's limit in force as the metrics say it, once set (by a tick, or while blind: no listing says them
        then), where the device read it back: node plans only queue theirs for a flush that may fail, so the next
        reading of what each node's agent runs says them."""
        if not self.read_back:
            return
        for g in self.samples:
            if (series := self.series.get(g.index)) is not None:
                series.limit.set(self._shown_limit(g))

    def _shown_limit(self, g: GpuSample) -> float:
        """A GPU's limit as the metrics say it: NaN for one whose limits are not known (none read or set)."""
        return math.nan if g.uuid in self.unknown else g.power_limit_w

    def set_limit(self, now: float, g: GpuSample, watts: float, forced: bool = False) -> float | None:
        """Set one GPU's limit, as its retry record allows (or `forced`); the limit in force after, None if unset."""
        target = limit_key(g.uuid)
        if not forced and not self.retry.may_try(target, now):
            return None
        m = self.metrics
        try:
            applied = self.power.set_power_limit(g.index, watts)
        except Exception as exc:  # a backend's error it did not translate is retried too: it may not stop a tick
            m.actuations.labels(self.power.name, "power_limit", "error").inc()
            if not self.retry.failed(target, now, exc if isinstance(exc, ActuatorError) else ActuatorError(repr(exc))):
                m.errors.labels("power_actuator").inc()  # the first of a run is counted where the book reports it
            return None
        self.retry.succeeded(target)
        m.actuations.labels(self.power.name, "power_limit", "ok").inc()
        if abs(applied - watts) > 1.0:
            log.debug("GPU %d limit %.0f W asked, %.0f W in force", g.index, watts, applied)
        return applied

    def _record_draws(self, samples: list[GpuSample], plan: Plan) -> None:
        """Per service, its GPUs' mean draw and limit at this tick (before its step: the limits the reading ran
        under) and whether the governor held any down; and each free GPU's draw (controller/empty_draw.py)."""
        by_service: dict[str, list[GpuSample]] = {}
        for g in samples:  # a reading of nothing or far past what the GPU can draw is none here (`is_draw`)
            if g.service is not None and g.power_w is not None:
                by_service.setdefault(g.service, []).append(g)
        self.ledger.add_free([(g.name, w) for g in samples if g.service is None and (w := g.power_w) is not None])
        cut = self.governor.cut_w

        def held(g: GpuSample) -> bool:
            """Cut by the governor, or drawing against a limit it set below the plan's cap (a limit with room
            over the draw holds nothing down: the draw is the load's own)."""
            limit_w = g.power_limit_w
            return cut.get(g.uuid, 0.0) > 0 or (self._held_down(g, limit_w, plan) and presses(g, limit_w))

        held_gpus = 0
        for service, gpus in by_service.items():
            n, below = len(gpus), sum(held(g) for g in gpus)
            held_gpus += below
            shares = [1.0 if self.clocks is None else self.clocks.share(g.index) for g in gpus]
            capped = [c for g in gpus if (c := g.capped_share) is not None]
            self.ledger.add(service, DrawReading(
                sum(map(accounted_w, gpus)) / n, sum(g.power_limit_w for g in gpus) / n, below > 0,
                sum(shares) / n if any(c < 1.0 for c in shares) else None,
                sum(capped) / len(capped) if capped else None))
        self.held_gpus = held_gpus
        self.held_series.set(held_gpus)

