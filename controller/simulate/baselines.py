"""The policies operators run today, each the honest best of its kind:

- `static`: the fleet sized for the peak (sizing.py), the config's max batch, full power;
- `uniform-cap`: the same fleet, the budget split evenly over the GPUs as power limits;
- `threshold`: KEDA/HPA-style replica scaling on `vllm:num_requests_waiting` (target 5 a replica), full
  power, the budget held only by uniform caps when the site draws over it (`ReactiveCaps`).

They act on the simulated host directly, as a script with root on the box would, and see what it would:
the queue each replica reports, and the GPUs' energy counters (nothing while GPU telemetry is lost).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence

from controller.service_settings import ServiceSettings
from controller.simulate.plant import Outages
from simulator.host import SimHost

HEADROOM = 0.03
"""Share of the budget a reactive cap keeps free (the governor's default, so the two start even)."""
RELEASE_BELOW = 0.8
"""Reactive caps are lifted once the draw stays below this share of the budget ..."""
RELEASE_AFTER_S = 30.0
"""... for this long."""
HPA_SYNC_S = 15.0
"""The HPA controller's sync period."""
HPA_TARGET_WAITING = 5.0
"""Waiting requests per replica the threshold policy scales to."""
HPA_TOLERANCE = 0.1
"""No change while the metric is within this share of the target (HPA's default)."""
HPA_DOWN_WINDOW_S = 300.0
"""Scale-down stabilisation: the highest recommendation of this window wins (HPA's default)."""


class DrawMeter:
    """Draw of the site, or of the GPUs `gpus` (a power domain), from the GPUs' energy counters: the mean over
    the time since the last reading."""

    def __init__(self, host: SimHost, gpus: Sequence[int] | None = None) -> None:
        self.host = host
        self.gpus = range(len(host.gpus)) if gpus is None else gpus
        self._energy_j = self._total(host.now_s)
        self._t = host.now_s

    def _total(self, now: float) -> float:
        return sum(self.host.gpus[i].energy_at_j(now) for i in self.gpus)

    def read(self, now: float) -> float:
        energy = self._total(now)
        draw = (energy - self._energy_j) / max(now - self._t, 1e-9)
        self._energy_j, self._t = energy, now
        return draw


def level_limits(room_w: float, bounds: Sequence[tuple[float, float]]) -> list[float]:
    """One even level of limits over GPUs of these (lowest, highest) limits, summing to `room_w`: each held within its
    own, and what one cannot take handed on to the others (an L40S takes 350 W of an H100's 400-W share). Below their
    floors every one is at its lowest, above their tops at its highest. The sum is piecewise linear in the level, so
    it is solved exactly between the two limits that bracket it."""
    def total(level: float) -> float:
        return sum(min(hi, max(lo, level)) for lo, hi in bounds)

    points = sorted({w for b in bounds for w in b})
    level = points[-1] if points else 0.0  # the room past every top: each at its highest
    for a, b in itertools.pairwise(points):
        if total(b) >= room_w:  # the first bracket that holds it (below the first, every one at its lowest)
            inside = sum(lo <= a and hi >= b for lo, hi in bounds)  # the GPUs the level moves between a and b
            level = a + max(0.0, room_w - total(a)) / inside if inside else a
            break
    return [min(hi, max(lo, level)) for lo, hi in bounds]


def even_split(budget_w: float, host: SimHost) -> dict[int, float]:
    """The budget as power limits over the GPUs still on the bus: one with no replica at its lowest limit (it draws
    its idle power whatever its limit), the rest one even level over those serving (`level_limits`)."""
    live = [g for g in host.gpus if g.index not in host.lost]
    serving = host.in_use() & {g.index for g in live} or {g.index for g in live}  # nothing runs: all share it
    limits = {g.index: g.spec.min_limit_w for g in live if g.index not in serving}
    busy = [g for g in live if g.index in serving]
    levels = level_limits(budget_w - sum(limits.values()), [(g.spec.min_limit_w, g.spec.max_limit_w) for g in busy])
    return limits | {g.index: w for g, w in zip(busy, levels, strict=True)}


class UniformCaps:
    """The budget split evenly as limits over the GPUs serving (`even_split`), set again whenever the budget or the
    GPUs serving change (a replica started again after its GPU was lost)."""

    def __init__(self, host: SimHost) -> None:
        self.host = host
        self.budget_w = math.inf
        self._split_for: tuple[float, frozenset[int], frozenset[int]] | None = None

    def set_budget(self, budget_w: float, now: float, why: str = "scenario") -> None:
        self.budget_w = budget_w
        self.tick(now)

    def tick(self, now: float) -> None:
        """Split the budget again where it or the GPUs serving changed since the last split."""
        key = (self.budget_w, frozenset(self.host.in_use()), frozenset(self.host.lost))
        if key != self._split_for and math.isfinite(self.budget_w):
            self._split_for = key
            for i, watts in even_split(self.budget_w, self.host).items():
                self.host.gpus[i].set_power_limit(watts)


class ReactiveCaps:
    """Full power until the site draws over the budget, then the GPUs capped at an even split of it (`even_split`,
    again whenever the GPUs serving change), lifted after the draw has stayed well below it for a while. Blind while
    GPU telemetry is lost."""

    def __init__(self, host: SimHost, outages: Outages) -> None:
        self.host, self.outages = host, outages
        self.meter = DrawMeter(host)
        self.budget_w = math.inf
        self.capped = False
        self.calm_s = 0.0
        self._last = host.now_s
        self._serving: frozenset[int] = frozenset()

    def set_budget(self, budget_w: float, now: float, why: str = "scenario") -> None:
        self.budget_w = budget_w

    def tick(self, now: float) -> None:
        dt, self._last = now - self._last, now
        if self.outages.blind(now):
            return
        draw = self.meter.read(now)
        threshold = self.budget_w * (1.0 - HEADROOM)
        serving = frozenset(self.host.in_use())
        if draw > threshold or (self.capped and serving != self._serving):
            if draw > threshold:
                self.capped, self.calm_s = True, 0.0
            self._serving = serving
            for i, watts in even_split(threshold, self.host).items():
                self.host.gpus[i].set_power_limit(watts)
        elif self.capped:
            self.calm_s = self.calm_s + dt if draw < RELEASE_BELOW * self.budget_w else 0.0
            if self.calm_s >= RELEASE_AFTER_S:
                self.capped = False
                for g in self.host.gpus:
                    if g.index not in self.host.lost:
                        g.set_power_limit(g.spec.max_limit_w)


class ReplicaSets:
    """What each service's Deployments keep: the replicas last placed per GPU type, a replica lost with its GPU
    started again at once on a free GPU of its type (or as soon as one frees), as a ReplicaSet replaces a deleted pod.
    The best case: Kubernetes alone restarts the container in place until something deletes the pod."""

    def __init__(self, host: SimHost) -> None:
        self.host = host
        self.placed = {name: self.counts(name) for name in host.services}

    def counts(self, name: str) -> dict[str, int]:
        """Replicas of the service per GPU type, those a rolling restart will start again included."""
        svc = self.host.services[name]
        out: dict[str, int] = {}
        for rep in [*svc.replicas, *(g.replica for g in svc.restarting())]:
            out[rep.gpu.spec.name] = out.get(rep.gpu.spec.name, 0) + 1
        return out

    def keep(self) -> None:
        for name, placed in self.placed.items():
            have = self.counts(name)
            for kind, n in placed.items():
                if have.get(kind, 0) < n and self.host.free_gpus(kind):
                    self.host.scale(name, n, gpu_type=kind)


class StaticPolicy:
    """`static` (caps None) and `uniform-cap`: the fleet stays as deployed, a replica lost with its GPU started
    again on a free one."""

    def __init__(self, host: SimHost, caps: UniformCaps | None) -> None:
        self.caps = caps
        self.fleet = ReplicaSets(host)

    def set_budget(self, budget_w: float, now: float, why: str = "scenario") -> None:
        if self.caps is not None:
            self.caps.set_budget(budget_w, now)

    def tick_fast(self, now: float) -> bool:
        """The fleet kept, its caps split again where the GPUs serving changed (never an early slow tick)."""
        self.fleet.keep()
        if self.caps is not None:
            self.caps.tick(now)
        return False

    def tick_slow(self, now: float) -> None:
        """Nothing: a static fleet does not react."""


class ThresholdPolicy:
    """HPA on waiting requests: desired = ceil(replicas x waiting per replica / target), up at once (at most
    double, or +4), down to the highest recommendation of the last five minutes."""

    def __init__(self, host: SimHost, services: tuple[ServiceSettings, ...], variants: dict[str, list[str]],
                 caps: ReactiveCaps) -> None:
        self.host, self.services, self.variants, self.caps = host, services, variants, caps
        self.fleet = ReplicaSets(host)
        self.history = {s.name: deque([(host.now_s, self._spec(s.name))]) for s in services}
        """Per service, (time, recommendation) of the scale-down window; it starts with the replicas deployed,
        as the HPA controller's does."""
        self.next_sync_s = HPA_SYNC_S

    def set_budget(self, budget_w: float, now: float, why: str = "scenario") -> None:
        self.caps.set_budget(budget_w, now)

    def tick_fast(self, now: float) -> bool:
        """The fleet kept, the uniform caps' tick, and the HPA's sync on its own period (never an early slow tick)."""
        self.fleet.keep()
        self.caps.tick(now)
        if now >= self.next_sync_s:
            self.next_sync_s += HPA_SYNC_S
            for svc in self.services:
                self._sync(now, svc)
        return False

    def tick_slow(self, now: float) -> None:
        """Nothing beyond the HPA's own sync period."""

    def _spec(self, name: str) -> int:
        """The Deployments' replicas: those placed, whether or not a lost GPU's is running again yet."""
        return sum(self.fleet.placed[name].values())

    def _sync(self, now: float, svc: ServiceSettings) -> None:
        engines = self.host.ready_engines(svc.name)
        current = self._spec(svc.name)
        if not engines or current == 0:
            desired = max(1, svc.min_replicas)
        else:
            ratio = sum(e.num_waiting for e in engines) / len(engines) / HPA_TARGET_WAITING
            desired = current if abs(ratio - 1.0) <= HPA_TOLERANCE else math.ceil(current * ratio)
        desired = min(svc.max_replicas, max(svc.min_replicas, desired, 1), max(2 * current, current + 4))
        history = self.history[svc.name]
        history.append((now, desired))
        while history and history[0][0] < now - HPA_DOWN_WINDOW_S:
            history.popleft()
        target = desired if desired > current else max(d for _, d in history)
        if target != current:
            self._scale(svc.name, target)

    def _scale(self, name: str, target: int) -> None:
        """Grow on the first variant with a free GPU; shrink the last variant that has replicas."""
        kinds = self.variants[name]
        counts = {k: self.fleet.placed[name].get(k, 0) for k in kinds}
        total = sum(counts.values())
        for k in (kinds if target > total else reversed(kinds)):
            if target > total and self.host.free_gpus(k):
                counts[k] = self.host.scale(name, counts[k] + min(target - total, len(self.host.free_gpus(k))),
                                            gpu_type=k)
            elif target < total and counts[k]:
                counts[k] = self.host.scale(name, max(0, counts[k] - (total - target)), gpu_type=k)
            total = sum(counts.values())
        self.fleet.placed[name] = {k: n for k, n in counts.items() if n}
