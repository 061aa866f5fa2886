"""The continuous law (continuous_law.continuous_law) of many operating points at once, as arrays.

A fleet's plan values tens of thousands of points a cycle, and a law built through the interpreter costs ~13 us
each (the step family's roofline ~100 us: its prompt's cost settles in four Poisson sums), more than solving it
stacked. Most points share their parameters, token mix and power profile (a base) and differ in shape and rate:
`continuous_laws` is continuous_law over arrays, operation for operation, so the figures match the scalar path
to the bit on affine laws and to rounding on the roofline's (np.cbrt for a cube root). A rate whose prompts
would fill the GPU, or the token budget's room, has no law (the scalar law raises there).
"""

from __future__ import annotations

import numpy as np

from queuemodels.continuous_law import gated_prompt_ms, gated_residual_ms, prompt_cost
from queuemodels.law_arrays import PROFILE_FIELDS, Points
from queuemodels.roofline_arrays import Terms
from queuemodels.step_arrays import ROOFLINE_FIELDS, Bools, Floats, Ints, LawArrays


def _per_point(points: Points) -> dict[str, Floats]:
    """The bases' scalars gathered to their points; a base without a profile reads as one with neither cap nor
    clock (factors of 1), as the scalar law reads it."""
    out = dict(zip(("d0", "d1", "overhead", "compute", "hidden", "out_tokens", "out_cv", "in_cv", "per_step"),
                   points.bases.loads[points.base].T, strict=True))
    names = ("idle", "peak", "knee", "busy", "half", "ps", "cts", "exp", "step_share")
    out.update(zip(names, points.profile_fields(PROFILE_FIELDS), strict=True))
    profiled = ~np.isnan(out["peak"])
    out["cap"] = np.where(profiled, points.caps, np.nan)
    out["clock"] = np.where(profiled, points.clocks, np.nan)
    return out



