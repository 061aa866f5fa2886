"""A simulated GPU host: GPUs, vLLM services with replicas, routing, and the changes a controller makes.

Replicas start after a model-load delay, restart one at a time when `max_num_seqs` changes, and hand
their unfinished requests back to the router when they stop, as a real deployment behind a load
balancer would. Everything advances in simulated time through `advance_to`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from simulator.engine import VLLMEngine
from simulator.hardware import SPECS, SimGPU
from simulator.llms import LLMS, step_cost
from simulator.personality import ROOFLINE, Personality, get_personality
from simulator.workload import Workload


@dataclass
class Replica:
    """One vLLM server process on one GPU; serves once `ready_at_s` has passed."""

    engine: VLLMEngine
    gpu: SimGPU
    ready_at_s: float


@dataclass
class SimService:
    """The replicas of one model behind a join-shortest-queue router."""

    name: str
    model: str
    accelerator: str
    workload: Workload
    max_num_seqs: int
    replicas: list[Replica] = field(default_factory=list)


class SimHost:
    """The plant the controller drives in simulation."""

    def __init__(
        self,
        gpu_type: str,
        num_gpus: int,
        seed: int = 0,
        start_delay_s: float = 30.0,
        keep_samples: bool = False,
        personalities: Mapping[str, str] | None = None,
    ) -> None:
        """`personalities` maps "model|gpu_type" (or a model name) to an engine personality; any other pair
        runs the roofline law."""
        if gpu_type not in SPECS:
            raise ValueError(f"gpu_type: unknown {gpu_type!r}, expected one of {sorted(SPECS)}")
        self.personalities = {k: get_personality(v) for k, v in (personalities or {}).items()}
        self.gpus = [SimGPU(i, SPECS[gpu_type]) for i in range(num_gpus)]
        self.services: dict[str, SimService] = {}
        self.now_s = 0.0
        self.seed = seed
        self.start_delay_s = start_delay_s
        self.keep_samples = keep_samples
        self._rng = np.random.default_rng(seed)
        self._swaps: list[tuple[float, str, int]] = []  # (when, service, replica) of rolling restarts
        self._started = 0  # engines started so far: each gets its own metric series

    def add_service(self, name: str, model: str, workload: Workload, replicas: int, max_num_seqs: int) -> None:
        if model not in LLMS:
            raise ValueError(f"model: unknown {model!r}, expected one of {sorted(LLMS)}")
        svc = SimService(name, model, self.gpus[0].spec.name, workload, max_num_seqs)
        self.services[name] = svc
        self.scale(name, replicas, delay_s=0.0)

    def ready_engines(self, name: str | None = None) -> list[VLLMEngine]:
        """The engines serving now (a replica loading its model is not), of one service or all."""
        services = self.services.values() if name is None else [self.services[name]]
        return [r.engine for s in services for r in s.replicas if r.ready_at_s <= self.now_s]

    def free_gpus(self) -> list[SimGPU]:
        used = {r.gpu.index for s in self.services.values() for r in s.replicas}
        return [g for g in self.gpus if g.index not in used]

    def personality(self, model: str) -> Personality:
        """The engine personality of `model` on this host's GPUs."""
        found = self.personalities.get(f"{model}|{self.gpus[0].spec.name}") or self.personalities.get(model)
        return found or ROOFLINE

    def _new_replica(self, svc: SimService, gpu: SimGPU, delay_s: float) -> Replica:
        cost = step_cost(LLMS[svc.model], gpu.spec, self.seed)
        rng = np.random.default_rng(self._rng.integers(1 << 63))
        ready = self.now_s + delay_s
        self._started += 1
        engine = VLLMEngine(svc.model, cost, gpu, svc.max_num_seqs, rng, start_s=ready, keep_samples=self.keep_samples,
                            engine_id=f"gpu{gpu.index}-{self._started}", personality=self.personality(svc.model))
        return Replica(engine, gpu, ready)

    def scale(self, name: str, replicas: int, delay_s: float | None = None) -> int:
        """Set a service's replica count, bounded by free GPUs; returns the count now in place."""
        svc = self.services[name]
        delay = self.start_delay_s if delay_s is None else delay_s
        while len(svc.replicas) < replicas:
            free = self.free_gpus()
            if not free:
                break
            svc.replicas.append(self._new_replica(svc, free[0], delay))
        while len(svc.replicas) > max(0, replicas):
            gone = svc.replicas.pop()
            self._requeue(svc, gone.engine.drain())
        return len(svc.replicas)

    def restart_with_batch(self, name: str, max_num_seqs: int) -> None:
        """A rolling restart with a new `--max-num-seqs`: replica i stops at now + i * delay, once the one
        before it is back, so the service never goes dark."""
        svc = self.services[name]
        svc.max_num_seqs = max_num_seqs
        self._swaps = [w for w in self._swaps if w[1] != name]
        for i in range(len(svc.replicas)):
            self._swaps.append((self.now_s + self.start_delay_s * i, name, i))
        self._swaps.sort()
        self._do_swaps()

    def _do_swaps(self) -> None:
        while self._swaps and self._swaps[0][0] <= self.now_s:
            _, name, i = self._swaps.pop(0)
            svc = self.services[name]
            if i >= len(svc.replicas):
                continue
            old = svc.replicas[i]
            pending = old.engine.drain()
            svc.replicas[i] = self._new_replica(svc, old.gpu, self.start_delay_s)
            self._requeue(svc, pending)

    def set_power_limit(self, gpu_index: int, watts: float) -> float:
        return self.gpus[gpu_index].set_power_limit(watts)

    def lock_clock(self, gpu_index: int, mhz: int | None) -> int | None:
        return self.gpus[gpu_index].lock_clock(mhz)

    def _requeue(self, svc: SimService, requests: list[tuple[float, int, int]]) -> None:
        for req in requests:
            self._route(svc, req)

    def _route(self, svc: SimService, req: tuple[float, int, int]) -> None:
        ready = [r for r in svc.replicas if r.ready_at_s <= max(self.now_s, req[0])] or svc.replicas
        if not ready:
            return  # no replica at all: the request is dropped, as behind an empty service
        best = min(ready, key=lambda r: r.engine.outstanding)
        best.engine.submit(req[0], req[1], req[2])

    def advance_to(self, t_s: float, slice_s: float = 0.05) -> None:
        """Dispatch arrivals and run every engine up to `t_s`, in slices of `slice_s`."""
        while self.now_s < t_s:
            self._do_swaps()
            end = min(t_s, self.now_s + slice_s)
            for svc in self.services.values():
                for req in svc.workload.take(self.now_s, end):
                    self._route(svc, req)
                for rep in svc.replicas:
                    if rep.ready_at_s >= end:
                        rep.gpu.account(end - self.now_s, rep.gpu.spec.idle_w)  # loading the model
                    rep.engine.advance_to(end)
            busy = {r.gpu.index for s in self.services.values() for r in s.replicas}
            for gpu in self.gpus:
                if gpu.index not in busy:
                    gpu.account(end - self.now_s, gpu.spec.idle_w)
            self.now_s = end
