"""The allocation problem: services under SLOs, accelerator inventory, a site power budget and its power
domains."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal, NamedTuple

from queuemodels import DEFAULT_MAX_QUEUE, DEFAULT_MODEL, Load, Performance, PowerProfile, ServiceParams, Targets
from queuemodels.accelerators import CATALOG

Objective = Literal["cost", "token_speed", "energy"]


@dataclass(frozen=True)
class AcceleratorType:
    """A GPU type on offer."""

    name: str
    count: int
    cost_per_hour: float
    profile: PowerProfile
    gpus_per_replica: int = 1


@dataclass(frozen=True)
class Assignment:
    """How one service is served: accelerator, replicas, `--max-num-seqs`, per-GPU power cap, and the SM clock
    its GPUs are locked at as a share of their maximum (None: unlocked)."""

    accelerator: str
    replicas: int
    max_batch: int
    power_cap_w: float
    sm_clock_fraction: float | None = None


@dataclass(frozen=True)
class ServiceDemand:
    """One LLM service: its class, load, bounds, model parameters per accelerator, current assignment."""

    name: str
    priority: int
    targets: Targets
    load: Load
    params: dict[str, ServiceParams]
    min_replicas: int = 1
    max_replicas: int = 64
    max_queue: int = DEFAULT_MAX_QUEUE
    current: Assignment | None = None
    profiles: dict[str, PowerProfile] = field(default_factory=dict)
    """Its model's power profile per accelerator, as the tuner fitted it (its draw curve above all); the
    accelerator's catalogue profile where absent."""

    gpus: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Per accelerator, the GPU indices its replicas take, in order (a host's `gpus` list): replica k runs on
    the k-th (`gpus_per_replica` each). Absent: placement unknown (any free GPU), held per domain by the
    governor alone."""
    untried: frozenset[str] = frozenset()
    """Accelerators it does not run on whose pair no window has measured: its parameters there are a prior
    written for another type. They are planned at `Problem.untried_margin`, or, `untried_at_risk`, at its own
    margin with a share of what it serves there counted as unserved (values.UNTRIED_RISK)."""
    untried_at_risk: bool = False
    serving: int | None = None
    """Replicas that served its last window (a replica still loading its model serves none); None: not known. The
    fit of its caps waits while fewer serve than it plans (optimizer/limit_fit.py)."""

    def profile(self, acc: AcceleratorType) -> PowerProfile:
        return self.profiles.get(acc.name, acc.profile)

    def targets_on(self, accelerator: str, untried_margin: float) -> Targets:
        """Its targets as planned on `accelerator`: an untried type's less `untried_margin` at least, unless at
        risk."""
        if accelerator not in self.untried or self.untried_at_risk or untried_margin <= self.targets.margin:
            return self.targets
        return replace(self.targets, margin=untried_margin)


@dataclass(frozen=True)
class DomainRoom:
    """A power domain (a rack, a PDU) the plan must fit, as the site's budget: the draw above its GPUs' idle
    that the plan may predict there."""

    name: str
    room_w: float
    gpus: frozenset[int]


@dataclass(frozen=True)
class Problem:
    services: tuple[ServiceDemand, ...]
    accelerators: tuple[AcceleratorType, ...]
    budget_w: float
    objective: Objective = "token_speed"
    budget_mode: Literal["predicted", "caps"] = "predicted"
    batch_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    power_levels: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9, 1.0)
    transition_penalty: float = 0.05
    queue_model: str = DEFAULT_MODEL
    clock_levels: tuple[float, ...] = (1.0,)
    """Locked SM clocks to choose among, as shares of the maximum (1.0: unlocked); see optimizer/clocks.py."""
    clock_min_saving: float = 0.05
    """Least share of a service's energy per request a locked clock must be predicted to save against the free
    clock before it is planned (optimizer/clocks.py: a smaller saving is within the model's errors)."""
    domains: tuple[DomainRoom, ...] = ()
    """Power domains the plan fits within as well as the site (optimizer/domains.py)."""
    energy_weight: float = 0.0
    """Token speed only: the price of a watt of a candidate's draw, as a share of the fastest plan's token speed
    per watt of the site's draw (values.energy_price)."""
    untried_margin: float = 0.5
    """The margin a service's untried types are planned at (`ServiceDemand.untried`): their prior must meet its
    targets with this much to spare."""

    def accelerator(self, name: str) -> AcceleratorType:
        return next(a for a in self.accelerators if a.name == name)

    def shed_gpus(self, cands: Sequence[Sequence[Candidate]]) -> list[tuple[str, int]]:
        """The GPUs each service holds shed (`ServiceResult.planned`), on the accelerator it runs on: its min replicas,
        or with no candidate at all (no shape meets its targets) the replicas it runs; ("", 0) where nothing runs.
        Left out of the inventory rows, they were planned for other services, whose starts then found no GPU."""
        accs = {a.name: a for a in self.accelerators}
        out = []
        for svc, cs in zip(self.services, cands, strict=True):
            acc = accs.get(svc.current.accelerator) if svc.current is not None else None
            if svc.current is None or acc is None:
                out.append(("", 0))
            else:
                wanted = (svc.min_replicas if cs else svc.current.replicas) * acc.gpus_per_replica
                out.append((acc.name, min(wanted, acc.count)))  # no more than its type has (a GPU lost)
        return out

    @property
    def idle_w(self) -> float:
        """What every GPU counts for with no replica on it: the floor any plan pays (a candidate's draw is above it,
        its replicas' idle included), `floor_w` a GPU."""
        return sum(a.count * self.floor_w(a) for a in self.accelerators)

    def floor_w(self, acc: AcceleratorType) -> float:
        """What a GPU of `acc` counts for with no replica: its draw then, or in caps mode its lowest limit, where the
        governor holds it (counted at its draw, a free H100 left 138 W of limits past a caps plan's budget)."""
        return acc.profile.min_power_w if self.budget_mode == "caps" else acc.profile.empty_draw_w


class Candidate(NamedTuple):
    """One way to serve one service, with its predicted figures and its value to the objective (a named tuple: a
    fleet's cycle builds hundreds of thousands, and a frozen dataclass costs four times more to build)."""

    service: int
    assignment: Assignment
    gpus: int
    power_w: float
    """Draw of the GPUs it occupies above what they draw with no replica (what it adds to the site's power); in caps
    mode their caps above their lowest limits (`Problem.floor_w`)."""
    cost_per_hour: float
    served_rps: float
    short_rps: float
    score: float
    value: float = 0.0
    spare: int = 0
    """Replicas beyond what its shape needs for the load (offered to the token-speed objective)."""


make_candidate = partial(tuple.__new__, Candidate)
"""A Candidate from its fields in order, as `Candidate._make` builds it less its Python-level checks (a fleet's
cycle builds hundreds of thousands)."""


@dataclass
class ServiceResult:
    name: str
    assignment: Assignment | None
    performance: Performance | None
    power_w: float
    cost_per_hour: float
    short_rps: float = 0.0
    reason: str | None = None

    def planned(self, current: Assignment, min_replicas: int, most: int | None = None) -> Assignment:
        """What to run in place of `current`: the assignment chosen; where none is, `current` for a service no
        shape serves within its SLO (the model says so: starving it would only make that worse), and the least
        it may have (its min replicas at the floor cap, no more than the `most` its type holds) for one shed for
        budget or inventory."""
        if self.assignment is not None:
            return self.assignment
        if self.reason == "slo":
            return current
        floor_w = CATALOG[current.accelerator].min_power_w
        replicas = min_replicas if most is None else min(min_replicas, most)
        return Assignment(current.accelerator, replicas, current.max_batch, floor_w)


@dataclass
class Solution:
    solver: str
    services: list[ServiceResult]
    power_w: float
    cost_per_hour: float
    objective: float
    solve_s: float
    candidates_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    ceilings_w: dict[str, float] = field(default_factory=dict)
    """Service -> the cap chosen before the caps were fitted within the limits' sum: how far the governor may grow
    one of its GPUs that its fitted cap holds down."""

    @property
    def shortfalls(self) -> list[ServiceResult]:
        return [s for s in self.services if s.reason is not None]


Choice = list[Candidate | None]
"""One candidate per service, or None where it is shed."""


def choice_value(choice: Sequence[Candidate | None], shed: Sequence[float]) -> float:
    """What every solver maximises: each chosen candidate's value, each shed service's penalty."""
    return sum(c.value if c is not None else v for c, v in zip(choice, shed, strict=True))


def gpus_used(choice: Sequence[Candidate | None], held: Sequence[tuple[str, int]],
              but: int | None = None) -> dict[str, int]:
    """GPUs per type a choice runs: each pick's, and the GPUs each shed service holds (`Problem.shed_gpus`); all
    services' but `but`'s."""
    used: dict[str, int] = {}
    for k, (c, (acc, n)) in enumerate(zip(choice, held, strict=True)):
        if c is not None:
            acc, n = c.assignment.accelerator, c.gpus
        if k != but and n > 0:
            used[acc] = used.get(acc, 0) + n
    return used
