"""Mean GPU power draw of a replica, from the chain's occupancy; never above the cap."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from queuemodels.types import PowerProfile


def busy_draw_w(profile: PowerProfile, batch: NDArray[np.float64], power_cap_w: float | None) -> NDArray[np.float64]:
    """Draw with `batch` sequences in flight: idle at 0, saturating towards the peak, clipped at the cap."""
    share = batch / (batch + profile.batch_half)
    draw = profile.idle_power_w + (profile.max_power_w - profile.idle_power_w) * share
    limit = profile.max_power_w if power_cap_w is None else min(power_cap_w, profile.max_power_w)
    return np.minimum(draw, limit)


def mean_draw_w(
    profile: PowerProfile, p: NDArray[np.float64], batch: NDArray[np.float64], power_cap_w: float | None
) -> float:
    """Expected draw over the stationary distribution p of states with the given batch sizes."""
    return float(busy_draw_w(profile, batch, power_cap_w) @ p)
