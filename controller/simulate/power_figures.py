"""A run's power figures beyond the budget's violations, measured on the GPUs' energy counters:

- budget drops (a source's, a demand-response signal's, a budget event's): `drop_settle_s`, the longest any
  drop took from the new budget to the end of the first second whose mean site draw was under it;
  `drop_over_after_s`, seconds over the budget after that, until the budget moved again;
- power domains: `domain_over_s`, seconds any domain's mean draw was over its limit, and
  `domain_longest_over_s`, the longest such run;
- ramp limits, read on RAMP_WINDOW_S means of the draw (each against the one before it, per second): the
  largest rise and fall, and the seconds it rose faster than `ramp_up_w_per_s` (`ramp_up_fast_s`) or fell
  faster than `ramp_down_w_per_s` (`ramp_down_fast_s`), each by more than RAMP_SHARE, outside a budget drop
  (windows holding any of it, until a second after it settled); `ramp_down_fast_by_limits_s` counts the
  falls where the limits' sum fell that fast too (the ones the governor could have held; a load that falls
  by itself cannot be);
- carbon: `co2_mg_per_token`, milligrams of CO2 (the GPUs' energy each second x the grid's intensity then) per
  output token of finished requests, where the config has a carbon CSV; `mean_budget_w`, the budget's mean;
  and what bounds the gain a budget that follows the grid can make: `budget_bound_share`, the share of seconds
  whose draw was within BOUND_SHARE of the budget (elsewhere a lower budget would have cut nothing), and
  `idle_energy_share`, the share of the energy the GPUs would draw with no process (paid whatever the plan).

A figure whose subject is absent (no drop, no domain, no ramp limit, no intensity) is None.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from controller.settings import PowerSettings, Settings
from controller.simulate.runner import Trace
from controller.strict_json import rounded
from simulator.hardware import SPECS

BOUND_SHARE = 0.05
"""A second's draw this close under the budget counts as bound by it."""
RAMP_SHARE = 0.05
"""A change of the draw counts against a ramp limit when it passes the limit by this share."""
RAMP_WINDOW_S = 10.0
"""Ramps are read on the draw's means over this long, one after the other (a utility meters demand over
intervals; the plant's 1-s means swing by a whole engine step's energy, tens of watts on 8 GPUs)."""


def drops(trace: Trace) -> list[tuple[int, int, int]]:
    """For each budget drop: the first second under the new budget; the first second whose draw is under the budget
    then (-1 if none); and the second the drop ends: once met, where the budget moves again; unmet, where it is back
    at the budget it dropped from (or the run's end). A drop not yet met that steps down again, or up by less, goes on
    as one drop: a budget falling 10 W a second for a minute, 100 W under the draw throughout, read as met within 2 s
    when each step was a drop of its own. Nor does a budget lifted after a drop meet it: a drop to 10 W never met had
    read "settled" against the budget after it."""
    b, d = trace.budget_w, trace.draw_w
    out, k, n = [], 1, len(b)
    while k < n:
        if b[k] >= b[k - 1]:
            k += 1
            continue
        met, end = -1, n
        for i in range(k, n):  # unmet, it ends only where the budget is back to where it dropped from
            if i > k and (b[i] != b[i - 1] if met >= 0 else b[i] >= b[k - 1]):
                end = i
                break
            if met < 0 and d[i] <= b[i]:
                met = i
        out.append((k, met, end))
        k = end
    return out


def _longest_run(flags: NDArray[np.bool_]) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def drop_figures(trace: Trace, dt: float) -> dict[str, float | None]:
    found = drops(trace)
    if not found:
        return {"drop_settle_s": None, "drop_over_after_s": None}
    settle, over = 0.0, 0
    for k, j, end in found:
        if j < 0:  # never met while it held: all of it unsettled
            settle = max(settle, (end - k) * dt)
            continue
        settle = max(settle, (j - k + 1) * dt)
        over += int(np.count_nonzero(trace.draw_w[j:end] > trace.budget_w[j:end]))
    return {"drop_settle_s": settle, "drop_over_after_s": over * dt}


