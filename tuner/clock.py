"""A pair's clock sensitivity, fitted to windows run at different locked SM clocks (never read from a plant).

How much a phase's time follows 1 / the clock, how much of a roofline decode step's fixed per-step time does,
and how fast the compute part of the draw falls with it (queuemodels/clock.py), can only be told apart from the
rest of the law by windows run at different clocks: until the kept windows span `min_spread` of the clock range
the pair keeps the catalogue's generic values.
The fit is bounded robust least squares (soft L1: a window near saturation, whose queueing the law gets far
wrong, must not outweigh the rest) on the windows' log inter-token latencies at the filter's current
parameters - a decode step's time, which the clock acts on directly; TTFT is mostly queueing - and on their
relative draw errors, with a weak pull towards the catalogue's values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from queuemodels import PowerProfile, ServiceParams, get_model
from queuemodels.clock import clock_share
from tuner.observation import Observation
from tuner.robust_fit import stacked_least_squares

TIME_BOUNDS = (0.0, 1.5)
EXPONENT_BOUNDS = (0.5, 4.0)
STEP_BOUNDS = (0.0, 1.0)


@dataclass
class ClockFit:
    """Recent windows of one pair with their clocks, and the sensitivities fitted to them (None until then)."""

    keep: int = 32
    """Most recent usable windows the fit reads."""
    min_spread: float = 0.1
    """Clock shares the kept windows must span (highest less lowest) before a fit."""
    latency_error: float = 0.05
    """Relative error of one window's mean inter-token latency."""
    draw_error: float = 0.03
    """Relative error of one window's mean draw."""
    prior_spread: float = 1.0
    """How far each value may stray from the catalogue's for free."""
    recent: list[Observation] = field(default_factory=list)
    time_sensitivity: float | None = None
    draw_exponent: float | None = None
    step_share: float | None = None
    """The share of a roofline decode step's per-step time that follows the clock (None until the first fit)."""
    _applied: tuple[PowerProfile, PowerProfile] | None = field(default=None, repr=False, compare=False)
    """The last profile given to `applied` and its result: the filter asks for it at every model evaluation."""

    def applied(self, profile: PowerProfile) -> PowerProfile:
        """The profile with the fitted sensitivities (unchanged before the first fit)."""
        if self.time_sensitivity is None or self.draw_exponent is None or self.step_share is None:
            return profile
        if self._applied is None or self._applied[0] is not profile:
            self._applied = profile, replace(profile, clock_time_sensitivity=self.time_sensitivity,
                                             clock_draw_exponent=self.draw_exponent, clock_step_share=self.step_share)
        return self._applied[1]

    def spread(self) -> float:
        clocks = [clock_share(o.sm_clock_fraction) for o in self.recent]
        return max(clocks) - min(clocks) if clocks else 0.0

    def observe(self, obs: Observation, params: ServiceParams, catalogue: PowerProfile, queue_model: str) -> bool:
        """Keep a usable window and refit once the windows span enough clocks; False for any other window."""
        if obs.problem() is not None:
            return False
        self.recent = [*self.recent, obs][-self.keep :]
        if self.spread() >= self.min_spread:
            self.fit(params, catalogue, queue_model)
        return True

    def fit(self, params: ServiceParams, catalogue: PowerProfile, queue_model: str) -> None:
        model = get_model(queue_model)
        anchor = np.array([catalogue.clock_time_sensitivity, catalogue.clock_draw_exponent, catalogue.clock_step_share])
        windows = self.recent
        seen_itl = np.log([o.itl_ms for o in windows])
        # a held window's draw is a bound (tuner/draw.py): the clock's fit reads readings only
        powered = np.array([o.power_w is not None and math.isfinite(o.power_w) and o.power_w > 0
                            and not o.draw_is_bound for o in windows])
        seen_w = np.array([o.power_w if p else 1.0 for o, p in zip(windows, powered, strict=True)], dtype=float)

        def residuals_many(vs: list[NDArray[np.float64]]) -> list[NDArray[np.float64]]:
            """At each state, every window solved in one call of the queue model (None where it cannot carry the
            window's load at these values: far off)."""
            profiles = [replace(catalogue, clock_time_sensitivity=float(v[0]), clock_draw_exponent=float(v[1]),
                                clock_step_share=float(v[2])) for v in vs]
            figures = iter(model.mean_figures([(params, o.load, o.shape, p) for p in profiles for o in windows]))
            out = []
            for v in vs:
                at = [next(figures) for _ in windows]
                latency = np.array([5.0 if f is None else math.log(f.itl_ms) - s for f, s in zip(at, seen_itl,
                                                                                                  strict=True)])
                draws = np.array([1.0 if f is None else f.power_w / w - 1.0 for f, w in zip(at, seen_w, strict=True)])
                out.append(np.concatenate([latency / self.latency_error, draws[powered] / self.draw_error,
                                           (v - anchor) / self.prior_spread]))
            return out

        lo = np.array([TIME_BOUNDS[0], EXPONENT_BOUNDS[0], STEP_BOUNDS[0]])
        hi = np.array([TIME_BOUNDS[1], EXPONENT_BOUNDS[1], STEP_BOUNDS[1]])
        fitted = (self.time_sensitivity, self.draw_exponent, self.step_share)
        start = np.clip([anchor[i] if v is None else v for i, v in enumerate(fitted)], lo, hi)
        try:
            result = stacked_least_squares(residuals_many, start, bounds=(lo, hi), method="trf",
                                           x_scale=[0.2, 0.5, 0.2], loss="soft_l1", f_scale=3.0)
        except ValueError:
            return  # residuals not finite at the start: the values in force stay, the next window refits
        self.time_sensitivity, self.draw_exponent, self.step_share = (float(x) for x in result.x)
        self._applied = None

    def dump(self) -> dict[str, Any]:
        return {"time_sensitivity": self.time_sensitivity, "draw_exponent": self.draw_exponent,
                "step_share": self.step_share, "recent": [dict(vars(o)) for o in self.recent]}

    def restore(self, data: dict[str, Any]) -> bool:
        """Load saved state; False (and nothing changed) when it does not parse or is out of bounds."""
        try:
            recent = [Observation(**o) for o in data["recent"]]
            if any(o.problem() is not None for o in recent):
                return False  # a window observe() would have refused: it would only break the next fit
            time_s = data["time_sensitivity"]
            # a file from before the step share: its law had none, the catalogue's 0
            saved = (time_s, data["draw_exponent"], data.get("step_share", None if time_s is None else 0.0))
            if any(v is not None and (isinstance(v, bool) or not isinstance(v, int | float)) for v in saved):
                return False
            if not (saved[0] is None) == (saved[1] is None) == (saved[2] is None):
                return False
            fitted = [float(v) for v in saved if v is not None]  # all or none; an int of 400 digits overflows
            if fitted and not all(lo <= v <= hi for v, (lo, hi) in zip(fitted, (TIME_BOUNDS, EXPONENT_BOUNDS,
                                                                                 STEP_BOUNDS), strict=True)):
                return False
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
            return False
        self.recent = recent[-self.keep :]
        if fitted:
            self.time_sensitivity, self.draw_exponent, self.step_share = fitted
        else:
            self.time_sensitivity = self.draw_exponent = self.step_share = None
        self._applied = None
        return True
