"""The `QueueModel` protocol and the state-dependent M/M/1/K batch models behind it, by name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

import numpy as np

from queuemodels.chain import BLOCKING_NEGLIGIBLE, Stationary
from queuemodels.continuous_arrays import continuous_laws
from queuemodels.continuous_law import continuous_law
from queuemodels.kv_cache import fitting_shape
from queuemodels.law_arrays import ManyLawFn, Points
from queuemodels.operating_point import blocking, evaluate, occupancy, slowed_to, solve_chain
from queuemodels.params import Point, ServiceParams
from queuemodels.power import Occupancy
from queuemodels.service_time import LawFn, StepLaw, capped_law
from queuemodels.sizing import max_rate, max_rates_of, saturation_rps, within_targets, within_targets_of
from queuemodels.stacked import Figures, solve_together
from queuemodels.step_arrays import Bools, Floats
from queuemodels.targets import Performance, Targets
from queuemodels.types import Load, ModelInputError, PowerProfile, ServerShape, Unstable

ACCEPTED_STEPS = 200
"""The most tries of the accepted rate (`ChainModel._accepted`): a handful where some arrivals get in; 200 halvings
reach 1e-60 of the offered rate where almost none do."""
ACCEPTED_TOLERANCE = 1e-6
"""Width of the accepted rate's bracket, relative to its top, at which it is taken (1e-4 read a saturated TTFT 0.4 %
apart from the root's; regula falsi reaches 1e-6 in a try or two more)."""


class PointFigures(NamedTuple):
    """The means a point is valued or fitted by."""

    mean_in_system: float
    ttft_ms: float
    itl_ms: float
    prefill_ms: float
    """The prompt's own steps at the batch it joins: TTFT less the queueing."""
    power_w: float


class QueueModel(Protocol):
    """Predicts one replica's performance, the largest rate it can take within targets, and where its time
    goes (batch sizes and prompts: what its power draw follows)."""

    @property
    def name(self) -> str: ...

    def analyze(
        self,
        params: ServiceParams,
        load: Load,
        shape: ServerShape,
        profile: PowerProfile | None = None,
        tails: bool = True,
    ) -> Performance: ...

    def max_rate(
        self,
        params: ServiceParams,
        load: Load,
        shape: ServerShape,
        targets: Targets,
        profile: PowerProfile | None = None,
    ) -> float: ...

    def saturation_rps(
        self, params: ServiceParams, load: Load, shape: ServerShape, profile: PowerProfile | None = None
    ) -> float: ...

    def within_targets(
        self,
        params: ServiceParams,
        load: Load,
        shape: ServerShape,
        targets: Targets,
        profile: PowerProfile | None = None,
    ) -> bool: ...

    def occupancy(
        self, params: ServiceParams, load: Load, shape: ServerShape, profile: PowerProfile | None = None
    ) -> Occupancy: ...

    def mean_figures(self, points: Sequence[Point]) -> list[PointFigures | None]: ...

    def figures_of(self, points: Points, draws: bool = True) -> Figures: ...

    def within_targets_of(self, points: Points, targets: Sequence[Targets]) -> Bools: ...

    def max_rates_of(self, points: Points, targets: Sequence[Targets], fits_rps: Floats | None = None,
                     misses_rps: Floats | None = None) -> Floats: ...

    def check(self, params: ServiceParams) -> None: ...

    def reads(self, name: str) -> bool: ...


ROOFLINE_TERMS = {"expert_weight_share": "experts'", "rho": "convex decode", "budget_tokens": "token budget"}
"""The step family's terms only its continuous law reads (a prompt's chunks, the decode's bend, the experts' reads),
each with what a check calls it."""