def domain_figures(power: PowerSettings, trace: Trace, dt: float) -> dict[str, float | None]:
    if not power.domains:
        return {"domain_over_s": None, "domain_longest_over_s": None}
    over_s, longest = 0.0, 0.0
    for d in power.domains:
        flags = trace.domain_draw_w[d.name] > d.limit_w
        over_s += float(np.count_nonzero(flags)) * dt
        longest = max(longest, _longest_run(flags) * dt)
    return {"domain_over_s": over_s, "domain_longest_over_s": longest}


def window_rate(series: NDArray[np.float64], w: int, dt: float) -> NDArray[np.float64]:
    """rate[k]: the mean of seconds k .. k + w - 1 less the mean of the w seconds before, per second (nan for
    the first w seconds and the last w - 1, which lack a whole window)."""
    n = len(series)
    out = np.full(n, np.nan)
    if n < 2 * w:
        return out
    c = np.concatenate(([0.0], np.cumsum(series)))
    k = np.arange(w, n - w + 1)
    out[k] = ((c[k + w] - c[k]) - (c[k] - c[k - w])) / (w * w * dt)
    return out


def ramp_figures(power: PowerSettings, trace: Trace, dt: float) -> dict[str, float | None]:
    up_w, down_w = power.ramp_up_w_per_s, power.ramp_down_w_per_s
    w = max(1, round(RAMP_WINDOW_S / dt))
    rate, limits = window_rate(trace.draw_w, w, dt), window_rate(trace.limits_w, w, dt)
    free = np.isfinite(rate)
    for k, j, end in drops(trace):  # a window that holds any of a drop, until a second after it settled
        free[max(0, k - w + 1):(end + w if j < 0 else j + w + 1)] = False
    out: dict[str, float | None] = {
        "ramp_rise_max_w_per_s": rounded(max(0.0, float(rate[free].max())), 3) if free.any() else None,
        "ramp_fall_max_w_per_s": rounded(max(0.0, float(-rate[free].min())), 3) if free.any() else None,
        "ramp_up_fast_s": None, "ramp_down_fast_s": None, "ramp_down_fast_by_limits_s": None}
    if up_w > 0:
        out["ramp_up_fast_s"] = float(np.count_nonzero(free & (rate > up_w * (1 + RAMP_SHARE)))) * dt
    if down_w > 0:
        fast = free & (rate < -down_w * (1 + RAMP_SHARE))
        by_limits = fast & (limits < -down_w * (1 + RAMP_SHARE))
        out["ramp_down_fast_s"] = float(np.count_nonzero(fast)) * dt
        out["ramp_down_fast_by_limits_s"] = float(np.count_nonzero(by_limits)) * dt
    return out


def carbon_figures(trace: Trace, dt: float, tokens: int, idle_w: float) -> dict[str, float | None]:
    known = np.isfinite(trace.intensity_g_per_kwh)
    mean_budget = rounded(float(trace.budget_w.mean()), 1)
    if not known.any():
        return {"co2_mg_per_token": None, "co2_kg": None, "mean_budget_w": mean_budget, "budget_bound_share": None,
                "idle_energy_share": None}
    grams = float(np.sum(trace.draw_w[known] * dt / 3.6e6 * trace.intensity_g_per_kwh[known]))
    bound = trace.draw_w >= trace.budget_w * (1 - BOUND_SHARE)
    energy = float(np.sum(trace.draw_w))
    return {"co2_mg_per_token": rounded(grams * 1000 / tokens, 5) if tokens else None,
            "co2_kg": rounded(grams / 1000, 4),
            "mean_budget_w": mean_budget, "budget_bound_share": rounded(float(np.mean(bound)), 4),
            "idle_energy_share": rounded(idle_w * len(trace.draw_w) / energy, 3) if energy > 0 else None}


def power_figures(cfg: Settings, trace: Trace, tokens: int) -> dict[str, Any]:
    """Every power figure of one run (JSON-ready)."""
    dt = float(trace.t_s[0]) if len(trace.t_s) else 1.0
    return {**drop_figures(trace, dt), **domain_figures(cfg.power, trace, dt), **ramp_figures(cfg.power, trace, dt),
            **carbon_figures(trace, dt, tokens, sum(SPECS[t].empty_w for t in cfg.simulator.host_types))}
