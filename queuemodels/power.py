"""GPU power draw of a replica: what a step at each batch size draws, and the mean over the chain's occupancy.

A busy GPU streams its weights whatever the batch, which is memory-bound: it draws `busy_share` of its
dynamic range (peak - idle) above idle. Each sequence in the batch adds compute, saturating towards the
peak (half-way at `batch_half`). Time spent on prompts (under continuous batching, the share of the GPU
the law calls phi) is compute-bound and draws the prefill knee. Decode and prompt time are clipped at the
cap each on its own: a cap throttles the steps that would draw more than it, not their average.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from queuemodels.types import PowerProfile

Batch = TypeVar("Batch", float, NDArray[np.float64])


@dataclass(frozen=True)
class Occupancy:
    """Where a replica's time goes: what the draw depends on."""

    batch_share: NDArray[np.float64]
    """Share of time with a batch of B running, B = 0 (idle) .. max batch."""
    prompt_share: float
    """Share of the busy time spent on prompts."""


def natural_draw_w(profile: PowerProfile, batch: Batch) -> Batch:
    """Uncapped draw of a decode step with `batch` sequences (batch >= 1)."""
    share = profile.busy_share + (1.0 - profile.busy_share) * batch / (batch + profile.batch_half)
    return profile.idle_power_w + (profile.max_power_w - profile.idle_power_w) * share


def prompt_draw_w(profile: PowerProfile) -> float:
    """Uncapped draw while prompts run: compute-bound, at the prefill knee."""
    return profile.knee_fraction * profile.max_power_w


def mean_draw_w(profile: PowerProfile, occupancy: Occupancy, power_cap_w: float | None) -> float:
    """Expected draw over the occupancy, never above the cap (nor the peak)."""
    limit = profile.max_power_w if power_cap_w is None else min(power_cap_w, profile.max_power_w)
    share = occupancy.batch_share
    batch = np.arange(1, len(share), dtype=float)
    decode = float(np.minimum(natural_draw_w(profile, batch), limit) @ share[1:])
    prompt = min(prompt_draw_w(profile), limit) * float(share[1:].sum())
    phi = occupancy.prompt_share
    return profile.idle_power_w * float(share[0]) + (1.0 - phi) * decode + phi * prompt
