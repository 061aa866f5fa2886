"""Percentiles of ITL from the chain's stationary distribution.

Tokens are weighted by the rate they are produced in each state, B / decode(B). Under continuous batching a step is
a plain decode step plus the prompts that arrived during the step before (`_prompt_steps`); in the batched reading
a step that also carries a new prompt (probability X * decode(B)) is longer by prefill(1) - decode(1).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy.special import gammaincinv, gammaln

from queuemodels.chain import Stationary
from queuemodels.service_time import StepLaw
from queuemodels.tails import runs

PROMPT_GROUPS = 8
"""Groups of batches whose prompt-carrying steps share one plain step length (`_prompt_steps`)."""
K_MAX = 24
"""Most prompts one step is taken to carry; the mass beyond rides the last."""
NEGLIGIBLE = 1e-9
"""Share of steps below which more prompts per step are not read."""
QUANTILES = (np.arange(8) + 0.5) / 8
"""Where a prompt-carrying step's spread of prompt costs is read."""
_COUNTS = np.arange(0, K_MAX + 1, dtype=float)
"""Prompts a step may carry, k = 0..K_MAX (`prompts_per_step`)."""
_LOG_COUNT_FACTORIAL = gammaln(_COUNTS + 1.0)
"""log k! of each."""
_COUNTS.flags.writeable = _LOG_COUNT_FACTORIAL.flags.writeable = False


