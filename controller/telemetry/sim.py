"""Sources that read the simulated host: GPU samples, and vLLM windows from the emulator's collector."""

from __future__ import annotations

import threading
from dataclasses import replace

from controller.telemetry.base import GpuSample, ServiceWindow
from controller.telemetry.capped import CappedShares
from controller.telemetry.vllm_window import FAMILIES, Snapshot, snapshots, window
from simulator.host import SimHost
from simulator.vllm_metrics import VllmCollector


class SimGpuSource:
    def __init__(self, host: SimHost, lock: threading.Lock | None = None) -> None:
        self.host, self.lock = host, lock or threading.Lock()
        self._capped = CappedShares()

    def sample(self, now: float) -> list[GpuSample]:
        with self.lock:
            return self._sample(now)

    def _sample(self, now: float) -> list[GpuSample]:
        owner = {r.gpu.index: s.name for s in self.host.services.values() for r in s.holding()}
        return [
            GpuSample(
                index=g.index,
                uuid=g.uuid,
                name=g.spec.name,
                power_w=g.sample_power_w(),
                energy_j=g.energy_j,
                power_limit_w=g.power_limit_w,
                min_limit_w=g.spec.min_limit_w,
                max_limit_w=g.spec.max_limit_w,
                sm_clock_mhz=g.sm_clock_mhz,
                service=owner.get(g.index),
                variant=g.spec.name if g.index in owner else None,
                capped_share=self._capped.share(g.uuid, now, g.capped_at_s(now)),
            )
            for g in self.host.gpus
            if g.index not in self.host.lost  # fallen off the bus: NVML no longer lists it
        ]


class SimVllmSource:
    """Reads each service's engines through the same families a /metrics page would carry (those a window
    reads: every engine is in each of them, so the rest would add nothing)."""

    def __init__(self, host: SimHost, lock: threading.Lock | None = None) -> None:
        self.host, self.lock = host, lock or threading.Lock()
        self._last: dict[str, Snapshot] = {}

    def observe(self, now: float, services: list[str]) -> dict[str, ServiceWindow | None]:
        out: dict[str, ServiceWindow | None] = {}
        for name in services:
            svc = self.host.services.get(name)
            if svc is None:
                out[name] = None
                continue
            with self.lock:
                engines = self.host.scraped_engines(name)  # those serving, then those draining
                serving, draining = len(engines) - len(svc.leaving), bool(svc.leaving)
                families = list(VllmCollector(lambda e=engines: e, FAMILIES).collect())  # type: ignore[misc]
            snap = snapshots(families, now).get(svc.model, Snapshot(now))
            old = self._last.get(name)
            self._last[name] = snap
            w = None if old is None else window(snap, old)
            # A draining server is still scraped (its completions count) but serves no new request: a window it
            # drains in is no steady state (one whose drain ended is not either: its engine left the scrape), and
            # its replicas are those serving.
            out[name] = w if w is None else replace(w, replicas=serving, steady=w.steady and not draining)
        return out
