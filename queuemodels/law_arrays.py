"""Step laws of many operating points at once, as arrays: what the stacked solve reads.

A fleet's plan values tens of thousands of points a cycle, and a law built through the interpreter costs
~13 us each, more than solving it stacked. Most points share their parameters, token mix and power profile
(a base) and differ in shape and rate: `continuous_laws` is service_time.continuous_law over arrays, operation
for operation, so the figures match the scalar path to the bit. A point it does not build (the step family's
roofline, a rate whose prompts would fill the GPU, a law without an array form) is built by the scalar law.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from queuemodels.kv_cache import batch_limit, fitting_shape
from queuemodels.service_time import StepLaw, decode_and_prompt, has_roofline
from queuemodels.types import Load, Point, PowerProfile, ServerShape, ServiceParams

Floats = NDArray[np.float64]
Bools = NDArray[np.bool_]
Base = tuple[ServiceParams, Load, PowerProfile | None]
"""What many points share: parameters, the load's token mix (its rate is not read) and the power profile."""
FIELDS = ("p0", "p1", "d0", "d1", "decode_steps", "prompt_ms", "residual_share", "residual_ms", "wait_scale",
          "prompt_cv")


PROFILE_FIELDS = ("idle_power_w", "max_power_w", "knee_fraction", "busy_share", "batch_half", "prefill_sensitivity",
                  "clock_time_sensitivity", "clock_draw_exponent")


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
        """Each base's decode_and_prompt (d0, d1, c_p), out_tokens, out_cv and in_cv, a row per base."""
        rows = [(*decode_and_prompt(params, load), load.out_tokens, load.out_cv, load.in_cv)
                for params, load, _ in self]
        return np.array(rows, dtype=float).reshape(len(rows), 6)

    @cached_property
    def affine(self) -> Bools:
        """Whether each base's law is the one continuous_law builds without a roofline (what `continuous_laws`
        covers)."""
        return np.array([not has_roofline(p) for p, _, _ in self], dtype=bool)

    @cached_property
    def kv_limits(self) -> Floats:
        """The most sequences of each base's load its KV cache holds (inf: no size known)."""
        return np.array([batch_limit(p, load) or np.inf for p, load, _ in self], dtype=float)


@dataclass(frozen=True, eq=False)
class Points:
    """Many operating points: each a base, a shape and a rate per replica."""

    bases: Bases
    base: NDArray[np.intp]
    """Each point's base, by index."""
    shapes: Sequence[ServerShape]
    rates_rps: Floats

    @classmethod
    def of(cls, points: Sequence[Point]) -> Points:
        """Points given one by one (each its own base)."""
        return cls(Bases((p, load, profile) for p, load, _, profile in points), np.arange(len(points)),
                   [shape for _, _, shape, _ in points], np.array([load.rate_rps for _, load, _, _ in points]))

    def point(self, i: int) -> Point:
        """The i-th point as the scalar path takes it: its load at its rate, its shape at the batch its KV cache
        holds."""
        params, load, profile = self.bases[self.base[i]]
        load = load.at_rate(float(self.rates_rps[i]))
        return params, load, fitting_shape(params, load, self.shapes[i]), profile

    def take(self, idx: NDArray[np.intp]) -> Points:
        """The points at `idx`, on the same bases."""
        return Points(self.bases, self.base[idx], [self.shapes[i] for i in idx.tolist()], self.rates_rps[idx])

    def at_rates(self, rates_rps: Floats) -> Points:
        """The same points at other rates."""
        return Points(self.bases, self.base, self.shapes, rates_rps)

    def profile_fields(self, names: tuple[str, ...], at: NDArray[np.intp] | None = None) -> list[Floats]:
        """The named PowerProfile fields (of PROFILE_FIELDS) of each point's base (of the points `at`; NaN where a
        base has none)."""
        columns = [PROFILE_FIELDS.index(n) for n in names]
        return list(self.bases.profiles[self.base if at is None else self.base[at]][:, columns].T)

    @cached_property
    def batches(self) -> Floats:
        return np.array([s.max_batch for s in self.shapes], dtype=float)

    @cached_property
    def queues(self) -> Floats:
        """Each shape's queue bound (-1: unbounded)."""
        return np.array([-1 if s.max_queue is None else s.max_queue for s in self.shapes], dtype=float)

    @cached_property
    def caps(self) -> Floats:
        """Each shape's power cap (NaN: uncapped)."""
        return np.array([np.nan if s.power_cap_w is None else s.power_cap_w for s in self.shapes], dtype=float)

    @cached_property
    def clocks(self) -> Floats:
        """Each shape's locked clock share (NaN: unlocked)."""
        return np.array([np.nan if s.sm_clock_fraction is None else s.sm_clock_fraction for s in self.shapes],
                        dtype=float)

    def tops(self) -> Floats:
        """Each point's max batch, cut to what its KV cache holds (queuemodels.kv_cache)."""
        out: Floats = np.minimum(self.batches, self.bases.kv_limits[self.base])
        return out


