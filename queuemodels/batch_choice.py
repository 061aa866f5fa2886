"""The max batch (vLLM `--max-num-seqs`) for one replica: the one that takes the most load within its targets,
or the one that serves a given load within them at the lowest draw. One sizing or one analysis per
candidate, through any `QueueModel`, so the choice reads the same model the optimizer does. Figures within
TIE of each other are a tie, won by the smaller batch: a batch the load never fills reads a rate or a draw a
hair apart (the chain's states past the smaller one carry 1e-8 of its mass, the rate is bisected to 1e-4), and
a larger batch is a restart for nothing."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from queuemodels.analyzer import QueueModel
from queuemodels.operating_point import BLOCK_LIMIT
from queuemodels.params import ServiceParams
from queuemodels.sizing import RATE_REL_TOL
from queuemodels.targets import Performance, Targets
from queuemodels.types import Load, ModelInputError, PowerProfile, ServerShape


@dataclass(frozen=True)
class BatchChoice:
    """A max batch and what it gives: the rate it can take, or its figures at a given rate."""

    max_batch: int
    max_rate_rps: float
    performance: Performance | None = None


TIE = RATE_REL_TOL
"""Relative difference within which two batches' rates (or draws) are a tie."""


def best_batch_for_rate(
    model: QueueModel,
    params: ServiceParams,
    load: Load,
    batches: Iterable[int],
    max_queue: int | None,
    targets: Targets,
    profile: PowerProfile | None = None,
    power_cap_w: float | None = None,
) -> BatchChoice:
    """The max batch that lets one replica take the most load within targets (the smallest within TIE of the most);
    max_batch 0 when none takes any."""
    rates = [(n, model.max_rate(params, load, ServerShape(n, max_queue, power_cap_w), targets, profile))
             for n in sorted(batches)]
    most = max((rate for _, rate in rates), default=0.0)
    if most <= 0.0:
        return BatchChoice(0, 0.0)
    return next(BatchChoice(n, rate) for n, rate in rates if rate * (1 + TIE) >= most)


def best_batch_for_power(
    model: QueueModel,
    params: ServiceParams,
    load: Load,
    batches: Iterable[int],
    max_queue: int | None,
    targets: Targets,
    profile: PowerProfile,
    power_cap_w: float | None = None,
) -> BatchChoice | None:
    """The max batch that serves `load.rate_rps` within targets at the lowest mean draw (the smallest within TIE of
    the lowest: a batch the load never fills draws the same); None when none does (or none without turning requests
    away)."""
    fits: list[tuple[int, Performance]] = []
    for n in sorted(batches):
        try:
            perf = model.analyze(params, load, ServerShape(n, max_queue, power_cap_w), profile)
        except ModelInputError:
            continue
        if perf.meets(targets) and perf.block_probability <= BLOCK_LIMIT:
            fits.append((n, perf))
    if not fits:
        return None
    least = min(perf.power_w for _, perf in fits)
    n, perf = next((n, perf) for n, perf in fits if perf.power_w * (1 - TIE) <= least)
    return BatchChoice(n, load.rate_rps, perf)
