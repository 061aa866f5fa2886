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
from queuemodels.sizing import RATE_REL_TOL
from queuemodels.targets import Performance, Targets
from queuemodels.types import Load, ModelInputError, PowerProfile, ServerShape, ServiceParams


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
    """The max batch that lets one replica take the most load within targets (the smallest on a tie);
    max_batch 0 when none takes any."""
    best = BatchChoice(0, 0.0)
    for n in sorted(batches):
        rate = model.max_rate(params, load, ServerShape(n, max_queue, power_cap_w), targets, profile)
        if rate > best.max_rate_rps * (1 + TIE):
            best = BatchChoice(n, rate)
    return best


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
    """The max batch that serves `load.rate_rps` within targets at the lowest mean draw (the smallest among
    equal draws: a batch the load never fills draws the same); None when none does (or none without
    turning requests away)."""
    best: BatchChoice | None = None
    for n in sorted(batches):
        try:
            perf = model.analyze(params, load, ServerShape(n, max_queue, power_cap_w), profile)
        except ModelInputError:
            continue
        if not perf.meets(targets) or perf.block_probability > 1e-3:
            continue
        if best is None or best.performance is None or perf.power_w < best.performance.power_w * (1 - TIE):
            best = BatchChoice(n, load.rate_rps, perf)
    return best
