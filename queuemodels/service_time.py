"""Service-time families gen1 and gen2 of llm-inferno's queue-analysis, reduced to affine laws in the batch size.

Both families give per-step times that are affine in the batch B, so one request's service time
tau(B) = prefill(B) + k * decode(B) is affine too and the effective concurrency can be inverted exactly.
Power caps and locked SM clocks scale the prefill and decode laws separately (compute-bound vs memory-bound);
under continuous batching a cap or a lock slows a prompt's compute, inside the smooth maximum with the memory
time that hides it, so a short prompt on a memory-bound step and the step's host-side overhead barely slow.

The two readings of the same parameters, batch (llm-inferno) and continuous (vLLM's scheduler), are in
docs/queue-models.md; the continuous one is built in queuemodels/continuous_law.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from queuemodels.clock import clock_time_factor
from queuemodels.params import ServiceParams
from queuemodels.power import Batch, natural_draw_w, prompt_draw_w
from queuemodels.roofline import Roofline
from queuemodels.types import Load, PowerProfile, ServerShape

NEWTON_STEPS = 12
"""At most this many in `StepLaw.batch_at`: tau is smooth, so they settle to rounding in three to five."""


class Batches(NamedTuple):
    """A law's times at batches 1..n (batch b at index b - 1), as its array methods give them."""

    decode: NDArray[np.float64]
    prefill: NDArray[np.float64]
    tau: NDArray[np.float64]


