"""The step law under continuous batching (vLLM's scheduler): a new prompt rides one decode step.

Its compute, delta L_in, overlaps the step's memory-bound time (roofline), up to gamma of it hidden:
c_p = ((delta L_in)^3 + gamma^3)^(1/3) - gamma. The prompts of others steal a share phi = lambda c_p of the GPU
from decoding, so decode(B) = (alpha + beta B) / (1 - phi); an arrival also waits for the step in flight.
A step carries the prompts that arrived during the one before (costs of spread cv), so steps vary, a long one
making the next long: Var S = lambda c_p^2 (1 + cv^2) E[S] / (1 - phi^2). The step in flight is length-biased:
its residual is E[S]/2 + c_p (1 + cv^2) phi / (2 (1 - phi^2)), and the step carrying a prompt also carries the
others that arrived during it, c_p + c_p (1 + cv^2) phi^2 / (1 - phi^2) in all beyond the mean step.
"""

from __future__ import annotations

import numpy as np

from queuemodels.clock import clock_time_factor, step_clock_factor
from queuemodels.params import ServiceParams
from queuemodels.power import Batch
from queuemodels.roofline import Roofline
from queuemodels.service_time import StepLaw, cap_factors, capped_decode, decode_and_prompt, decode_cap_factor
from queuemodels.types import Load, PowerProfile, ServerShape, Unstable


def prompt_cost(overhead: Batch, compute: Batch, hidden: Batch, compute_factor: Batch) -> Batch:
    """What one prompt adds to a step (ms): the overhead, and its compute, slowed by `compute_factor` (a cap's or
    a lock's), beyond the memory time that hides it (a smooth maximum). A cap slows the clock, so only the compute:
    a short prompt that hides under the weights' read, or a step's host-side overhead, barely slows; a prompt whose
    compute about matches the memory time adds more than the factor times what it added (slowed, it comes out
    from under the read), though the step it rides slows by less; a long one slows by the factor."""
    slowed = compute_factor * compute
    out: Batch = overhead + np.cbrt(slowed * slowed * slowed + hidden * hidden * hidden) - hidden
    return out


def gated_prompt_ms(c_p: Batch, c_gpu: Batch, phi: Batch, cv: Batch) -> Batch:
    """What a prompt's own step takes beyond the mean step: its cost `c_p`, and the prompts that arrived with it.
    A step takes every prompt that arrived during the one before (a gated queue), so steps vary: S = D + the costs
    of K prompts, K ~ Poisson(lambda S_before), each of mean c_gpu and spread `cv`, E[S] = D / (1 - phi) and
    Var S = c_gpu^2 (1 + cv^2) lambda E[S] / (1 - phi^2). A prompt arrives in a length-biased step and rides the
    next with the others that arrived in it: c_gpu lambda E[S^2] / E[S] beyond the mean step's own share,
    c_gpu (1 + cv^2) phi^2 / (1 - phi^2) (the first term of that series, c_gpu phi^2 alone, read a third short at
    phi = 0.6 with fixed costs)."""
    out: Batch = c_p + c_gpu * (1.0 + cv * cv) * phi * phi / (1.0 - phi * phi)
    return out


def gated_residual_ms(c_gpu: Batch, phi: Batch, cv: Batch) -> Batch:
    """The wait for the step in flight beyond half a mean step: its length-biased excess, Var S / (2 E[S]) =
    c_gpu (1 + cv^2) phi / (2 (1 - phi^2)) (`gated_prompt_ms`)."""
    out: Batch = c_gpu * (1.0 + cv * cv) * phi / (2.0 * (1.0 - phi * phi))
    return out


def has_roofline(params: ServiceParams) -> bool:
    """Whether the continuous law bends at large batches and chunks prompts (the step family with rho or a token
    budget), or reads fewer experts at small ones; otherwise it is affine in the batch."""
    return params.family == "step" and bool(params.rho or params.budget_tokens or params.expert_weight_share)


def continuous_law(params: ServiceParams, load: Load, profile: PowerProfile | None, shape: ServerShape) -> StepLaw:
    """The step law under continuous batching at a power cap; depends on the rate through phi."""
    prefill_factor, _ = cap_factors(profile, shape.power_cap_w, shape.sm_clock_fraction)
    d0, d1, overhead, compute, hidden = decode_and_prompt(params, load)
    # without rho or a budget (a prior that leaves them 0, read before the tuner's defaults) the step family is
    # the affine law of before: gen1 to the bit where kappa and epsilon are 0 too, whose decodes a lock slows by their
    # compute share; with them it slows the decodes' compute in the roofline, and a cap that binds slows the step on
    # top (where both bind, slower than the lower of the two clocks: never faster than either lever alone)
    roofed = has_roofline(params)
    clock = None if roofed else shape.sm_clock_fraction
    if roofed:
        d0 *= step_clock_factor(profile, shape.sm_clock_fraction)
    d0, d1 = capped_decode(d0, d1, profile, shape.max_batch, shape.power_cap_w, clock)
    roofline = Roofline.of(params, load, prefill_factor,
                           clock_time_factor(profile, shape.sm_clock_fraction, 1.0)) if roofed else None
    batch = 1.0
    c_p = c_gpu = float(prompt_cost(overhead, compute, hidden, prefill_factor))
    if roofline is not None:
        c_p, c_gpu, batch = roofline.prompt_at_load(load, d0, d1, shape.max_batch)
    phi = load.rate_rps * c_gpu / 1000.0
    if phi >= 0.99:
        raise Unstable(
            f"rate_rps: {load.rate_rps:.6g} needs {100 * phi:.0f} % of the GPU for prompts alone; lower it"
        )
    stretch = 1.0 / (1.0 - phi)
    d0, d1 = d0 * stretch, d1 * stretch
    wait_scale = (1.0 + load.out_cv**2) / 2.0
    # the bend is compute at large batches: the cap slows it as it slows the full batch's step
    bend_scale = stretch * decode_cap_factor(profile, shape.power_cap_w, float(shape.max_batch), clock)
    budget_wait = budget_var = 0.0
    if roofline is not None:  # the prompts ahead, where a token budget serialises them
        step_ms = d0 + d1 * batch + bend_scale * float(roofline.bend_ms(batch)) - stretch * roofline.skipped_ms(batch)
        budget_wait, budget_var = roofline.budget_wait_ms(load, batch, step_ms)
    cv = load.in_cv  # the prompts' length spread, read as their costs' (the tails read it so too)
    return StepLaw(gated_prompt_ms(c_p, c_gpu, phi, cv) + d0 + budget_wait, d1, d0, d1, load.decode_steps,
                   prompt_ms=c_p, residual_share=0.5, residual_ms=gated_residual_ms(c_gpu, phi, cv), prompt_cv=cv,
                   prompt_share=phi, wait_scale=wait_scale,
                   roofline=roofline, bend_scale=bend_scale, skip_scale=stretch, budget_wait_ms=budget_wait,
                   budget_wait_var=budget_var)
