"""The pair filter's robust MAP fit (the warm-up's, a shift's and the periodic refit's), as functions of what it
is given: log errors under soft-L1 beyond the observation error, and a prior that keeps an anchor's shape."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from queuemodels import ModelInputError, ServiceParams
from queuemodels.params import NAMES
from tuner.filter_settings import FilterSettings
from tuner.observation import Observation

Vector = NDArray[np.float64]
Errors = Callable[[list[Vector]], list[list[Vector | None]]]
"""Log errors [TTFT, ITL] of the model at each of several states (solved together), one list per state, one entry
per window (None where it cannot take the window's load)."""


def map_fit(errors: Errors, start_x: Vector, anchor: Vector, scaled: NDArray[np.bool_], free: NDArray[np.bool_],
            bounds: tuple[Vector, Vector], settings: FilterSettings, tol: float) -> Vector:
    """Robust MAP fit of the free log parameters: log errors under soft-L1 beyond the observation error (one burst
    window does not drag it), plus a prior that keeps the anchor's shape at a free common scale over the `scaled`
    entries, so that directions a few windows leave unidentified (the gamma/delta ridge) stay where the anchor had
    them. Trust-region reflective within the bounds, until the cost and the step change by less than `tol`.
    Returns the state, its fixed entries (the prior's zeros) as `start_x` has them."""
    low, high = bounds
    lo = np.append(np.log(low[free]), -np.log(10.0))
    hi = np.append(np.log(high[free]), np.log(10.0))
    held = np.log(anchor[free])
    shape = scaled[free]
    start = np.clip(np.append(np.log(start_x[free]), np.mean((np.log(start_x[free]) - held)[shape])), lo, hi)
    sigma_obs = settings.error_level / 1.96
    prior_weight = sigma_obs / settings.anchor_spread

    def residuals_many(vs: list[Vector]) -> list[Vector]:
        states = []
        for v in vs:
            x = start_x.copy()
            x[free] = np.exp(v[:-1])
            states.append(x)
        return [np.concatenate([prior_weight * (v[:-1] - held - v[-1] * shape),
                                *(np.full(2, 10.0) if e is None else e for e in errs)])
                for v, errs in zip(vs, errors(states), strict=True)]

    result = stacked_least_squares(residuals_many, start, bounds=(lo, hi), method="trf", diff_step=1e-4, ftol=tol,
                                   xtol=tol, loss="soft_l1", f_scale=sigma_obs)
    x = start_x.copy()
    x[free] = np.clip(np.exp(result.x[:-1]), low[free], high[free])
    return x


def stacked_least_squares(residuals_many: Callable[[list[Vector]], list[Vector]], start: Vector,
                          **options: Any) -> Any:
    """scipy's least_squares on residuals worked out for many states at once: a finite-difference Jacobian's
    perturbed states (least_squares' `workers` map, scipy 1.16 on) go to the queue model in one call, which solves
    them together. One call a parameter had been most of a fit's time, and of the daemon's tuner's. (scipy reports a
    TypeError raised inside the map as the map's own, chained to the real one.)"""
    from scipy.optimize import least_squares  # loaded where a fit runs, not at every command's start

    return least_squares(lambda v: residuals_many([v])[0], start,
                         workers=lambda _fun, vs: residuals_many(list(vs)), **options)


def anchor_for(prior: ServiceParams, anchor: Vector, prior_vector: Vector, observations: list[Observation]) -> Vector:
    """The shape a fit holds. A step prior written in gen1's numbers (kappa left 0) carries gen1's per-sequence cost
    in beta, the KV read at the context its windows ran included, while the step family reads that read apart
    (kappa x context): held at both, the per-sequence cost is counted twice, and the fit trades the excess against
    the other terms (the step's fixed time, the prompt's). So its beta is held at what is left once kappa's starting
    value has read the KV at these windows' mean context (at least a tenth of it)."""
    if prior.family != "step" or prior.kappa_ms > 0 or not np.array_equal(anchor, prior_vector):
        return anchor
    context = float(np.mean([o.in_tokens + o.out_tokens / 2.0 for o in observations]))
    names = NAMES["step"]
    held = anchor.copy()
    beta, kappa = names.index("beta_ms"), names.index("kappa_ms")
    held[beta] = max(held[beta] - held[kappa] * context, held[beta] / 10.0)
    return held


def scaled_entries(family: str, size: int) -> NDArray[np.bool_]:
    """Which entries of the state move with the anchor's common scale: the times, not the token counts (a step's
    token budget is no time: scaled with the times, it would chunk prompts no window saw chunked) nor rho, a ratio
    of compute per token (a decode token runs a prompt token's GEMMs): scaled with the times it read the times'
    scale (0.5-0.7) where no window reaches the crossover, and put capacity at batch 256 10-12 % over on
    queue_heldout's engines."""
    names = [*NAMES[family], "prefill_sensitivity"][:size]
    return np.array([not n.endswith("_tokens") and n != "rho" for n in names])


START_SCALES = (1.0, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1)
"""The estimate's free entries times these: the starts a fit chooses between (`carrying_start`)."""


def carrying_start(x: Vector, low: Vector, free: NDArray[np.bool_], errors: Errors) -> Vector:
    """Of the estimate scaled down by START_SCALES, the start where the model carries every observed load and misses
    the worst window least (the estimate itself where it is as close): where the model calls a load impossible the
    loss is flat, and a fit started there cannot leave; nor one started where an overloaded queue puts TTFT 10^4
    times what was seen (a server become 14x faster at prompts), its slope lost to the robust loss."""
    starts = []
    for scale in START_SCALES:
        start = x.copy()
        start[free] = np.maximum(x[free] * scale, low[free])
        starts.append(start)
    misses = [max((float(np.abs(e).max()) for e in errs if e is not None), default=0.0)
              if all(e is not None for e in errs) else math.inf for errs in errors(starts)]
    best = min(range(len(starts)), key=lambda i: misses[i])
    return starts[best] if math.isfinite(misses[best]) else x.copy()


def log_jacobian(predict: Callable[[list[Vector]], list[Vector | None]], x: Vector,
                 free: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Of log `predict` at `x`, by central differences, eps = 1 % of each free parameter (every perturbed state in
    one call of `predict`); 0 for the others (a term the prior leaves out: never moved, and a perturbed 1e-12 is no
    value a term may take). ModelInputError where the model cannot take the load at a perturbed state."""
    columns = np.flatnonzero(free).tolist()
    states: list[Vector] = []
    for j in columns:
        eps = 0.01 * abs(x[j]) or 1e-6
        up, down = x.copy(), x.copy()
        up[j] += eps
        down[j] = max(down[j] - eps, 1e-12)
        states += [up, down]
    logs = [np.log(h) for h in predict(states) if h is not None]
    if len(logs) < len(states):
        raise ModelInputError("the model cannot take this window's load at a perturbed state")
    out = np.zeros((len(logs[0]), len(x)))
    for k, j in enumerate(columns):
        out[:, j] = (logs[2 * k] - logs[2 * k + 1]) / (states[2 * k][j] - states[2 * k + 1][j])
    return out