@dataclass(frozen=True)
class StepLaw:
    """prefill(B) = p0 + p1 B, decode(B) = d0 + d1 B (ms); a request takes one prefill and
    `decode_steps` decodes, so tau(B) = t0 + t1 B."""

    p0: float
    p1: float
    d0: float
    d1: float
    decode_steps: float
    prompt_ms: float = 0.0
    """The part of prefill(B) that varies with the prompt (continuous reading; 0 when batched)."""
    residual_share: float = 0.0
    """Share of a decode step an arrival waits for the step in flight (0.5 under continuous batching)."""
    residual_ms: float = 0.0
    """Extra wait for the step in flight because long steps are more likely to be in flight."""
    prompt_cv: float = 0.0
    """Coefficient of variation of `prompt_ms` across requests."""
    prompt_share: float = 0.0
    """Share of the GPU's time on prompts (phi): how often the step in flight carries one."""
    wait_scale: float = 1.0
    """Queueing delay relative to the exponential-service chain's (Allen-Cunneen (1 + cs^2) / 2)."""
    roofline: Roofline | None = None
    """The step family's memory and compute terms: a decode step also takes their bend (None: affine)."""
    bend_scale: float = 1.0
    """Time multiplier of the bend (a cap, the prompts' share of the GPU)."""
    skip_scale: float = 1.0
    """Time multiplier of the experts' read a small batch skips (the prompts' share of the GPU: it is memory time)."""
    budget_wait_ms: float = 0.0
    """The part of prefill(B) a prompt waits for the prompts ahead under a token budget (a variable wait)."""
    budget_wait_var: float = 0.0
    """Its variance (ms^2)."""
    _batches: dict[int, Batches] = field(default_factory=dict, init=False, repr=False, compare=False)
    """`at_batches`'s tables by n: a chain and its tails read the same batches several times."""

    def bend(self, batch: Batch) -> Batch:
        """What a step at `batch` takes beyond the affine law: decode compute its memory time no longer hides, less
        the experts' read it skips (a mixture of experts)."""
        if self.roofline is None:
            return 0.0 * batch
        return self.bend_scale * self.roofline.bend_ms(batch) - self.skip_scale * self.roofline.skipped_ms(batch)

    def prefill(self, batch: Batch) -> Batch:
        """The time to a first token in a batch of `batch`: a prompt that spans several steps (chunks under a
        token budget) waits for each one's decodes."""
        if self.roofline is None:
            return self.p0 + self.p1 * batch
        bend = self.bend(batch)
        extra = self.roofline.chunks(batch) - 1.0
        return self.p0 + self.p1 * batch + bend + extra * (self.d0 + self.d1 * batch + bend)

    def decode(self, batch: Batch) -> Batch:
        return self.d0 + self.d1 * batch + self.bend(batch)

    def tau(self, batch: Batch) -> Batch:
        """One request's service time in a batch of `batch`: a prefill and `decode_steps` decodes."""
        if self.roofline is None:
            return self.t0 + self.t1 * batch
        bend = self.bend(batch)
        steps = self.roofline.chunks(batch) - 1.0 + self.decode_steps
        return self.p0 + self.p1 * batch + bend + steps * (self.d0 + self.d1 * batch + bend)

    def at_batches(self, n: int) -> Batches:
        """decode, prefill and tau at batches 1..n, worked out once per law and n (a roofline's bend and chunks
        cost a few array passes each, and an analysis reads them at every state four times)."""
        if n not in self._batches:
            batch = np.arange(1.0, n + 1.0)
            if self.roofline is None:
                tables = Batches(self.d0 + self.d1 * batch, self.p0 + self.p1 * batch, self.t0 + self.t1 * batch)
            else:
                bend = self.bend(batch)
                chunks = self.roofline.chunks(batch) - 1.0
                base = self.p0 + self.p1 * batch + bend
                step = self.d0 + self.d1 * batch + bend
                tables = Batches(step, base + chunks * step, base + (chunks + self.decode_steps) * step)
            for table in tables:
                table.flags.writeable = False  # shared by every reader of the law
            self._batches[n] = tables
        return self._batches[n]

    def batch_at(self, service_ms: float, max_batch: float) -> float:
        """The batch whose tau is `service_ms`, within [0, max_batch]: exact for the affine law; tau increasing
        otherwise, from the affine law's batch (the bend and chunks move the root below it, the experts' skip above)
        by Newton's steps kept within the bracket they narrow, from [0, max_batch], until they settle."""
        affine = min(max((service_ms - self.t0) / self.t1, 0.0), max_batch) if self.t1 > 0.0 else 1.0
        if self.roofline is None:
            return affine
        n, low, high = affine, 0.0, max_batch
        for _ in range(NEWTON_STEPS):
            miss = float(self.tau(n)) - service_ms
            low, high = (n, high) if miss < 0.0 else (low, n) if miss > 0.0 else (low, high)
            h = 1e-4 * max(n, 1.0)
            slope = (float(self.tau(n + h)) - service_ms - miss) / h
            after = n - miss / slope if slope > 0.0 else (low + high) / 2.0
            if not low <= after <= high:
                after = (low + high) / 2.0
            settled = abs(after - n) <= 1e-13 * max(after, 1.0)
            n = after
            if settled:
                break
        return n

    @property
    def t0(self) -> float:
        return self.p0 + self.decode_steps * self.d0

    @property
    def t1(self) -> float:
        return self.p1 + self.decode_steps * self.d1

    def scaled(self, prefill_factor: float, decode_factor: float) -> StepLaw:
        """Prefill's times (its budget wait, part of p0, with them: its variance by the square) by one factor,
        decode's by the other."""
        f, g = prefill_factor, decode_factor
        return replace(self, p0=self.p0 * f, p1=self.p1 * f, d0=self.d0 * g, d1=self.d1 * g,
                       prompt_ms=self.prompt_ms * f, residual_ms=self.residual_ms * f, bend_scale=self.bend_scale * g,
                       skip_scale=self.skip_scale * g, budget_wait_ms=self.budget_wait_ms * f,
                       budget_wait_var=self.budget_wait_var * f * f)


def step_law(params: ServiceParams, load: Load) -> StepLaw:
    """The family's per-step laws at a load's mean token counts."""
    n_in, m = load.in_tokens, load.out_tokens
    if params.family in ("gen1", "step"):
        per_seq = params.beta_ms + params.kappa_ms * (n_in + m / 2)
        return StepLaw(params.gamma_ms + params.epsilon_ms, params.delta_ms * n_in, params.alpha_ms, per_seq,
                       load.decode_steps)
    per_seq = params.beta_ms * (n_in + m) / (m + 1) + params.gamma_ms * (n_in + m / 2)
    prefill_extra = (params.beta_ms + params.gamma_ms) * n_in
    decode_extra = params.beta_ms + params.gamma_ms * (n_in + (m + 1) / 2)
    return StepLaw(params.alpha_ms + prefill_extra, per_seq, params.alpha_ms + decode_extra, per_seq, load.outputs)


