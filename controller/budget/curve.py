"""Carbon intensity to watts: a piecewise-linear curve given as config data.

The curve is a list of (gCO2/kWh, watts) points in rising intensity; between points the budget is
interpolated, beyond the ends it stays at the end's value. A cleaner grid may never get a smaller budget,
so the watts may not rise with intensity.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from controller.config_loader import ConfigError


def check_curve(points: Sequence[Sequence[float]], where: str) -> None:
    """Refuse a curve that is not a list of >= 1 finite (g/kWh >= 0, watts > 0) pairs, rising in intensity
    strictly and falling (or flat) in watts."""
    if not points:
        raise ConfigError(where, "needs at least one [gCO2/kWh, watts] point")
    for i, p in enumerate(points):
        if len(p) != 2:
            raise ConfigError(f"{where}[{i}]", f"must be [gCO2/kWh, watts], got {list(p)}")
        g, w = p
        if not (math.isfinite(g) and g >= 0):
            raise ConfigError(f"{where}[{i}]", f"intensity must be finite and >= 0, got {g}")
        if not (math.isfinite(w) and w > 0):
            raise ConfigError(f"{where}[{i}]", f"watts must be finite and > 0, got {w}")
        if i and g <= points[i - 1][0]:
            raise ConfigError(f"{where}[{i}]", "intensities must rise strictly from point to point")
        if i and w > points[i - 1][1]:
            raise ConfigError(f"{where}[{i}]", "not monotonic: watts may not rise with intensity")


class PowerCurve:
    """Maps gCO2/kWh to a budget in watts; build it from a checked curve."""

    def __init__(self, points: Sequence[Sequence[float]]) -> None:
        check_curve(points, "curve")
        self.g_per_kwh = [float(p[0]) for p in points]
        self.budget_w = [float(p[1]) for p in points]

    def watts(self, g_per_kwh: float) -> float:
        xs, ys = self.g_per_kwh, self.budget_w
        i = bisect.bisect_right(xs, g_per_kwh)
        if i == 0:
            return ys[0]
        if i == len(xs):
            return ys[-1]
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (g_per_kwh - x0) / (x1 - x0)
