"""The step family's roofline: one engine step is one forward pass whose compute overlaps its memory time.

vLLM runs every scheduled token of a step - one per decoding sequence, a prompt's tokens - through the same
weight GEMMs, while the step streams the weights and every sequence's KV cache. Compute and memory overlap,
so the step takes about the larger of the two (a smooth maximum, the one the prompt's cost has always used):
- a decode step: memory gamma + kappa c B (c a sequence's mean context), compute rho delta B. Small batches
  are memory-bound and the compute hides; past the crossover the step grows with the compute, convex in B;
- a prompt in a step that decodes B sequences costs what its compute, delta L_in, adds to that smooth
  maximum (plus epsilon): it hides under the memory time the decodes leave, and costs its whole compute once
  the decodes have made the step compute-bound. The prompts that ride one step hide under its memory time
  together, so the GPU's cost per prompt grows with how many share a step (`prompt_gpu_ms`).
A mixture of experts reads only the routed experts some token of a step runs: a decode step of B sequences skips
a share miss^B of their read (miss the share of experts one token leaves), so the decode step is concave in the batch
at small batches, and a step that carries a prompt reads them all.
With rho = kappa = 0 the prompt's cost is gen1's, cbrt((delta L_in)^3 + gamma^3) - gamma, and the bend is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.special import gammaln

from queuemodels.params import STEP_DEFAULTS, ServiceParams
from queuemodels.power import Batch
from queuemodels.types import Load, Unstable

Floats = NDArray[np.float64]

SETTLE_STEPS = 4
"""Fixed-point steps between the running batch and the prompt's cost it sets."""
SHORT_SUM = 16
"""Poisson terms up to which `prompt_gpu_ms` sums them one by one (light loads: a few riders a step)."""
_LOG_FACTORIAL = [math.lgamma(n + 1.0) for n in range(SHORT_SUM + 1)]
"""log n! for the riders a short sum reads: it starts at 1 (one that starts later has x > 40 and spans some
12 sqrt(x) > 16 terms), so its at most 16 terms end by n = SHORT_SUM."""


def smooth_chunks(ratio: Batch) -> Batch:
    """The smooth maximum of 1 and `ratio` (L / room) that counts a prompt's steps, (1 + ratio^4)^(1/4): chunks are
    whole in each step but a prompt's place among them is not, and a fit needs a slope where one chunk is enough.
    Two square roots: a power costs five times as much, and a fleet's chains read it at every state."""
    out: Batch = np.sqrt(np.sqrt(1.0 + np.square(np.square(ratio))))
    return out


def room_tokens(budget_tokens: Floats | float, batch: Floats) -> Floats:
    """A step's budget left for prompts after its decodes, at least an eighth of it (`Roofline.chunks`)."""
    out: Floats = np.maximum(budget_tokens - batch, budget_tokens / 8.0)
    return out


def unhidden_ms(memory_ms: Floats, compute_ms: Floats) -> Floats:
    """What compute adds to a step beyond the memory time that hides it: the smooth maximum's excess."""
    out: Floats = np.cbrt(memory_ms * memory_ms * memory_ms + compute_ms * compute_ms * compute_ms) - memory_ms
    return out


def chunks(prompt_tokens: Floats | float, budget_tokens: Floats | float, batch: Floats) -> Floats:
    """`Roofline.chunks` over arrays, per row (1 where a row has no token budget)."""
    limited = np.asarray(budget_tokens) > 0.0
    if not limited.any():
        return np.ones_like(batch)
    room = room_tokens(budget_tokens, batch)
    out: Floats = smooth_chunks(prompt_tokens / (room if limited.all() else np.where(limited, room, 1.0)))
    return out if limited.all() else np.where(limited, out, 1.0)