@dataclass(frozen=True)
class ChainModel:
    """State-dependent M/M/1/K with batching and chain-derived tails; `law` says how the parameters
    become per-step times (batched prefill as llm-inferno, or vLLM's continuous batching)."""

    name: str
    law: LawFn
    many: ManyLawFn | None = None
    """The same law built for many points at once, as arrays (None: built one by one)."""
    routed: bool = False
    """Whether the law reads the step family's whole roofline: a mixture of experts' routing, a convex decode (rho)
    and a token budget."""

    def check(self, params: ServiceParams) -> None:
        """Refuse, naming the field, parameters the law would read only in part (a routing it has no term for would
        be dropped without a word)."""
        for name, what in ROOFLINE_TERMS.items():  # --budget-tokens 1 read the same as none under mm1k-batch
            if getattr(params, name) and not self.reads(name):
                raise ModelInputError(f"{name}: {self.name} has no {what} term ({DEFAULT_MODEL}, the default, reads "
                                      "it)")

    def reads(self, name: str) -> bool:
        """Whether the law reads this parameter (`tune` prints only those: a term no window moves is no fit)."""
        return self.routed or name not in ROOFLINE_TERMS

    def analyze(
        self,
        params: ServiceParams,
        load: Load,
        shape: ServerShape,
        profile: PowerProfile | None = None,
        tails: bool = True,
    ) -> Performance:
        """All figures at one operating point; `tails=False` leaves the percentiles NaN (faster)."""
        shape = fitting_shape(params, load, shape)
        law, chain = self._solved(params, load, shape, profile)
        return evaluate(law, chain, shape, profile, tails)

    def _solved(
        self, params: ServiceParams, load: Load, shape: ServerShape, profile: PowerProfile | None,
        law: StepLaw | None = None,
    ) -> tuple[StepLaw, Stationary]:
        """The law and chain at this load (`law`: the law at the offered rate where the caller built it). A
        bounded queue turns arrivals away once full, and those cost the GPU nothing: the law (under continuous
        batching, the prompts' share of the GPU) is built at the rate accepted, lambda (1 - P(full)), found by
        regula falsi where blocking is not negligible. An unbounded queue past the shape's saturation has no steady
        state: the message quotes that rate."""
        try:
            law = law or self.law(params, load, profile, shape)
            chain = solve_chain(law, shape, load.rate_rps)
        except Unstable:
            if shape.max_queue is None:
                sat = self.saturation_rps(params, load, shape, profile)
                raise Unstable(f"rate_rps: {load.rate_rps:.6g} has no stationary solution with an unbounded queue: "
                               f"max_batch {shape.max_batch} saturates at {sat:.6g} rps; lower it or bound "
                               "max_queue") from None
            return self._accepted(params, load, shape, profile, 0.0)
        if chain.p[-1] < BLOCKING_NEGLIGIBLE or shape.max_queue is None:
            return law, chain
        return self._accepted(params, load, shape, profile, load.rate_rps * (1.0 - chain.p[-1]),
                              load.rate_rps * float(chain.p[-1]))

    def _accepted(
        self, params: ServiceParams, load: Load, shape: ServerShape, profile: PowerProfile | None, low: float,
        short_rps: float | None = None,
    ) -> tuple[StepLaw, Stationary]:
        """The accepted rate x = lambda (1 - P(full) at a law built for x), between `low` (what the law at the offered
        rate accepts: a lighter law blocks less) and the offered rate, where that law falls short by `short_rps`
        (None: no law there); P(full) in closed form, the chain solved once, at the last law. The root of what the law
        at x accepts less x, by regula falsi (Illinois: the end that stays has its value halved), the bracket halved
        where an end's value is not known (no law at the offered rate, or at the last try): 7-22 laws where halvings
        to 1e-4 took 15-33, to 1e-10 of the root where they read 1e-5 (a fit's saturated windows build them by the
        thousand); at the edge of the laws (a queue its own prompts bound) halvings to 1e-4, as before. Bounded: where
        nearly every arrival is turned away, the accepted rate falls toward 0 and a tolerance relative to it is never
        reached (an hour's prompt per request at 1,000 rps ran forever)."""
        rate = load.rate_rps
        high, f_low, f_high = rate, None, None if short_rps is None else -short_rps
        best, best_rps, moved = None, 0.0, 0  # moved: the end the last try moved (-1 low, 1 high; 0 neither)
        for _ in range(ACCEPTED_STEPS):
            # to 1e-4 where the top is the edge of the laws (a queue its own prompts bound: halvings, no secant)
            if best is not None and high - low <= (ACCEPTED_TOLERANCE if f_high is not None else 1e-4) * high:
                break
            mid = 0.5 * (low + high)
            if f_low is not None and f_high is not None and f_low > f_high:
                secant = high - f_high * (high - low) / (f_high - f_low)
                mid = secant if low < secant < high else mid
            try:
                law = self.law(params, replace(load, rate_rps=mid), profile, shape)
                full = blocking(law, shape, rate)
            except Unstable:
                high, f_high, moved = mid, None, 0
                continue
            best, best_rps, gap = law, mid, rate * (1.0 - full) - mid
            if gap >= 0.0:
                low, f_low = mid, gap
                if moved == -1 and f_high is not None:
                    f_high *= 0.5
                moved = -1
            else:
                high, f_high = mid, gap
                if moved == 1 and f_low is not None:
                    f_low *= 0.5
                moved = 1
        if best is None:  # no law below the offered rate has a steady state: nothing is served at any rate
            raise Unstable(f"rate_rps: {rate:.6g} has no stationary solution at any accepted rate below it")
        chain = solve_chain(best, shape, rate)
        if rate * (1.0 - chain.p[-1]) > best_rps * (1.0 + 1e-3):  # no fixed point: the bound of the laws
            best = slowed_to(best, shape, rate, best_rps)
            chain = solve_chain(best, shape, rate)
        return best, chain

    def max_rate(
        self,
        params: ServiceParams,
        load: Load,
        shape: ServerShape,
        targets: Targets,
        profile: PowerProfile | None = None,
    ) -> float:
        return max_rate(params, load, fitting_shape(params, load, shape), targets, profile, law_fn=self.law)

    def saturation_rps(
        self, params: ServiceParams, load: Load, shape: ServerShape, profile: PowerProfile | None = None
    ) -> float:
        """The largest rate the shape completes with a full batch (its capacity; above it, no steady state)."""
        return saturation_rps(params, load, fitting_shape(params, load, shape), profile, law_fn=self.law)

    def within_targets(
        self,
        params: ServiceParams,
        load: Load,
        shape: ServerShape,
        targets: Targets,
        profile: PowerProfile | None = None,
    ) -> bool:
        """One replica meets `targets` at this load's rate: the test `max_rate` bisects on, for sizing that
        asks only whether a given share of a load fits."""
        return within_targets(params, load, fitting_shape(params, load, shape), targets, profile, law_fn=self.law)

    def occupancy(
        self, params: ServiceParams, load: Load, shape: ServerShape, profile: PowerProfile | None = None
    ) -> Occupancy:
        """Where the replica's time goes at this load: what its mean draw is computed from (and fitted on)."""
        law, chain = self._solved(params, load, fitting_shape(params, load, shape), profile)
        return occupancy(law, chain, load.rate_rps * (1.0 - chain.p[-1]))

    def within_targets_of(self, points: Points, targets: Sequence[Targets]) -> Bools:
        """`within_targets` at many points (a sizing round's), `targets` per base, solved together where the
        targets allow."""
        return within_targets_of(points, targets, self.law, self.many)

    def max_rates_of(self, points: Points, targets: Sequence[Targets], fits_rps: Floats | None = None,
                     misses_rps: Floats | None = None) -> Floats:
        """`max_rate` at many points (their rates are not read), `targets` per base, from rates known to fit and
        known not to where given: a few stacked calls for all of them."""
        return max_rates_of(points, targets, self.law, self.many, fits_rps=fits_rps, misses_rps=misses_rps)

    def figures_of(self, points: Points, draws: bool = True) -> Figures:
        """`analyze`'s means (tails=False) at many points at once, as a plan values its candidates (solved
        together: queuemodels.stacked); `covered` False where the model has none (a rate it cannot take)."""
        built, _, together = solve_together(self.law, self.many, points, draws)
        for i in np.flatnonzero(~together.covered).tolist():  # as `analyze` solves it, from the law built above
            params, load, shape, profile = points.point(i)
            try:
                law, chain = self._solved(params, load, shape, profile, built.get(i))
                perf = evaluate(law, chain, shape, profile, tails=False)
            except ModelInputError:
                continue
            for column, value in zip(together[:5], (perf.mean_in_system, perf.ttft_ms, perf.itl_ms,
                                                    perf.extra["prefill_ms"], perf.power_w), strict=True):
                column[i] = value
            together.covered[i] = True
        return together

    def mean_figures(self, points: Sequence[Point]) -> list[PointFigures | None]:
        """`figures_of` at points given one by one (a fit's windows), None where the model has none."""
        f = self.figures_of(Points.of(points))
        return [PointFigures(*(float(c[i]) for c in f[:5])) if f.covered[i] else None for i in range(len(points))]


DEFAULT_MODEL = "mm1k-cb"
MODELS: dict[str, QueueModel] = {
    m.name: m for m in (ChainModel("mm1k-cb", continuous_law, continuous_laws, routed=True),
                        ChainModel("mm1k-batch", capped_law))
}


def get_model(name: str) -> QueueModel:
    """A queue model by name; the message lists the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ModelInputError(f"queue model: unknown {name!r}, expected one of {sorted(MODELS)}") from None
