"""A simulated GPU host: GPUs, vLLM services with replicas, routing, and the changes a controller makes.

Replicas start after a model-load delay, restart one at a time when `max_num_seqs` changes, and hand
their unfinished requests back to the router when they stop, as a real deployment behind a load
balancer would; with a shutdown timeout (vLLM's `--shutdown-timeout`), a replica scaled away or restarted
first takes no new request and finishes those it holds, up to that long, its GPU busy until it is gone.
Everything advances in simulated time through `advance_to`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from simulator.engine import VLLMEngine
from simulator.hardware import SPECS, SimGPU
from simulator.llms import LLMS, scaled, step_cost
from simulator.personality import ROOFLINE, Personality, chosen_for, get_personality
from simulator.power_law import DYNAMIC, get_power_law
from simulator.requests import RequestLog
from simulator.service import Leaving, Replica, SimService
from simulator.workload import Workload


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
        gpu_types: Sequence[str] = (),
        log_requests: bool = False,
        shutdown_timeout_s: float = 0.0,
        power_laws: Mapping[str, str] | None = None,
    ) -> None:
        """`personalities` maps "model|gpu_type" (or a model name) to an engine personality; any other pair
        runs the roofline law. `power_laws` maps a GPU type to its power law (`simulator/power_law.py`; any other
        type draws by the default one). `gpu_types`, where given, lists each GPU's type (a mixed host) instead of
        `num_gpus` of `gpu_type`. `log_requests` keeps every request's arrival and finish (what `wattscale
        simulate` scores); off, as in the daemon, nothing grows with the requests served. `shutdown_timeout_s`:
        how long a stopped replica drains (0: it aborts what it holds, vLLM's default)."""
        types = list(gpu_types) or [gpu_type] * num_gpus
        for name in types:
            if name not in SPECS:
                raise ValueError(f"gpu_type: unknown {name!r}, expected one of {sorted(SPECS)}")
        self.personalities = {k: get_personality(v) for k, v in (personalities or {}).items()}
        laws = {k: get_power_law(v) for k, v in (power_laws or {}).items()}
        self.gpus = [SimGPU(i, SPECS[name], laws.get(name, DYNAMIC)) for i, name in enumerate(types)]
        self.lost: set[int] = set()
        """GPUs fallen off the bus: no replica, no draw, not listed."""
        self.services: dict[str, SimService] = {}
        self.now_s = 0.0
        self.seed = seed
        self.start_delay_s = start_delay_s
        self.keep_samples = keep_samples
        self.log_requests = log_requests
        self.shutdown_timeout_s = shutdown_timeout_s
        self._rng = np.random.default_rng(seed)
        self._rolling: dict[str, list[Replica]] = {}
        """Per service, the replicas a rolling restart has still to restart, in order."""
        self._started = 0  # engines started so far: each gets its own metric series

    def add_service(self, name: str, model: str, workload: Workload, replicas: int, max_num_seqs: int,
                    accelerator: str | None = None) -> None:
        """A service whose replicas start on `accelerator` GPUs (None: the first GPU's type)."""
        if model not in LLMS:
            raise ValueError(f"model: unknown {model!r}, expected one of {sorted(LLMS)}")
        svc = SimService(name, model, accelerator or self.gpus[0].spec.name, workload, max_num_seqs,
                         requests=RequestLog(enabled=self.log_requests))
        self.services[name] = svc
        self.scale(name, replicas, delay_s=0.0)

    def keep_samples_from_now(self) -> None:
        """Every engine, running or started later, keeps its raw TTFT and ITL samples from now on: exact
        percentiles for a benchmark, beside what the histograms let Prometheus read."""
        self.keep_samples = True
        for svc in self.services.values():
            for r in svc.replicas:
                r.engine.metrics.ttft.keep()
                r.engine.metrics.itl.keep()

    @property
    def gpu_types(self) -> list[str]:
        """The GPU types on this host, in GPU order, each once."""
        return list(dict.fromkeys(g.spec.name for g in self.gpus))

    def ready_engines(self, name: str | None = None) -> list[VLLMEngine]:
        """The engines serving now, of one service or all: a replica loading its model is not, nor one draining
        (out of the router, as out of a Deployment's endpoints)."""
        services = self.services.values() if name is None else [self.services[name]]
        return [r.engine for s in services for r in s.replicas if r.ready_at_s <= self.now_s]

    def scraped_engines(self, name: str | None = None) -> list[VLLMEngine]:
        """The engines a /metrics scrape reads: those serving and those draining (a server exposes its metrics
        until it exits)."""
        services = self.services.values() if name is None else [self.services[name]]
        return [*self.ready_engines(name), *(g.replica.engine for s in services for g in s.leaving)]

    def in_use(self) -> set[int]:
        """GPUs a replica runs on, draining ones included."""
        return {r.gpu.index for s in self.services.values() for r in s.holding()}

    def free_gpus(self, gpu_type: str | None = None) -> list[SimGPU]:
        """GPUs with no replica (of one type, where given), lost ones left out."""
        used = self.in_use() | self.lost
        return [g for g in self.gpus if g.index not in used and gpu_type in (None, g.spec.name)]

    def personality(self, model: str, gpu_type: str | None = None) -> Personality:
        """The engine personality of `model` on `gpu_type` GPUs (None: the first GPU's type)."""
        return chosen_for(self.personalities, model, gpu_type or self.gpus[0].spec.name) or ROOFLINE

    def _new_replica(self, svc: SimService, gpu: SimGPU, delay_s: float) -> Replica:
        cost = scaled(step_cost(LLMS[svc.model], gpu.spec, self.seed), svc.cost_scale)
        rng = np.random.default_rng(self._rng.integers(1 << 63))
        ready = self.now_s + delay_s
        self._started += 1
        engine = VLLMEngine(svc.model, cost, gpu, svc.max_num_seqs, rng, start_s=ready, keep_samples=self.keep_samples,
                            engine_id=f"gpu{gpu.index}-{self._started}",
                            personality=self.personality(svc.model, gpu.spec.name), requests=svc.requests)
        return Replica(engine, gpu, ready)

    def scale(self, name: str, replicas: int, delay_s: float | None = None, gpu_type: str | None = None) -> int:
        """Set a service's replica count on `gpu_type` GPUs (None: the service's own type), bounded by free
        GPUs; returns the count of that type now in place."""
        svc = self.services[name]
        kind = gpu_type or svc.accelerator
        delay = self.start_delay_s if delay_s is None else delay_s
        mine = [r for r in svc.replicas if r.gpu.spec.name == kind]
        coming = [g for g in svc.restarting() if g.replica.gpu.spec.name == kind]  # a restart's, owed its GPU
        leaving = [g for g in svc.leaving if not g.restart and g.replica.gpu.spec.name == kind]
        while len(mine) + len(coming) < replicas:
            free = self.free_gpus(kind)
            if free:  # a free GPU first, as a scheduler places a new pod while the old one still terminates
                mine.append(self._new_replica(svc, free[0], delay))
                svc.replicas.append(mine[-1])
            elif leaving:  # none free: a new one starts on a draining replica's GPU once it is gone
                leaving[-1].restart = True
                coming.append(leaving.pop())
            else:
                break
        if svc.replicas and svc.held:  # what the router held for a restart goes to the replica started
            pending, svc.held = svc.held, []
            self._requeue(svc, pending)
        while len(mine) + len(coming) > max(0, replicas):
            if coming:
                coming.pop().restart = False  # it drains and is not started again
                continue
            gone = mine.pop()
            svc.replicas.remove(gone)
            if not self._drain(svc, gone, restart=False):
                self._requeue(svc, self._stop(gone))
        return len(mine) + len(coming)

    def lose_gpu(self, index: int) -> None:
        """GPU `index` falls off the bus: its replica dies (the router resubmits what it held to the service's other
        replicas; with none left they are lost, as arrivals to an empty service are) and it is neither listed nor
        used again."""
        self.lost.add(index)
        for svc in self.services.values():
            for rep in [r for r in svc.replicas if r.gpu.index == index]:
                svc.replicas.remove(rep)
                self._requeue(svc, self._stop(rep))
            for gone in [g for g in svc.leaving if g.replica.gpu.index == index]:
                self._release(svc, gone, restart=False)

    def slow_down(self, name: str, factor: float) -> None:
        """Every step of the service's engines, running and future, takes `factor` times as long."""
        svc = self.services[name]
        svc.cost_scale *= factor
        for rep in svc.holding():  # draining ones too: the upgrade slows every engine of the service
            rep.engine.cost = scaled(rep.engine.cost, factor)

    def restart_with_batch(self, name: str, max_num_seqs: int) -> None:
        """A rolling restart with a new `--max-num-seqs`: one replica at a time stops (or drains) and starts
        again, the next once every other serves, so the service never goes dark."""
        svc = self.services[name]
        svc.max_num_seqs = max_num_seqs
        self._rolling[name] = list(svc.replicas)
        self._do_swaps()

    def _do_swaps(self) -> None:
        if not self._rolling:
            return
        for name, queue in self._rolling.items():
            svc = self.services[name]
            while queue and not svc.restarting() and all(
                    r.ready_at_s <= self.now_s for r in svc.replicas):
                old = queue.pop(0)
                if old not in svc.replicas:
                    continue  # scaled away since
                i = svc.replicas.index(old)
                if self._drain(svc, old, restart=True):
                    svc.replicas.pop(i)
                else:
                    pending = self._stop(old)
                    svc.replicas[i] = self._new_replica(svc, old.gpu, self.start_delay_s)
                    self._requeue(svc, pending)
        self._rolling = {name: queue for name, queue in self._rolling.items() if queue}

    def _drain(self, svc: SimService, rep: Replica, restart: bool) -> bool:
        """Whether `rep`, taken off the router, drains what it holds rather than stopping at once."""
        if self.shutdown_timeout_s <= 0 or rep.ready_at_s > self.now_s or rep.engine.outstanding == 0:
            return False
        svc.leaving.append(Leaving(rep, self.now_s + self.shutdown_timeout_s, restart))
        return True

    def _leave(self) -> None:
        """Stop the draining replicas that finished what they held or ran out of time (what is left goes back to
        the router), a restart's new engine started on its GPU."""
        for svc in self.services.values():
            for gone in [g for g in svc.leaving if g.replica.engine.outstanding == 0 or self.now_s >= g.deadline_s]:
                self._release(svc, gone, gone.restart)

    def _release(self, svc: SimService, gone: Leaving, restart: bool) -> None:
        """A draining replica stops (lost or done): a restart's new engine starts on its GPU, and what it and
        the requests held for it hold goes back to the router."""
        svc.leaving.remove(gone)
        pending = self._stop(gone.replica)
        if restart:
            svc.replicas.append(self._new_replica(svc, gone.replica.gpu, self.start_delay_s))
        pending, svc.held = [*pending, *svc.held], []
        self._requeue(svc, pending)

    def set_power_limit(self, gpu_index: int, watts: float) -> float:
        return self.gpus[gpu_index].set_power_limit(watts)

    def lock_clock(self, gpu_index: int, mhz: int | None) -> int | None:
        return self.gpus[gpu_index].lock_clock(mhz)

    def _stop(self, rep: Replica) -> list[tuple[float, int, int]]:
        """Stop a replica now: its GPU stops drawing for the step it was in; what it held, for the router."""
        rep.gpu.cut_at(self.now_s)
        return rep.engine.drain()

    def _requeue(self, svc: SimService, requests: list[tuple[float, int, int]]) -> None:
        for req in requests:
            self._route(svc, req)

    def _route(self, svc: SimService, req: tuple[float, int, int]) -> None:
        """To the ready replica with the fewest requests (any replica while none is ready; held while the only one
        drains to restart)."""
        ready = [r for r in svc.replicas if r.ready_at_s <= max(self.now_s, req[0])] or svc.replicas
        if not ready:
            if svc.restarting():
                svc.held.append(req)
            return  # no replica at all: the request is dropped, as behind an empty service
        best = min(ready, key=lambda r: r.engine.outstanding)
        best.engine.submit(req[0], req[1], req[2])

    def advance_to(self, t_s: float, slice_s: float = 0.05) -> None:
        """Dispatch arrivals and run every engine up to `t_s`, in slices of `slice_s`."""
        while self.now_s < t_s:
            self._leave()
            self._do_swaps()
            end = min(t_s, self.now_s + slice_s)
            for svc in self.services.values():
                arrived = svc.workload.take(self.now_s, end)
                svc.requests.arrive([req[0] for req in arrived])
                for req in arrived:
                    self._route(svc, req)
                for rep in svc.replicas:
                    if rep.ready_at_s >= end:
                        rep.gpu.account(end - self.now_s, rep.gpu.spec.idle_w, end)  # loading the model
                    rep.engine.advance_to(end)
                for gone in svc.leaving:
                    gone.replica.engine.advance_to(end)
            busy = self.in_use()
            for gpu in self.gpus:
                if gpu.index not in busy and gpu.index not in self.lost:
                    gpu.account(end - self.now_s, gpu.spec.empty_w, end)  # no process on it
            self.now_s = end
