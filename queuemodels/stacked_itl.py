"""P(ITL > t) of many stacked chains at once, as queuemodels.itl_tails reads it, for sizing under a percentile
target (queuemodels.stacked_tails has the TTFT side and the chains' layout).

Tokens are weighted by the rate each batch produces them. In the batched reading a step that carries a prompt is
one spike longer; under continuous batching a step is a plain decode step plus the prompts that arrived during
the one before, a negative binomial number of them, read per group of batches (`itl_tails._prompt_steps`). Here
every row's groups, prompt counts and prompt costs are arrays of (rows, groups, counts, quantiles), so a round of
checks costs a few array passes, not a distribution built through the interpreter per point.
"""

from __future__ import annotations

import numpy as np

from queuemodels.itl_tails import K_MAX, PROMPT_GROUPS, QUANTILES, _prompt_costs, prompts_per_step
from queuemodels.stacked_tails import Chains
from queuemodels.step_arrays import Bools, Floats


def itl_exceedances(c: Chains, itl_ms: Floats) -> Floats:
    """P(ITL > itl_ms) per row (itl_tails.itl_exceedance)."""
    laws, row, b = c.laws, c.row, c.b
    share = np.where(b == c.top[row], c.head + c.tail0[row], c.head) / c.total[row]
    step = laws.decode(b, lambda x: x[row])
    weight = share * b / step  # > 0 in total: a covered row has load
    throughput = c.lam * (1.0 - c.block)
    limit = itl_ms[row]
    spike = np.maximum(0.0, laws.prefill(np.ones(len(c.top))) - laws.decode(np.ones(len(c.top))))
    with_prompt = np.minimum(1.0, throughput[row] * step)
    over = np.add.reduceat(weight * ((1.0 - with_prompt) * (step > limit)
                                     + with_prompt * (step + spike[row] > limit)), c.starts)
    total = np.add.reduceat(weight, c.starts)
    riding = (laws.prompt_ms > 0.0) & (laws.residual_share > 0.0)
    if riding.any():
        over[riding], total[riding] = _riding(c, riding, weight, step, throughput, itl_ms)
    out: Floats = over / total
    return out


def _riding(c: Chains, rows: Bools, weight: Floats, step: Floats, throughput: Floats,
            itl_ms: Floats) -> tuple[Floats, Floats]:
    """The token weight over the limit and in all of the `rows` whose prompts ride decode steps
    (itl_tails._prompt_steps): each batch's plain step where no prompt rides it, else its group's mean plain step
    plus the summed cost of the K prompts it carries, read at QUANTILES."""
    laws = c.laws
    idx = np.flatnonzero(rows)
    states = rows[c.row]
    at = (np.cumsum(rows) - 1)[c.row[states]]
    w, b = weight[states], c.b[states]
    cost, x = laws.prompt_ms[idx], throughput[idx]
    phi = np.minimum(laws.prompt_share[idx], 0.99)
    plain = step[states] * (1.0 - phi[at])
    # groups of batches as itl_tails takes them: min(PROMPT_GROUPS, N) runs starting at (g N) // groups
    n = c.top[idx].astype(np.int64)
    groups = np.minimum(PROMPT_GROUPS, n)
    owner = (b.astype(np.int64) * groups[at] + n[at] - 1) // n[at] - 1
    flat = at * PROMPT_GROUPS + owner
    size = len(idx) * PROMPT_GROUPS
    mass = np.bincount(flat, w, size).reshape(len(idx), PROMPT_GROUPS)
    group_plain = np.bincount(flat, w * plain, size).reshape(mass.shape) / np.where(mass > 0.0, mass, 1.0)
    m = np.minimum(x * cost, 0.99)
    pmf, _ = prompts_per_step(x[:, None] * group_plain / (1.0 - m[:, None]), m, groups)
    # the summed cost of k = 1..K_MAX prompts at each quantile, per row (rows of one base share a spread)
    spreads, which = np.unique(laws.prompt_cv[idx] ** 2, return_inverse=True)
    costs = np.stack([np.broadcast_to(_prompt_costs(float(v)), (K_MAX, len(QUANTILES))) for v in spreads])
    values = group_plain[:, :, None, None] + (costs[which] * cost[:, None, None])[:, None, :, :]
    riders = mass[:, :, None] * pmf[:, :, 1:]  # each quantile of k prompts' cost: 1 / len(QUANTILES) of them
    limit = itl_ms[idx]
    plain_w = w * pmf[at, owner, 0]
    over = (np.bincount(at, plain_w * (plain > limit[at]), len(idx))
            + (riders * (values > limit[:, None, None, None]).mean(axis=3)).sum(axis=(1, 2)))
    total = np.bincount(at, plain_w, len(idx)) + riders.sum(axis=(1, 2))
    return over, total
