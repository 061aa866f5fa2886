"""The policies operators run today, each the honest best of its kind:

- `static`: the fleet sized for the peak (sizing.py), the config's max batch, full power;
- `uniform-cap`: the same fleet, the budget split evenly over the GPUs as power limits;
- `threshold`: KEDA/HPA-style replica scaling on `vllm:num_requests_waiting` (target 5 a replica), full
  power, the budget held only by uniform caps when the site draws over it (`ReactiveCaps`).

They act on the simulated host directly, as a script with root on the box would, and see what it would:
the queue each replica reports, and the GPUs' energy counters (nothing while GPU telemetry is lost).
"""

from __future__ import annotations

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


class UniformCaps:
    """The budget split evenly over the host's GPUs as limits, set again whenever the budget changes."""

    def __init__(self, host: SimHost) -> None:
        self.host = host

    def set_budget(self, budget_w: float, now: float, why: str = "scenario") -> None:
        share = budget_w / len(self.host.gpus)
        for g in self.host.gpus:
            if g.index not in self.host.lost:
                g.set_power_limit(share)


class ReactiveCaps:
    """Full power until the site draws over the budget, then every GPU capped at an even share of it, lifted
    after the draw has stayed well below it for a while. Blind while GPU telemetry is lost."""

    def __init__(self, host: SimHost, outages: Outages) -> None:
        self.host, self.outages = host, outages
        self.meter = DrawMeter(host)
        self.budget_w = math.inf
        self.capped = False
        self.calm_s = 0.0
        self._last = host.now_s

    def set_budget(self, budget_w: float, now: float, why: str = "scenario") -> None:
        self.budget_w = budget_w

    def tick(self, now: float) -> None:
        dt, self._last = now - self._last, now
        if self.outages.blind(now):
            return
        draw = self.meter.read(now)
        live = [g for g in self.host.gpus if g.index not in self.host.lost]
        threshold = self.budget_w * (1.0 - HEADROOM)
        if draw > threshold:
            self.capped, self.calm_s = True, 0.0
            for g in live:
                g.set_power_limit(threshold / len(live))
        elif self.capped:
            self.calm_s = self.calm_s + dt if draw < RELEASE_BELOW * self.budget_w else 0.0
            if self.calm_s >= RELEASE_AFTER_S:
                self.capped = False
                for g in live:
                    g.set_power_limit(g.spec.max_limit_w)


class StaticPolicy:
    """`static` (caps None) and `uniform-cap`: the fleet stays as deployed."""

    def __init__(self, caps: UniformCaps | None) -> None:
        self.caps = caps

    def set_budget(self, budget_w: float, now: float, why: str = "scenario") -> None:
        if self.caps is not None:
            self.caps.set_budget(budget_w, now)

    def tick_fast(self, now: float) -> bool:
        """Nothing: a static fleet does not react (and asks for no early slow tick)."""
        return False

    def tick_slow(self, now: float) -> None:
        """Nothing: a static fleet does not react."""


class ThresholdPolicy:
    """HPA on waiting requests: desired = ceil(replicas x waiting per replica / target), up at once (at most
    double, or +4), down to the highest recommendation of the last five minutes."""

    def __init__(self, host: SimHost, services: tuple[ServiceSettings, ...], variants: dict[str, list[str]],
                 caps: ReactiveCaps) -> None:
        self.host, self.services, self.variants, self.caps = host, services, variants, caps
        self.history = {s.name: deque([(host.now_s, len(host.services[s.name].replicas))]) for s in services}
        """Per service, (time, recommendation) of the scale-down window; it starts with the replicas deployed,
        as the HPA controller's does."""
        self.next_sync_s = HPA_SYNC_S

    def set_budget(self, budget_w: float, now: float, why: str = "scenario") -> None:
        self.caps.set_budget(budget_w, now)

    def tick_fast(self, now: float) -> bool:
        """The uniform caps' tick, and the HPA's sync on its own period (never an early slow tick)."""
        self.caps.tick(now)
        if now >= self.next_sync_s:
            self.next_sync_s += HPA_SYNC_S
            for svc in self.services:
                self._sync(now, svc)
        return False

    def tick_slow(self, now: float) -> None:
        """Nothing beyond the HPA's own sync period."""

    def _sync(self, now: float, svc: ServiceSettings) -> None:
        engines = self.host.ready_engines(svc.name)
        current = len(self.host.services[svc.name].replicas)
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
        counts = {k: sum(r.gpu.spec.name == k for r in self.host.services[name].replicas) for k in kinds}
        total = sum(counts.values())
        for k in (kinds if target > total else reversed(kinds)):
            if target > total and self.host.free_gpus(k):
                counts[k] = self.host.scale(name, counts[k] + min(target - total, len(self.host.free_gpus(k))),
                                            gpu_type=k)
            elif target < total and counts[k]:
                counts[k] = self.host.scale(name, max(0, counts[k] - (total - target)), gpu_type=k)
            total = sum(counts.values())