class LawArrays(NamedTuple):
    """StepLaw's fields, one row per point (NaN where a point has no law); `affine`: no roofline bend."""

    p0: Floats
    p1: Floats
    d0: Floats
    d1: Floats
    decode_steps: Floats
    prompt_ms: Floats
    residual_share: Floats
    residual_ms: Floats
    wait_scale: Floats
    prompt_cv: Floats
    affine: Bools

    @classmethod
    def empty(cls, n: int) -> LawArrays:
        return cls._make([*(np.full(n, np.nan) for _ in FIELDS), np.zeros(n, dtype=bool)])

    def put(self, i: int, law: StepLaw) -> None:
        """Row i from a law built by the scalar path."""
        for name in FIELDS:
            getattr(self, name)[i] = getattr(law, name)
        self.affine[i] = law.roofline is None

    @property
    def t0(self) -> Floats:
        out: Floats = self.p0 + self.decode_steps * self.d0
        return out

    @property
    def t1(self) -> Floats:
        out: Floats = self.p1 + self.decode_steps * self.d1
        return out


def _per_point(points: Points) -> dict[str, Floats]:
    """The bases' scalars gathered to their points; a base without a profile reads as one with neither cap nor
    clock (factors of 1), as the scalar law reads it."""
    out = dict(zip(("d0", "d1", "c_p", "out_tokens", "out_cv", "in_cv"), points.bases.loads[points.base].T,
                   strict=True))
    names = ("idle", "peak", "knee", "busy", "half", "ps", "cts", "exp")
    out.update(zip(names, points.profile_fields(PROFILE_FIELDS), strict=True))
    profiled = ~np.isnan(out["peak"])
    out["cap"] = np.where(profiled, points.caps, np.nan)
    out["clock"] = np.where(profiled, points.clocks, np.nan)
    return out


ManyLawFn = Callable[["Points", Floats], tuple["LawArrays", Bools]]
"""Laws of many points at their batches, as arrays, and which it built (`continuous_laws`)."""


def laws_of(many: ManyLawFn | None, points: Points, tops: Floats) -> tuple[LawArrays, Bools]:
    """The points' laws as `many` builds them as arrays, and which it built (none without it)."""
    if many is None:
        return LawArrays.empty(len(tops)), np.zeros(len(tops), dtype=bool)
    return many(points, tops)


def continuous_laws(points: Points, tops: Floats) -> tuple[LawArrays, Bools]:
    """service_time.continuous_law at every point (at its KV-bound batch `tops`), and which points it built:
    not those of a roofline law nor a rate whose prompts would fill the GPU."""
    v = _per_point(points)
    cap, clock, n = v["cap"], v["clock"], tops
    capped, locked = ~np.isnan(cap), ~np.isnan(clock) & (np.nan_to_num(clock, nan=1.0) < 1.0)

    def by_clock(compute_share: Floats | float) -> Floats:  # clock_time_factor
        out: Floats = np.where(locked, 1.0 + v["cts"] * compute_share * (1.0 / np.where(locked, clock, 1.0) - 1.0),
                               1.0)
        return out

    def decode_factor(batch: Floats) -> Floats:  # decode_cap_factor: the slower of the lock and the cap alone
        compute = batch / (batch + v["half"])
        natural = v["idle"] + (v["peak"] - v["idle"]) * (v["busy"] + (1.0 - v["busy"]) * compute)
        squeeze = np.maximum(0.0, natural / np.where(capped, cap, 1.0) - 1.0)
        out: Floats = np.where(capped, np.maximum(by_clock(compute), 1.0 + v["ps"] * compute * squeeze),
                               by_clock(compute))
        return out

    knee_w = v["idle"] + (v["knee"] * v["peak"] - v["idle"])  # prompt_draw_w at the free clock, as it sums it
    squeeze = np.maximum(0.0, knee_w / np.where(capped, cap, 1.0) - 1.0)
    prefill_factor = np.where(capped, np.maximum(by_clock(1.0), 1.0 + v["ps"] * squeeze), by_clock(1.0))
    d0, d1 = v["d0"], v["d1"]
    at_one = (d0 + d1) * decode_factor(np.ones_like(n))  # _capped_decode
    single = n <= 1.0
    slope = np.where(single, d1 * at_one / (d0 + d1), ((d0 + d1 * n) * decode_factor(n) - at_one) /
                     (np.where(single, 2.0, n) - 1.0))
    d0 = np.where(single, d0 * at_one / (d0 + d1), at_one - slope)
    c_gpu = v["c_p"]
    c_p = c_gpu * prefill_factor
    phi = points.rates_rps * c_gpu * prefill_factor / 1000.0
    stretch = 1.0 / (1.0 - np.minimum(phi, 0.99))
    d0, d1 = d0 * stretch, slope * stretch
    built = (phi < 0.99) & points.bases.affine[points.base]
    laws = LawArrays(c_p * (1.0 + phi**2) + d0, d1, d0, d1, v["out_tokens"] - 1.0, c_p,
                     np.full(len(n), 0.5), phi * c_p / 2.0, (1.0 + v["out_cv"] ** 2) / 2.0, v["in_cv"], built.copy())
    return laws, built
