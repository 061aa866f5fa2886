"""Mean GPU power draw of a replica, from the chain's occupancy; never above the cap."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from queuemodels.types import PowerProfile

Batch = TypeVar("Batch", float, NDArray[np.float64])


def natural_draw_w(profile: PowerProfile, batch: Batch) -> Batch:
    """Uncapped draw with `batch` sequences in flight: idle at 0, saturating towards the peak."""
    share = batch / (batch + profile.batch_half)
    return profile.idle_power_w + (profile.max_power_w - profile.idle_power_w) * share


def busy_draw_w(profile: PowerProfile, batch: NDArray[np.float64], power_cap_w: float | None) -> NDArray[np.float64]:
    """The natural draw clipped at the cap."""
    limit = profile.max_power_w if power_cap_w is None else min(power_cap_w, profile.max_power_w)
    return np.minimum(natural_draw_w(profile, batch), limit)


def mean_draw_w(
    profile: PowerProfile, p: NDArray[np.float64], batch: NDArray[np.float64], power_cap_w: float | None
) -> float:
    """Expected draw over the stationary distribution p of states with the given batch sizes."""
    return float(busy_draw_w(profile, batch, power_cap_w) @ p)
