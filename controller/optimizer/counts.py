"""Replica counts from brackets: what a bracket of known rates decides, the rates that widen it to a drifting
load, and the search over counts where it decides nothing (controller.optimizer.sizing runs them).

A bracket holds, per shape, the largest rate per replica checked that meets the targets and the smallest
checked that does not; fitting is monotone in the rate, so n replicas fit where their share is at or below the
first and miss where it is at or above the second.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
from numpy.typing import NDArray

from queuemodels.step_arrays import Bools, Floats

DRIFT = 0.1
"""Relative move of a load between cycles the brackets are widened to answer without a solve (`drift_probes`)."""


def from_brackets(fits_rps: Floats, misses_rps: Floats, rate_rps: Floats | float, most: Floats | int) -> tuple[
        Bools, NDArray[np.int64]]:
    """Per shape, whether its bracket alone answers, and the need where it does: n replicas' shares are known to
    fit and n - 1's known not to (or n is 1), or the most replicas' share is known not to fit (the shape cannot
    carry the load: a need past `most`), so no search is needed, as for most shapes from one cycle to the next."""
    known = fits_rps > 0.0
    fits = np.where(known, fits_rps, 1.0)
    n = np.clip(np.ceil(rate_rps / fits), 1.0, most + 1.0)  # past `most` it is enough that `most` do not fit
    while (fewer := (n > 1.0) & (rate_rps / np.maximum(n - 1.0, 1.0) <= fits)).any():  # ceil's rounding: a step
        n = np.where(fewer, n - 1.0, n)
    while (more := (rate_rps / n > fits) & (n <= most)).any():
        n = np.where(more, n + 1.0, n)
    never = rate_rps / np.maximum(most, 1.0) >= misses_rps  # `most`'s share is known not to fit: no count does
    decided = never | known & ((n <= 1.0) | (rate_rps / np.maximum(n - 1.0, 1.0) >= misses_rps))
    return decided, np.where(decided & ~never, n, most + 1).astype(np.int64)


def drift_probes(rate_rps: float, need: int | None, most: int) -> tuple[float, ...]:
    """Rates whose answers let the brackets decide this need again while the load stays within DRIFT of
    `rate_rps`: the need's share at a load DRIFT larger, and the share of one replica fewer (or of the most, where
    none carries it) at a load DRIFT smaller. Asked beside the next round's checks, once a shape is sized."""
    if need is None:
        return (rate_rps * (1.0 - DRIFT) / most,)
    up = rate_rps * (1.0 + DRIFT) / need
    return (up,) if need == 1 else (up, rate_rps * (1.0 - DRIFT) / (need - 1))


def fit_search(most: int, guess: int) -> Generator[int, bool, int | None]:
    """Smallest n in 1..most that fits, fitting monotone (false, then true): yields each n to check and is sent
    whether it fits; outward from `guess` in doubling steps, then by bisection, so a right guess costs two
    checks and a wrong one a few more. A generator, so many shapes' searches can be answered together."""
    n = min(max(guess, 1), most)
    bad, good, step = 0, n, 1
    if (yield n):
        while good - step > bad:
            if not (yield good - step):
                bad = good - step
                break
            good, step = good - step, 2 * step
    else:
        bad = n
        while True:
            probe = min(most, bad + step)
            if (yield probe):
                good = probe
                break
            if probe == most:
                return None
            bad, step = probe, 2 * step
    while good - bad > 1:
        mid = (good + bad) // 2
        if (yield mid):
            good = mid
        else:
            bad = mid
    return good