def _itl_distribution(
    chain: Stationary, law: StepLaw, throughput_per_ms: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Token-weighted ITL values, ascending, and their cumulative probabilities. Under continuous batching a
    step's length is a plain decode step plus the prompts it carries (`_prompt_steps`); in the batched reading
    a step that carries a prompt is longer by prefill(1) - decode(1)."""
    n_batch = chain.max_batch
    by_batch = chain.batch_share[1:]
    batch = np.arange(1, n_batch + 1, dtype=float)
    step = law.at_batches(n_batch).decode
    weight = by_batch * batch / step
    if np.add.reduce(weight) <= 0:
        weight = np.zeros(n_batch)
        weight[0] = 1.0
    if law.prompt_ms > 0.0 and law.residual_share > 0.0:
        values, weights = _prompt_steps(law, step, weight, throughput_per_ms)
    else:
        spike = max(0.0, law.prefill(1.0) - law.decode(1.0))
        with_prompt = np.minimum(1.0, throughput_per_ms * step)
        values = np.concatenate([step, step + spike])
        weights = np.concatenate([weight * (1.0 - with_prompt), weight * with_prompt])
    order = values.argsort()
    cum = weights[order].cumsum()
    return values[order], cum / cum[-1]


def _prompt_steps(law: StepLaw, step: NDArray[np.float64], weight: NDArray[np.float64],
                  throughput_per_ms: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """ITL values and token weights when prompts ride decode steps. The law's decode step is the mean over steps,
    stretched by 1 / (1 - phi) for the prompts' share phi of the GPU; a step carries the K prompts that arrived
    during the one before, so it is the plain step s plus K prompt costs c, and K' ~ Poisson(lambda (s + K c)):
    a branching process whose stationary K has mean lambda s / (1 - m) and variance mean / (1 - m^2), m = lambda c
    (taken as a negative binomial with those moments). A prompt that slows with the clock or a cap (c is the
    law's, fitted) makes both the stall and the chance of another prompt joining it grow: one spike of one
    prompt's cost saw neither the steps stalled behind two prompts nor that most steps carry none. K prompts'
    costs (each of spread prompt_cv) are a gamma variable read at QUANTILES, per group (PROMPT_GROUPS) of batches."""
    cost = law.prompt_ms
    phi = min(law.prompt_share, 0.99)
    plain = step * (1.0 - phi)
    m = min(throughput_per_ms * cost, 0.99)
    starts, owner = runs(len(weight), PROMPT_GROUPS)
    groups = len(starts)
    mass = np.add.reduceat(weight, starts)
    group_plain = np.add.reduceat(weight * plain, starts) / np.where(mass > 0.0, mass, 1.0)
    mean_k = throughput_per_ms * group_plain / (1.0 - m)
    pmfs, tops = prompts_per_step(mean_k[None, :], np.array([m]), np.array([groups]))
    top = int(tops[0])
    pmf = pmfs[0, :, : top + 1]
    extra = _prompt_costs(law.prompt_cv**2)[:top] * cost
    # steps without a prompt keep each batch's own length; those with k prompts, their group's mean plain step
    # plus the k prompts' cost at each of its quantiles (one where prompts do not vary), an equal share of the steps
    n, width = len(plain), extra.shape[1]
    values, weights = np.empty(n + groups * top * width), np.empty(n + groups * top * width)
    values[:n], weights[:n] = plain, weight * pmf[owner, 0]
    np.add(group_plain[:, None, None], extra[None, :, :], out=values[n:].reshape(groups, top, width))
    np.multiply(mass[:, None, None], (pmf[:, 1:] / width)[:, :, None], out=weights[n:].reshape(groups, top, width))
    return values, weights


def prompts_per_step(mean_k: NDArray[np.float64], m: NDArray[np.float64],
                     groups: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The negative binomial pmf of the prompts a step carries, k = 0..K_MAX, per row and group of batches (mean
    `mean_k`, variance mean / (1 - m^2); a row's groups past its `groups` are padding), cut past the last count
    any of a row's groups reaches NEGLIGIBLE at (`top`, at least 1; K_MAX where even the mean is past it), each
    group's remaining mass on that count. For one chain (`_prompt_steps`) and many (queuemodels.stacked_itl)."""
    m2 = m * m
    p = 1.0 - m2
    r = np.maximum(mean_k * (p / np.maximum(m2, 1e-12))[:, None], 1e-12)[:, :, None]
    k = _COUNTS
    log_pmf = (gammaln(k + r) - gammaln(r) - _LOG_COUNT_FACTORIAL + r * np.log(p)[:, None, None]
               + k * np.log(np.maximum(m2, 1e-300))[:, None, None])
    pmf = np.exp(log_pmf)
    above = pmf > NEGLIGIBLE
    if int(groups.min()) < mean_k.shape[1]:  # padding: not read
        above &= (np.arange(mean_k.shape[1])[None, :] < groups[:, None])[:, :, None]
    reached = np.logical_or.reduce(above, axis=1)
    top: NDArray[np.int64] = np.maximum(K_MAX - reached[:, ::-1].argmax(axis=1), 1)
    pmf = np.where(k <= top[:, None, None], pmf, 0.0)
    rest = np.maximum(1.0 - np.add.reduce(pmf, axis=2), 0.0)
    pmf[np.arange(len(top))[:, None], np.arange(mean_k.shape[1])[None, :], top[:, None]] += rest
    return pmf, top


@lru_cache(maxsize=64)
def _prompt_costs(cv2: float) -> NDArray[np.float64]:
    """The summed cost of K = 1..K_MAX prompts, in units of one prompt's mean, at QUANTILES (rows: K): a gamma of
    shape K / cv^2 for prompts of spread cv (a point at K without spread). Cached: a service's cv is fixed."""
    k = np.arange(1, K_MAX + 1, dtype=float)[:, None]
    if cv2 <= 0.0:
        return k
    out: NDArray[np.float64] = gammaincinv(k / cv2, QUANTILES[None, :]) * cv2
    return out


def itl_quantiles(
    chain: Stationary, law: StepLaw, throughput_per_ms: float, probs: Sequence[float]
) -> list[float]:
    """Token-weighted ITL percentiles, with prompt-interference spikes."""
    values, cum = _itl_distribution(chain, law, throughput_per_ms)
    picks = cum.searchsorted(probs, side="left")
    return [float(values[min(i, len(values) - 1)]) for i in picks]


def itl_exceedance(chain: Stationary, law: StepLaw, throughput_per_ms: float, t_ms: float) -> float:
    """P(ITL > t_ms): a percentile target q is met exactly when this is <= 1 - q."""
    values, cum = _itl_distribution(chain, law, throughput_per_ms)
    below = int(np.searchsorted(values, t_ms, side="right"))
    return 1.0 - float(cum[below - 1]) if below > 0 else 1.0
