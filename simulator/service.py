"""One simulated service's replicas: those serving, those draining after a stop, and what the router holds."""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator.engine import VLLMEngine
from simulator.hardware import SimGPU
from simulator.requests import RequestLog
from simulator.workload import Workload


@dataclass
class Replica:
    """One vLLM server process on one GPU; serves once `ready_at_s` has passed."""

    engine: VLLMEngine
    gpu: SimGPU
    ready_at_s: float


@dataclass
class Leaving:
    """A replica draining after its stop: routed nothing, serving what it holds until `deadline_s`."""

    replica: Replica
    deadline_s: float
    restart: bool
    """A rolling restart's: a new engine starts on its GPU once it is gone."""


@dataclass
class SimService:
    """The replicas of one model behind a join-shortest-queue router."""

    name: str
    model: str
    accelerator: str
    workload: Workload
    max_num_seqs: int
    replicas: list[Replica] = field(default_factory=list)
    requests: RequestLog = field(default_factory=RequestLog)
    leaving: list[Leaving] = field(default_factory=list)
    held: list[tuple[float, int, int]] = field(default_factory=list)
    """Requests that came while its one replica drained for a restart: the router holds them for the next."""
    cost_scale: float = 1.0
    """Every step of its engines takes this many times the pair's hidden cost (a drift after an upgrade)."""

    def restarting(self) -> list[Leaving]:
        """The replicas a rolling restart drains, each to start again on its GPU."""
        return [g for g in self.leaving if g.restart]

    def holding(self) -> list[Replica]:
        """Its replicas and those draining: each holds its GPU."""
        return [*self.replicas, *(g.replica for g in self.leaving)]

    def counted(self) -> list[Replica]:
        """Its replicas as its deployment counts them: a restart's draining one included."""
        return [*self.replicas, *(g.replica for g in self.restarting())]

    def count(self, gpu_type: str | None = None) -> int:
        """How many it counts (of one type, where given)."""
        return sum(gpu_type in (None, r.gpu.spec.name) for r in self.counted())
