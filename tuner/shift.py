"""Telling a shift of the server from a young estimate: after a run of gate rejections, whether one law explains
the run together with the recent windows (then it is refitted on them all), or the server changed (then the
warm-up starts again from the run)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from tuner.observation import Observation

Residuals = list[NDArray[np.float64]]
"""Log errors [TTFT, ITL] of one law at each window: the recent ones, then the rejected run."""


def three_sigma(error_level: float) -> float:
    """Three sigma of the observation error, in log (`error_level` is its 95 % bound)."""
    return 3.0 * error_level / 1.96


def within(residuals: Residuals | None, limit: float) -> list[bool]:
    """Which residuals are within `limit` (3 sigma of the observation error; none where the law took no load)."""
    if residuals is None:
        return [False]
    return [bool(np.abs(r).max() <= limit) for r in residuals]


def one_law(history: list[Observation], suspects: list[Observation], before: list[bool], residuals: Residuals,
            limit: float) -> bool:
    """Whether the law fitted over the recent windows and the rejected run together explains them (a young
    estimate, not a shift): it puts every rejected window within 3 sigma of the observation error, and as many of
    the recent ones as the estimate did before it (`before`; 80 % of them where it did better): a shift is a run
    the old windows' law cannot take in without losing them. Measured against the estimate, not absolutely: a law
    that misses some steady windows (gen1's queueing at 80 % load, 0.28 to 0.37 out) missed them before the run
    too, and a new warm-up on the run alone would only forget them. One too where every rejected window errs as
    the recent windows of its shape do under that law (`as_neighbours`): a law that cannot fit one shape with the
    rest misses the run there as it missed them."""
    ok = within(residuals, limit)
    rejected_fit = all(ok[len(history):])
    kept = float(np.mean(ok[: len(history)] or [True]))
    return (rejected_fit and kept >= min(0.8, float(np.mean(before or [True])))) or as_neighbours(
        history, suspects, residuals, limit)


def as_neighbours(history: list[Observation], suspects: list[Observation], residuals: Residuals,
                  limit: float) -> bool:
    """Whether every rejected window errs as the recent windows of its shape do (within `limit` of their mean error:
    a max batch within 2x, prompts within 1.5x): what the law misses there, not a change in time. A server that
    changed leaves its old windows and the run on either side of any law fitted to both."""
    if not history:
        return False
    recent = residuals[: len(history)]
    for obs, error in zip(suspects, residuals[len(history):], strict=True):
        like = [r for o, r in zip(history, recent, strict=True)
                if 0.5 <= o.max_batch / obs.max_batch <= 2.0 and 1 / 1.5 <= o.in_tokens / obs.in_tokens <= 1.5]
        if not like or np.abs(error - np.mean(like, axis=0)).max() > limit:
            return False
    return True