def cap_factors(profile: PowerProfile | None, power_cap_w: float | None,
                clock: float | None = None) -> tuple[float, float]:
    """(prefill, decode) time multipliers a power cap and a locked clock share cause; (1, 1) when neither.
    A GPU under both runs at the lower of the two clocks: the lock's, or the one the cap lets it draw. So each
    phase takes the larger of the two slow-downs, the lock's and the cap's alone; a lock never makes a capped
    GPU faster (decode's, in the batched reading: `capped_law`)."""
    if profile is None:
        return 1.0, 1.0
    prefill_clock = clock_time_factor(profile, clock, 1.0)
    if power_cap_w is None:
        return prefill_clock, 1.0
    squeeze = max(0.0, prompt_draw_w(profile) / power_cap_w - 1.0)
    return max(prefill_clock, 1.0 + profile.prefill_sensitivity * squeeze), 1.0 + profile.decode_sensitivity * squeeze


def capped_law(params: ServiceParams, load: Load, profile: PowerProfile | None, shape: ServerShape) -> StepLaw:
    """The step law at a power cap and clock (the batched reading: decode steps follow the clock as the
    compute share of a full batch does)."""
    prefill_factor, decode_factor = cap_factors(profile, shape.power_cap_w, shape.sm_clock_fraction)
    if profile is not None:
        full = shape.max_batch / (shape.max_batch + profile.batch_half)
        decode_factor = max(decode_factor, clock_time_factor(profile, shape.sm_clock_fraction, full))
    return step_law(params, load).scaled(prefill_factor, decode_factor)


LawFn = Callable[[ServiceParams, Load, "PowerProfile | None", ServerShape], StepLaw]


def decode_cap_factor(profile: PowerProfile | None, power_cap_w: float | None, batch: float,
                      clock: float | None = None) -> float:
    """Time multiplier of a decode step at `batch` under a cap. A cap slows the compute in a step, as it slows
    prompts (prefill_sensitivity), and only once the step would draw more than the cap: a small batch is
    memory-bound and draws well below the peak, so a cap may never bite it. The compute share of a decode
    step is what its draw says: the part of the dynamic draw above the memory-bound base, B / (B + batch_half).
    A locked clock slows that compute share by itself (the affine laws; the roofline's lock slows its compute term
    and the fitted share of its per-step time instead, `continuous_law`); under a cap as well, the step runs at the
    lower of the lock and the clock the cap allows, so it takes the larger of the two slow-downs (`cap_factors`)."""
    if profile is None:
        return 1.0
    compute_share = batch / (batch + profile.batch_half)
    by_clock = clock_time_factor(profile, clock, compute_share)
    if power_cap_w is None:
        return by_clock
    squeeze = max(0.0, natural_draw_w(profile, batch) / power_cap_w - 1.0)
    return max(by_clock, 1.0 + profile.prefill_sensitivity * compute_share * squeeze)


def capped_decode(d0: float, d1: float, profile: PowerProfile | None, max_batch: int, power_cap_w: float | None,
                   clock: float | None) -> tuple[float, float]:
    """(d0, d1) of the capped decode step: the line through its times at batch 1 and at the max batch, so
    the law stays affine and is exact where it matters most (light load, and the full batch of saturation)."""
    n = float(max_batch)
    at_one = (d0 + d1) * decode_cap_factor(profile, power_cap_w, 1.0, clock)
    if n <= 1.0:
        return d0 * at_one / (d0 + d1), d1 * at_one / (d0 + d1)
    slope = ((d0 + d1 * n) * decode_cap_factor(profile, power_cap_w, n, clock) - at_one) / (n - 1.0)
    return at_one - slope, slope


def decode_and_prompt(params: ServiceParams, load: Load) -> tuple[float, float, float, float, float]:
    """(d0, d1, overhead, compute, hidden): a decode step at batch B takes d0 + d1 B; one prompt adds
    `prompt_cost(overhead, compute, hidden, factor)` (ms): its host-side overhead, and what its compute (slowed by
    a cap's or a lock's factor) adds beyond the memory time it hides under (gen2's prompt is all compute)."""
    n_in, m = load.in_tokens, load.out_tokens
    if params.family in ("gen1", "step"):
        per_seq = params.beta_ms + params.kappa_ms * (n_in + m / 2)
        return params.alpha_ms, per_seq, params.epsilon_ms, params.delta_ms * n_in, params.gamma_ms
    per_seq = params.beta_ms * (n_in + m) / (m + 1) + params.gamma_ms * (n_in + m / 2)
    d0 = params.alpha_ms + params.beta_ms + params.gamma_ms * (n_in + (m + 1) / 2)
    return d0, per_seq, 0.0, (params.beta_ms + params.gamma_ms) * n_in, 0.0
