"""Many operating points at once, as arrays: what the stacked solve reads.

Points (each a base, a shape and a rate), and how their laws (queuemodels.step_arrays) are had: built by
queuemodels.continuous_arrays where a model has an array form; a point it does not build (a rate whose prompts
would fill the GPU, a law without an array form) is built by the scalar law.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from operator import attrgetter

import numpy as np
from numpy.typing import NDArray

from queuemodels.continuous_law import has_roofline
from queuemodels.kv_cache import batch_limit, fitting_shape
from queuemodels.params import Point, ServiceParams
from queuemodels.roofline import Roofline
from queuemodels.roofline_arrays import Terms
from queuemodels.service_time import decode_and_prompt
from queuemodels.step_arrays import Bools, Floats, LawArrays
from queuemodels.types import Load, PowerProfile, ServerShape

Base = tuple[ServiceParams, Load, PowerProfile | None]
"""What many points share: parameters, the load's token mix (its rate is not read) and the power profile."""
PROFILE_FIELDS = ("idle_power_w", "max_power_w", "knee_fraction", "busy_share", "batch_half", "prefill_sensitivity",
                  "clock_time_sensitivity", "clock_draw_exponent", "clock_step_share")


class Bases(tuple[Base, ...]):
    """The bases of many points, with what the arrays read of them worked out once (a fleet has thousands, read by
    every block of states)."""

    @cached_property
    def profiles(self) -> Floats:
        """PROFILE_FIELDS of each base's profile, a row per base (NaN without one)."""
        rows: dict[int, list[float]] = {}
        for _, _, p in self:
            if id(p) not in rows:
                rows[id(p)] = [float(getattr(p, n)) for n in PROFILE_FIELDS] if p else [np.nan] * len(PROFILE_FIELDS)
        return np.array([rows[id(p)] for _, _, p in self], dtype=float).reshape(len(self), len(PROFILE_FIELDS))

    @cached_property
    def loads(self) -> Floats:
        """Each base's decode_and_prompt (d0, d1, overhead, compute, hidden), out_tokens, out_cv, in_cv and
        tokens_per_step, a row per base."""
        rows = [(*decode_and_prompt(params, load), load.out_tokens, load.out_cv, load.in_cv, load.tokens_per_step)
                for params, load, _ in self]
        return np.array(rows, dtype=float).reshape(len(rows), 9)

    @cached_property
    def affine(self) -> Bools:
        """Whether each base's law is the one continuous_law builds without a roofline (what `continuous_laws`
        covers)."""
        return np.array([not has_roofline(p) for p, _, _ in self], dtype=bool)

    @cached_property
    def rooflines(self) -> Terms:
        """Each base's roofline terms (zeros where its law is affine)."""
        flat = Roofline(0.0, 0.0, 0.0, 0.0, 0.0)
        return Terms.of([flat if affine else Roofline.of(p, load) for (p, load, _), affine in zip(
            self, self.affine, strict=True)])

    @cached_property
    def kv_limits(self) -> Floats:
        """The most sequences of each base's load its KV cache holds (inf: no size known)."""
        return np.array([batch_limit(p, load) or np.inf for p, load, _ in self], dtype=float)


SHAPE_FIELDS = attrgetter("max_batch", "max_queue", "power_cap_w", "sm_clock_fraction")
"""What the arrays read of a ServerShape, in the columns of `Points.table`."""


def shape_table(shapes: Sequence[ServerShape]) -> Floats:
    """`Points.table`'s rows for these shapes, in one pass (a fleet's cycle reads a hundred thousand)."""
    return np.array(list(map(SHAPE_FIELDS, shapes)), dtype=float).reshape(len(shapes), 4)


@dataclass(frozen=True, eq=False)
class Points:
    """Many operating points: each a base, a shape and a rate per replica."""

    bases: Bases
    base: NDArray[np.intp]
    """Each point's base, by index."""
    table: Floats
    """Each point's shape as a row: max batch, queue bound, power cap and locked clock (NaN: none; `shape_table`)."""
    rates_rps: Floats

    @classmethod
    def shaped(cls, bases: Bases, base: NDArray[np.intp], shapes: Sequence[ServerShape], rates_rps: Floats) -> Points:
        return cls(bases, base, shape_table(shapes), rates_rps)

    @classmethod
    def of(cls, points: Sequence[Point]) -> Points:
        """Points given one by one (each its own base)."""
        return cls.shaped(Bases((p, load, profile) for p, load, _, profile in points), np.arange(len(points)),
                          [shape for _, _, shape, _ in points], np.array([load.rate_rps for _, load, _, _ in points]))

    def point(self, i: int) -> Point:
        """The i-th point as the scalar path takes it: its load at its rate, its shape at the batch its KV cache
        holds."""
        params, load, profile = self.bases[self.base[i]]
        load = load.at_rate(float(self.rates_rps[i]))
        batch, queue, cap, clock = self.table[i].tolist()
        shape = ServerShape(int(batch), None if math.isnan(queue) else int(queue), None if math.isnan(cap) else cap,
                            None if math.isnan(clock) else clock)
        return params, load, fitting_shape(params, load, shape), profile

    def take(self, idx: NDArray[np.intp]) -> Points:
        """The points at `idx`, on the same bases."""
        return Points(self.bases, self.base[idx], self.table[idx], self.rates_rps[idx])

    def at_rates(self, rates_rps: Floats) -> Points:
        """The same points at other rates."""
        return Points(self.bases, self.base, self.table, rates_rps)

    def profile_fields(self, names: tuple[str, ...], at: NDArray[np.intp] | None = None) -> list[Floats]:
        """The named PowerProfile fields (of PROFILE_FIELDS) of each point's base (of the points `at`; NaN where a
        base has none)."""
        columns = [PROFILE_FIELDS.index(n) for n in names]
        return list(self.bases.profiles[self.base if at is None else self.base[at]][:, columns].T)

    @property
    def batches(self) -> Floats:
        return self.table[:, 0]

    @property
    def queues(self) -> Floats:
        """Each shape's queue bound (-1: unbounded)."""
        queue = self.table[:, 1]
        out: Floats = np.where(np.isnan(queue), -1.0, queue)
        return out

    @property
    def caps(self) -> Floats:
        """Each shape's power cap (NaN: uncapped)."""
        return self.table[:, 2]

    @property
    def clocks(self) -> Floats:
        """Each shape's locked clock share (NaN: unlocked)."""
        return self.table[:, 3]

    def tops(self) -> Floats:
        """Each point's max batch, cut to what its KV cache holds (queuemodels.kv_cache)."""
        out: Floats = np.minimum(self.batches, self.bases.kv_limits[self.base])
        return out


ManyLawFn = Callable[["Points", Floats], tuple["LawArrays", Bools]]
"""Laws of many points at their batches, as arrays, and which it built (`continuous_laws`)."""


def laws_of(many: ManyLawFn | None, points: Points, tops: Floats) -> tuple[LawArrays, Bools]:
    """The points' laws as `many` builds them as arrays, and which it built (none without it)."""
    if many is None:
        return LawArrays.empty(len(tops)), np.zeros(len(tops), dtype=bool)
    return many(points, tops)