def continuous_laws(points: Points, tops: Floats) -> tuple[LawArrays, Bools]:
    """continuous_law.continuous_law at every point (at its KV-bound batch `tops`), and which points it built:
    not those of a roofline law nor a rate whose prompts would fill the GPU."""
    v = _per_point(points)
    cap, clock, n = v["cap"], v["clock"], tops
    capped, locked = ~np.isnan(cap), ~np.isnan(clock) & (np.nan_to_num(clock, nan=1.0) < 1.0)

    def slowed(sensitivity: Floats) -> Floats:  # queuemodels.clock.slowed
        out: Floats = np.where(locked, 1.0 + sensitivity * (1.0 / np.where(locked, clock, 1.0) - 1.0), 1.0)
        return out

    def by_clock(compute_share: Floats | float) -> Floats:  # clock_time_factor
        return slowed(v["cts"] * compute_share)

    def cap_factor(batch: Floats) -> Floats:  # decode_cap_factor's cap term
        compute = batch / (batch + v["half"])
        natural = v["idle"] + (v["peak"] - v["idle"]) * (v["busy"] + (1.0 - v["busy"]) * compute)
        out: Floats = 1.0 + v["ps"] * compute * np.maximum(0.0, natural / np.where(capped, cap, 1.0) - 1.0)
        return out

    bent_rows = ~points.bases.affine[points.base]
    bent = np.flatnonzero(bent_rows)
    terms = points.bases.rooflines.take(points.base[bent])
    lock = by_clock(1.0)[bent]  # what a lock multiplies a roofline row's decode compute by
    d0, d1 = v["d0"], v["d1"]
    if (bent_rows & locked).any():  # the share of a roofline row's per-step time that follows the lock
        d0 = d0 * np.where(bent_rows, slowed(v["step_share"]), 1.0)  # step_clock_factor

    def decode_factor(batch: Floats) -> Floats:  # decode_cap_factor; a lock slows the affine rows by compute share
        own = np.where(bent_rows, 1.0, by_clock(batch / (batch + v["half"])))
        out: Floats = np.where(capped, np.maximum(own, cap_factor(batch)), own)
        return out

    knee_w = v["idle"] + (v["knee"] * v["peak"] - v["idle"])  # prompt_draw_w at the free clock, as it sums it
    squeeze = np.maximum(0.0, knee_w / np.where(capped, cap, 1.0) - 1.0)
    prefill_factor = np.where(capped, np.maximum(by_clock(1.0), 1.0 + v["ps"] * squeeze), by_clock(1.0))
    at_one = (d0 + d1) * decode_factor(np.ones_like(n))  # capped_decode
    at_top = decode_factor(n)
    single = n <= 1.0
    slope = np.where(single, d1 * at_one / (d0 + d1), ((d0 + d1 * n) * at_top - at_one) /
                     (np.where(single, 2.0, n) - 1.0))
    d0 = np.where(single, d0 * at_one / (d0 + d1), at_one - slope)
    rates = points.rates_rps
    outputs = v["out_tokens"] / v["per_step"]  # Load.outputs
    c_p = prompt_cost(v["overhead"], v["compute"], v["hidden"], prefill_factor)
    c_gpu = c_p.copy()
    if bent.size:  # the prompt's cost at the batch the load runs (Roofline.prompt_at_load), its compute slowed
        roofline = terms._replace(prompt_compute_ms=terms.prompt_compute_ms * prefill_factor[bent],
                                  compute_per_seq_ms=terms.compute_per_seq_ms * lock)
        c_p[bent], c_gpu[bent], batch = roofline.prompt_at_load(rates[bent], outputs[bent], d0[bent],
                                                                slope[bent], n[bent])
    phi = rates * c_gpu / 1000.0
    share = np.minimum(phi, 0.99)  # past it no law (`built`): finite rows the caller drops
    stretch = 1.0 / (1.0 - share)
    d0, d1 = d0 * stretch, slope * stretch
    built = phi < 0.99
    k = len(n)
    cv = v["in_cv"]  # the prompts' length spread, read as their costs' (the tails read it so too)
    steps = (v["out_tokens"] - 1.0) / v["per_step"]  # Load.decode_steps
    laws = LawArrays._make([gated_prompt_ms(c_p, c_gpu, share, cv) + d0, d1, d0, d1, steps, c_p,
                            np.full(k, 0.5), gated_residual_ms(c_gpu, share, cv), (1.0 + v["out_cv"] ** 2) / 2.0,
                            cv, share,
                            *(np.zeros(k) for _ in ROOFLINE_FIELDS), np.ones(k), np.ones(k), np.zeros(k), np.zeros(k),
                            np.ones(k, dtype=bool)])
    if bent.size:
        _bend(laws, bent, roofline, c_p[bent], c_gpu[bent], share[bent], (stretch[bent] * at_top[bent], stretch[bent]),
              batch, rates[bent], v["in_cv"][bent], built)
    laws.p0[~built] = np.inf  # no law at this rate (the scalar law raises): not one to build again one by one
    return laws, built


def _bend(laws: LawArrays, bent: Ints, roofline: Terms, c_p: Floats, c_gpu: Floats, phi: Floats,
          scales: tuple[Floats, Floats], batch: Floats, rates_rps: Floats, in_cv: Floats, built: Bools) -> None:
    """The roofline rows `bent` of `laws` as continuous_law finishes them: the prompt's own step and the wait for the
    one in flight (`c_p` to the prompt, `c_gpu` to the GPU, whose share `phi` is already in the steps), the bend and
    the experts' read skipped at their `scales`, and the wait under the token budget (no law where prompts fill its
    room: `built`)."""
    bend_scale, skip_scale = scales
    for name in ROOFLINE_FIELDS:
        getattr(laws, name)[bent] = getattr(roofline, name)
    d0, d1 = laws.d0[bent], laws.d1[bent]
    step_ms = d0 + d1 * batch + bend_scale * roofline.bend_ms(batch) - skip_scale * roofline.skipped_ms(batch)
    wait, var, use = roofline.budget_wait_ms(rates_rps, in_cv, batch, step_ms)
    laws.p0[bent] = gated_prompt_ms(c_p, c_gpu, phi, in_cv) + d0 + wait
    laws.prompt_ms[bent], laws.residual_ms[bent] = c_p, gated_residual_ms(c_gpu, phi, in_cv)
    laws.bend_scale[bent], laws.skip_scale[bent] = bend_scale, skip_scale
    laws.budget_wait_ms[bent], laws.budget_wait_var[bent] = wait, var
    laws.affine[bent] = False
    built[bent] &= use < 0.99