def bend_ms(memory_ms: Floats | float, memory_per_seq_ms: Floats | float, compute_per_seq_ms: Floats | float,
            batch: Floats, expert_read_ms: Floats | float = 0.0, expert_miss: Floats | float = 0.0) -> Floats:
    """`Roofline.bend_ms` over arrays, per row (0 where a row's decode has no compute term)."""
    computes = np.asarray(compute_per_seq_ms) > 0.0
    if not computes.any():
        return np.zeros_like(batch)
    memory = memory_ms + memory_per_seq_ms * batch
    if (np.asarray(expert_read_ms) > 0.0).any():
        memory = memory - skipped_ms(expert_read_ms, expert_miss, batch)
    out = unhidden_ms(memory, compute_per_seq_ms * batch)
    return out if computes.all() else np.where(computes, out, 0.0)


def skipped_ms(expert_read_ms: Floats | float, expert_miss: Floats | float, batch: Floats) -> Floats:
    """`Roofline.skipped_ms` over arrays, per row (0 where a row has no experts)."""
    out: Floats = expert_read_ms * np.power(expert_miss, batch)
    return out


@dataclass(frozen=True)
class Roofline:
    """One step's memory and compute terms (ms before a cap; the compute at the step's clock: `of` slows the
    prompt's by a cap's or a lock's factor, the decodes' by a lock's; a locked clock leaves the memory time)."""

    memory_ms: float
    """The weights' read (gamma)."""
    memory_per_seq_ms: float
    """Each decoding sequence's KV read (kappa x its mean context)."""
    compute_per_seq_ms: float
    """Each decoding sequence's compute (rho delta, slowed by a lock)."""
    prompt_compute_ms: float
    """One prompt's compute (delta L_in, slowed by a cap or a lock). The decodes' compute it shares a step with is
    slowed here by a lock only: a cap slows that apart (the law's bend_scale), so a prompt on a compute-bound step
    may read a little more hidden than it is."""
    prompt_overhead_ms: float
    """The fixed cost of a step that carries a prompt (epsilon)."""
    prompt_tokens: float = 0.0
    """A prompt's length (L_in), in what a decoding sequence takes of a step's budget: one token, 1 + its drafts
    under speculative decoding (the budget's room and a prompt's chunks are ratios of the two, unchanged by the
    unit)."""
    budget_tokens: float = 0.0
    """Tokens a step schedules, decodes first (0: no limit), in the same unit."""
    expert_read_ms: float = 0.0
    """The routed experts' part of the weights' read: the expert weight share of gamma, or of alpha where a fit
    left gamma above it (a decode step reads the weights within its fixed time alpha, so a small batch never
    skips more than that); 0: a dense model."""
    expert_miss: float = 0.0
    """The share of routed experts one token leaves unread: a decode step of B sequences skips expert_miss^B of
    their read. A step that carries a prompt reads them all (its hundreds of tokens route everywhere)."""

    @classmethod
    def of(cls, params: ServiceParams, load: Load, prompt_factor: float = 1.0, decode_factor: float = 1.0) -> Roofline:
        """The terms of a load's token mix; the prompt's compute slowed by `prompt_factor` (a cap's or a lock's),
        the decodes' by `decode_factor` (a lock's). A mixture of experts' routing is read by the roofline: a prior
        that leaves rho and the budget 0 (the affine reading) reads those two at the tuner's starting values (read
        with rho 0, a lock had slowed no decode). A decoding sequence's compute is that of the positions the verifying
        pass computes for it (`Load.positions`): under speculative decoding 1 + its drafts, kept or refused, so a
        large batch turns compute-bound sooner (read as one token, its capacity at batch 128-256 read 21-61 % over);
        where the drafts are not read, the tokens it keeps (the fitted rho then holds the refused ones at the fitted
        windows' acceptance). Where drafts are read a decoding sequence takes as many tokens of the budget as it
        computes positions (vLLM's scheduler charges 1 + its drafts), one otherwise: the budget terms are in that
        unit."""
        rho, budget = params.rho, params.budget_tokens
        if params.expert_weight_share > 0.0 and not (rho or budget):
            rho, budget = STEP_DEFAULTS["rho"], STEP_DEFAULTS["budget_tokens"]
        context = load.in_tokens + load.out_tokens / 2.0
        per_seq = rho * params.delta_ms * load.positions * decode_factor  # the arrays path slows it after
        experts = min(params.gamma_ms, params.alpha_ms) * params.expert_weight_share
        prompt = params.delta_ms * load.in_tokens * prompt_factor
        charge = load.positions if load.draft_tokens > 0.0 else 1.0  # what a decoding sequence takes of the budget
        return cls(params.gamma_ms, params.kappa_ms * context, per_seq, prompt, params.epsilon_ms,
                   load.in_tokens / charge, budget / charge, experts, params.expert_miss)

    def chunks(self, batch: Batch) -> Batch:
        """Steps a prompt spans: the budget left after the decodes, at least an eighth of it (a scheduler that
        starved prompts entirely would never admit one), takes a chunk of it per step."""
        if self.budget_tokens <= 0.0:
            return 1.0 + 0.0 * batch
        if isinstance(batch, float):  # a scalar without numpy's per-call cost (the chain's inner loops)
            ratio = self.prompt_tokens / max(self.budget_tokens - batch, self.budget_tokens / 8.0)
            return math.sqrt(math.sqrt(1.0 + (ratio * ratio) ** 2))
        return smooth_chunks(self.prompt_tokens / room_tokens(self.budget_tokens, batch))  # every row limited

    def _memory(self, batch: Batch) -> Batch:
        """A step's memory time where it reads every expert (one that carries a prompt)."""
        return self.memory_ms + self.memory_per_seq_ms * batch

    def skipped_ms(self, batch: Batch) -> Batch:
        """The experts' read a decode step of `batch` sequences skips: those none of its tokens route to. It is
        memory time, so no cap or lock slows it (0 for a dense model)."""
        if self.expert_read_ms <= 0.0:
            return 0.0 * batch
        out: Batch = self.expert_read_ms * self.expert_miss**batch
        return out

    def _decode_memory(self, batch: Batch) -> Batch:
        """A decode step's memory time: every sequence's KV and the weights its tokens route to."""
        return self._memory(batch) - self.skipped_ms(batch)

    def bend_ms(self, batch: Batch) -> Batch:
        """What a decode step at `batch` takes beyond its memory time: the compute that no longer hides."""
        if self.compute_per_seq_ms <= 0.0:
            return 0.0 * batch
        memory = self._decode_memory(batch)
        if isinstance(batch, float):
            return float((memory**3 + (self.compute_per_seq_ms * batch) ** 3) ** (1.0 / 3.0) - memory)
        return unhidden_ms(memory, self.compute_per_seq_ms * batch)  # one row: `bend_ms` less its per-row checks

    def prompt_ms(self, batch: float) -> float:
        """What one prompt alone adds to the steps that decode `batch` sequences: each of its chunks adds what its
        compute adds to the step's smooth maximum, plus the fixed cost of a step that carries a prompt (and, for a
        mixture of experts, the read of the experts the decodes alone skip)."""
        memory = self._memory(batch)
        decode = self.compute_per_seq_ms * batch
        k = float(self.chunks(batch))
        with_chunk = (memory**3 + (decode + self.prompt_compute_ms / k) ** 3) ** (1.0 / 3.0)
        return float(k * (self.prompt_overhead_ms + with_chunk
                          - (self._decode_memory(batch) ** 3 + decode**3) ** (1.0 / 3.0)))

    def prompt_gpu_ms(self, batch: float, per_step: float) -> float:
        """What one prompt costs the GPU where `per_step` prompts (Poisson) arrive per step: the prompts that ride
        one step are one forward pass, so they pay its fixed cost once between them, and the decodes' memory time
        hides their compute once, not once each. A step carrying K chunks of compute c adds
        f(K c) = cbrt(memory^3 + (decode + K c)^3) - cbrt(memory^3 + decode^3), so a prompt costs E[f(K c)] / E[K]
        per chunk: alone (per_step -> 0) what `prompt_ms` says, all of its compute once many share a step. A
        prompt in k chunks under a token budget rides k steps whose room it fills: x / k of them share one."""
        k = float(self.chunks(batch))
        x = per_step / k
        if x <= 1e-9:
            return self.prompt_ms(batch)
        memory = self._memory(batch)
        decode = self.compute_per_seq_ms * batch
        chunk = self.prompt_compute_ms / k
        m3 = memory**3
        base = (self._decode_memory(batch) ** 3 + decode**3) ** (1.0 / 3.0)
        # the Poisson mass of K riders within 6 sigma of x + 3 (outside, under 1e-9), weighted in log space:
        # e^-x underflows to 0 past x = 745, and a product of ratios from it would lose the compute altogether
        spread = 6.0 * math.sqrt(x)
        counts = range(max(1, int(x - spread)), int(x + spread) + 4)
        if len(counts) <= SHORT_SUM:  # the interpreter's loop: numpy's calls cost more on arrays this short
            log_x = math.log(x)
            added = math.fsum([math.exp(n * log_x - x - _LOG_FACTORIAL[n])
                               * (math.cbrt(m3 + (decode + n * chunk) ** 3) - base) for n in counts])
        else:
            riders = np.arange(counts.start, counts.stop, dtype=float)
            weight = np.exp(riders * math.log(x) - x - gammaln(riders + 1.0))
            added = float(weight @ (np.cbrt(m3 + (decode + riders * chunk) ** 3) - base))
        return float(k * (-math.expm1(-x) * self.prompt_overhead_ms + added) / x)

    def prompt_at_load(self, load: Load, d0: float, d1: float, max_batch: int) -> tuple[float, float, float]:
        """The prompt's cost at the batch the load runs, by Little's law without queueing (at most the max
        batch): the batch sets the prompt's cost, whose share of the GPU stretches the steps that set the batch.
        `d0 + d1 B` is the rest of the decode step (overhead and per-sequence costs). The prompts that ride one
        step share it (`prompt_gpu_ms`, at x = lambda S arrivals per step S): its fixed cost, and the memory time
        that hides their compute (a prompt's own TTFT still waits for all of its step). Returns (cost to the
        prompt, cost to the GPU per prompt, batch)."""
        batch = 1.0
        c_gpu = self.prompt_ms(batch)
        for _ in range(SETTLE_STEPS):
            phi = min(0.9, load.rate_rps * c_gpu / 1000.0)
            step = (d0 + d1 * batch + float(self.bend_ms(batch)) - float(self.skipped_ms(batch))) / (1.0 - phi)
            batch = min(float(max_batch), max(1.0, load.rate_rps * load.outputs * step / 1000.0))
            c_gpu = self.prompt_gpu_ms(batch, load.rate_rps * step / 1000.0)
        return self.prompt_ms(batch), c_gpu, batch

    def budget_wait_ms(self, load: Load, batch: float, step_ms: float) -> tuple[float, float]:
        """The wait for the prompts ahead, where a token budget serialises them: a step gives prompts what the
        decodes leave of the budget, oldest first, so prompt tokens queue at one server (M/G/1, the prompts'
        length spread as its service's). Past its capacity there is no steady state. Returns its mean and its
        variance: a prompt waits with probability `use`, then about exponentially (E[W^2] = 2 W^2 / use)."""
        if self.budget_tokens <= 0.0:
            return 0.0, 0.0
        room = max(self.budget_tokens - batch, self.budget_tokens / 8.0)
        use = load.rate_rps * self.prompt_tokens * step_ms / (1000.0 * room)
        if use >= 0.99:
            tokens = room * load.in_tokens / self.prompt_tokens  # the room in tokens (`of`'s unit, undone)
            raise Unstable(f"rate_rps: {load.rate_rps:.6g} needs {100 * use:.0f} % of the token budget's room for "
                           f"prompts ({tokens:.0f} tokens a step at batch {batch:.0f}); lower it")
        service_ms = float(self.chunks(batch)) * step_ms
        wait = use * service_ms * (1.0 + load.in_cv**2) / (2.0 * (1.0 - use))
        return wait, (wait * (2.0 * wait / use - wait) if use > 0.0 else 0.0)  # wait / use: no overflow at a trickle
