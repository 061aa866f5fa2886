"""GPU power draw of a replica: what a step at each batch size draws, and the mean over the chain's occupancy.

A busy GPU streams its weights whatever the batch, which is memory-bound: it draws `busy_share` of its
dynamic range (peak - idle) above idle. Each sequence in the batch adds compute, saturating towards the
peak (half-way at `batch_half`). Time spent on prompts (under continuous batching, the share of the GPU
the law calls phi) is compute-bound and draws the prefill knee. Decode and prompt time are clipped at the
cap each on its own: a cap throttles the steps that would draw more than it, not their average.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from queuemodels.clock import clock_draw_scale
from queuemodels.types import PowerProfile

Batch = TypeVar("Batch", float, NDArray[np.float64])


@dataclass(frozen=True)
class Occupancy:
    """Where a replica's time goes: what the draw depends on. Many windows' occupancies stack along a
    leading axis (`stack`), so one curve is evaluated on all of them at once."""

    batch_share: NDArray[np.float64]
    """Share of time with a batch of B running, B = 0 (idle) .. max batch (last axis)."""
    prompt_share: NDArray[np.float64]
    """Share of the busy time spent on prompts."""

    @classmethod
    def stack(cls, many: Sequence[Occupancy]) -> Occupancy:
        """One occupancy per row, padded with zero shares to the largest max batch."""
        share = np.zeros((len(many), max(o.batch_share.shape[-1] for o in many)))
        for row, o in zip(share, many, strict=True):
            row[: o.batch_share.shape[-1]] = o.batch_share
        return cls(share, np.array([float(o.prompt_share) for o in many]))


def natural_draw_w(profile: PowerProfile, batch: Batch, clock: float = 1.0) -> Batch:
    """Uncapped draw of a decode step with `batch` sequences (batch >= 1) at a clock share."""
    compute = batch / (batch + profile.batch_half) * clock_draw_scale(profile, clock)
    share = profile.busy_share + (1.0 - profile.busy_share) * compute
    return profile.idle_power_w + (profile.max_power_w - profile.idle_power_w) * share


def prompt_draw_w(profile: PowerProfile, clock: float = 1.0) -> float:
    """Uncapped draw while prompts run: compute-bound, at the prefill knee (at the maximum clock)."""
    knee = profile.knee_fraction * profile.max_power_w
    return profile.idle_power_w + (knee - profile.idle_power_w) * clock_draw_scale(profile, clock)


def uncapped_peak_w(profile: PowerProfile, max_batch: int, clock: float = 1.0) -> float:
    """The most a shape draws uncapped, its full batch or its prompts: a cap at or above it changes neither its
    step times nor its draw, so it is the same shape as the GPU left uncapped."""
    return max(prompt_draw_w(profile, clock), float(natural_draw_w(profile, float(max_batch), clock)))


def limit_w(profile: PowerProfile, power_cap_w: float | None) -> float:
    """What a GPU may draw: its cap, or its peak when uncapped."""
    return profile.max_power_w if power_cap_w is None else min(power_cap_w, profile.max_power_w)


def draws_w(profile: PowerProfile, occupancy: Occupancy, limits_w: NDArray[np.float64],
            clocks: NDArray[np.float64] | float = 1.0,
            leak: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
    """Expected draw of each (stacked) occupancy, each phase clipped at that occupancy's limit, at its clock.
    `leak` (per occupancy): the share of a decode draw above the limit still counted, for a fit that needs a
    slope there."""
    natural, prompt_w = _curves(profile, occupancy.batch_share.shape[-1] - 1, np.asarray(clocks, dtype=float))
    return _mixed(profile, occupancy, natural, prompt_w, limits_w, leak)


def _mixed(profile: PowerProfile, occupancy: Occupancy, natural: NDArray[np.float64],
           prompt_w: NDArray[np.float64] | float, limits_w: NDArray[np.float64],
           leak: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
    """Idle, decode and prompt time, each at its draw, each phase clipped at the limit on its own."""
    share, phi = occupancy.batch_share, occupancy.prompt_share
    clipped = np.minimum(natural, limits_w[..., None])
    if leak is not None:
        clipped = clipped + leak[..., None] * (natural - clipped)
    decode = np.add.reduce(clipped * share[..., 1:], axis=-1)
    prompt = np.minimum(prompt_w, limits_w) * np.add.reduce(share[..., 1:], axis=-1)
    out: NDArray[np.float64] = profile.idle_power_w * share[..., 0] + (1.0 - phi) * decode + phi * prompt
    return out


def _curves(profile: PowerProfile, max_batch: int,
            clocks: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The uncapped draw of a decode step at batches 1..max_batch (last axis), and of prompts, at each clock."""
    batch = np.arange(1, max_batch + 1, dtype=float)
    scale = clock_draw_scale(profile, clocks)
    dynamic = profile.max_power_w - profile.idle_power_w
    compute = batch / (batch + profile.batch_half) * scale[..., None]
    natural = profile.idle_power_w + dynamic * (profile.busy_share + (1.0 - profile.busy_share) * compute)
    knee = profile.knee_fraction * profile.max_power_w
    return natural, profile.idle_power_w + (knee - profile.idle_power_w) * scale


def mean_draw_w(profile: PowerProfile, occupancy: Occupancy, power_cap_w: float | None,
                clock: float | None = None) -> float:
    """Expected draw over one occupancy at a locked clock share (None: unlocked), never above the cap: `draws_w`
    for one occupancy, its curves worked out once per profile, batch and clock (`_decode_curve`)."""
    natural, prompt_w = _decode_curve(profile, occupancy.batch_share.shape[-1] - 1, 1.0 if clock is None else clock)
    return float(_mixed(profile, occupancy, natural, prompt_w, np.asarray(limit_w(profile, power_cap_w))))


@lru_cache(maxsize=256)
def _decode_curve(profile: PowerProfile, max_batch: int, clock: float) -> tuple[NDArray[np.float64], float]:
    """`_curves` at one clock, worked out once: a pure function of the profile, read at every analysis."""
    natural, prompt_w = _curves(profile, max_batch, np.asarray(clock, dtype=float))
    natural.flags.writeable = False
    return natural, float(prompt_w)
