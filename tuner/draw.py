"""A pair's power-draw curve, fitted to the GPU power its steady windows were observed to draw.

NVML gives each GPU's mean draw over a window; the queue model says where the replica's time went at that
window's load (how long at each batch size, how much on prompts). The curve's two free parameters, the busy
base and the batch at which decode's draw is half-way to the peak, are fitted by bounded least squares on the
relative error over the most recent windows, with a weak pull towards the catalogue's values: windows that
all ran one batch size say nothing of `batch_half`, and it should then stay where it was. A window the
curve already predicts within its error level would barely move it: the fit is redone when one misses by
more, and every `refit_every` windows regardless.

Where the governor held a window's GPUs down (a cut, or a draw pressed against a limit under the plan's cap), its
draw is a bound, not a reading: the load would have drawn at least that much under the window's limits. The fit
counts such a window only where the curve reads below it. Under a budget that binds, most windows are held in some
tick (241 of 297 in 25 minutes of tight-budget; all 297 under a power law whose draw the catalogue reads low), and a
curve that learnt only from the rest stayed at the catalogue's: under that law the plans counted each replica's
draw far below what it drew, spread the services over seven replicas the budget could not power, and code met its
SLO on half its requests (0.94 learning from the bounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from queuemodels import ModelInputError, Occupancy, PowerProfile, ServiceParams, get_model
from queuemodels.clock import clock_share
from queuemodels.power import draws_w, limit_w
from tuner.observation import Observation

Floats = NDArray[np.float64]
BUSY_BOUNDS = (0.0, 0.9)
HALF_BOUNDS = (1.0, 4096.0)
CLIP_LEAK = 0.01
"""Slope the fit keeps above the limit of a window the curve over-predicts as the fit starts. Clipped flat, a
curve that puts decode above the cap predicts the cap whatever its parameters, and the fit has no way down: a
busy share of 0.45 stayed there for an hour on GPUs capped at 339 W that drew 290 (budget-step). A window the
curve already reads within its error level (a cap that binds) keeps the flat clip: there the slope would pull
the curve down to the cap."""


def keeps(obs: Observation) -> bool:
    """Whether the curve learns from a window: a steady one with a power reading (no other tells the draw)."""
    return obs.power_w is not None and math.isfinite(obs.power_w) and obs.power_w > 0 and obs.problem() is None


def draw_errors(predicted_w: Floats, seen_w: Floats, bound: Floats) -> Floats:
    """Relative error of each window's predicted draw; where the window's draw is a bound (`bound`: held), only a
    prediction below it errs."""
    errors = predicted_w / seen_w - 1.0
    out: Floats = np.where(bound, np.minimum(errors, 0.0), errors)
    return out


def newest(windows: list[Observation], keep: int) -> list[Observation]:
    """The newest `keep` readings and the newest `keep` bounds among `windows`, in order: a bound says less than a
    reading, and a budget that binds for an hour would otherwise push every reading out."""
    counts = [0, 0]
    out = []
    for o in reversed(windows):
        kind = int(o.draw_is_bound)
        if counts[kind] < keep:
            counts[kind] += 1
            out.append(o)
    return out[::-1]


@dataclass
class DrawFit:
    """Recent observed draws of one pair and the curve fitted to them (None until the first fit)."""

    keep: int = 32
    """Most recent windows with a power reading that the fit reads, and as many more whose draw is a bound."""
    error_level: float = 0.03
    """Relative error of one window's mean draw (NVML's accuracy and the window's own spread)."""
    prior_spread: float = 0.5
    """How far the busy share (absolute) and log batch_half may stray from the catalogue's for free."""
    refit_every: int = 8
    """Windows after which the curve is refitted even if it predicted each of them within its error level."""
    recent: list[Observation] = field(default_factory=list)
    busy_share: float | None = None
    batch_half: float | None = None
    unfitted: int = 0
    """Windows kept since the last fit."""
    _applied: tuple[PowerProfile, PowerProfile] | None = field(default=None, repr=False, compare=False)
    """The last profile given to `applied` and its result: the filter asks for it at every model evaluation."""

    def applied(self, profile: PowerProfile) -> PowerProfile:
        """The profile with the fitted curve (unchanged before the first fit)."""
        if self.busy_share is None or self.batch_half is None:
            return profile
        if self._applied is None or self._applied[0] is not profile:
            self._applied = profile, replace(profile, busy_share=self.busy_share, batch_half=self.batch_half)
        return self._applied[1]

    def observe(self, obs: Observation, params: ServiceParams, catalogue: PowerProfile, queue_model: str) -> bool:
        """Keep a steady window with a power reading, refitting where it tells something new; False (nothing
        kept) for any other window."""
        if not keeps(obs):
            return False
        self.recent = newest([*self.recent, obs], self.keep)
        self.unfitted += 1
        if self.busy_share is None or self.unfitted >= self.refit_every or not self._predicts(obs, params, catalogue,
                                                                                              queue_model):
            self.fit(params, catalogue, queue_model)
        return True

    def _read(self, windows: list[Observation], params: ServiceParams, profile: PowerProfile,
              queue_model: str) -> tuple[Occupancy, Floats, Floats, Floats, Floats] | None:
        """The windows the current law can carry, stacked: their occupancies at `profile` (each at its own load
        cap and clock), their limits, their observed draws, their clock shares and whether each draw is a bound;
        None when there are none."""
        model = get_model(queue_model)
        occupancies, limits, seen, clocks, bound = [], [], [], [], []
        for o in windows:
            try:
                occupancies.append(model.occupancy(params, o.load, o.shape, profile))
            except ModelInputError:
                continue  # a load the current law cannot carry says nothing about the draw
            limits.append(limit_w(profile, o.power_cap_w))
            seen.append(float(o.power_w or 0.0))
            clocks.append(clock_share(o.sm_clock_fraction))
            bound.append(o.draw_is_bound)
        if not occupancies:
            return None
        return Occupancy.stack(occupancies), np.array(limits), np.array(seen), np.array(clocks), np.array(bound)

    def _predicts(self, obs: Observation, params: ServiceParams, catalogue: PowerProfile, queue_model: str) -> bool:
        """The current curve predicts this window's draw within the error level (or no curve could)."""
        profile = self.applied(catalogue)
        read = self._read([obs], params, profile, queue_model)
        if read is None:
            return True
        occupancy, limits, seen, clocks, bound = read
        return bool(abs(draw_errors(draws_w(profile, occupancy, limits, clocks), seen, bound)[0]) <= self.error_level)

    def fit(self, params: ServiceParams, catalogue: PowerProfile, queue_model: str) -> None:
        """Refit on the recent windows, all at once: one evaluation of the curve on their stacked occupancies
        per step of the fit."""
        profile = self.applied(catalogue)
        read = self._read(self.recent, params, profile, queue_model)
        self.unfitted = 0
        if read is None:
            return
        occupancy, limits, seen, clocks, bound = read
        over = draw_errors(draws_w(profile, occupancy, limits, clocks), seen, bound) > self.error_level
        leak = np.where(over, CLIP_LEAK, 0.0)
        anchor = np.array([catalogue.busy_share, math.log(catalogue.batch_half)])

        def residuals(v: NDArray[np.float64]) -> NDArray[np.float64]:
            curve = replace(catalogue, busy_share=float(v[0]), batch_half=math.exp(v[1]))
            errors = draw_errors(draws_w(curve, occupancy, limits, clocks, leak=leak), seen, bound)
            return np.concatenate([errors / self.error_level, (v - anchor) / self.prior_spread])

        lo = np.array([BUSY_BOUNDS[0], math.log(HALF_BOUNDS[0])])
        hi = np.array([BUSY_BOUNDS[1], math.log(HALF_BOUNDS[1])])
        start = np.clip([profile.busy_share, math.log(profile.batch_half)], lo, hi)
        from scipy.optimize import least_squares  # loaded where a fit runs, not at every command's start

        result = least_squares(residuals, start, bounds=(lo, hi), method="trf", x_scale=[0.1, 1.0])
        self.busy_share = float(result.x[0])
        self.batch_half = float(math.exp(result.x[1]))
        self._applied = None

    def error(self, params: ServiceParams, profile: PowerProfile, queue_model: str) -> float | None:
        """Median relative error of the draw the pair predicts (`profile`: its curve applied) on the recent
        windows; None when there are none."""
        read = self._read(self.recent, params, profile, queue_model)
        if read is None:
            return None
        occupancy, limits, seen, clocks, bound = read
        return float(np.median(np.abs(draw_errors(draws_w(profile, occupancy, limits, clocks), seen, bound))))

    def dump(self) -> dict[str, Any]:
        return {"busy_share": self.busy_share, "batch_half": self.batch_half,
                "recent": [dict(vars(o)) for o in self.recent]}  # flat fields: asdict's deep copy is 10x slower

    def restore(self, data: dict[str, Any]) -> bool:
        """Load saved state; False (and nothing changed) when it does not parse."""
        try:
            recent = [Observation(**o) for o in data["recent"]]
            if not all(map(keeps, recent)):  # a window `observe` keeps none of: a hand-edited file
                return False
            busy, half = data["busy_share"], data["batch_half"]
            fitted = busy is not None and half is not None
            in_bounds = fitted and BUSY_BOUNDS[0] <= busy <= BUSY_BOUNDS[1] and HALF_BOUNDS[0] <= half <= HALF_BOUNDS[1]
            if (busy is None) != (half is None) or (fitted and not in_bounds):
                return False
        except (KeyError, TypeError, ValueError):
            return False
        self.recent = newest(recent, self.keep)
        self.busy_share = None if busy is None else float(busy)
        self.batch_half = None if half is None else float(half)
        self._applied = None
        return True
